"""Importance-weighted penalties: the shared engine of EWC, MAS and any penalty like them.

A penalty of this family estimates, at the end of each task ``t``, a non-negative importance
``Ω_{t,i}`` per parameter entry and anchors the weights ``θ*_t`` of that moment; it then penalises

    R(θ) = λ/2 · Σ_t Σ_i Ω_{t,i} (θ_i − θ*_{t,i})²,    ∂R/∂θ_i = λ · Σ_t Ω_{t,i} (θ_i − θ*_{t,i})

with ``λ`` the strength (the attribute a forgetting budget tunes). ``mode="online"`` keeps one
term, ``Ω ← γ·Ω + Ω_t``, ``θ* ← θ_t`` (memory constant in the number of tasks; Schwarz et al.
2018). The quadratic terms live in an :class:`~retain.strategies.anchored.AnchorStore` (fused
gradient transform, bfloat16 storage, CPU offload) and are saved with
:mod:`retain.strategies.anchor_files`.

A new penalty of the family is one subclass: set ``name`` and :attr:`weight_kind`, take its own
parameters, call :meth:`ImportancePenalty._setup` and implement :meth:`ImportancePenalty.estimate`
(EWC: the diagonal Fisher; MAS: the mean absolute gradient of the squared output norm).

Sharded models (FSDP2): a penalty whose :attr:`ImportancePenalty.sharded_estimate` is True
returns ``Ω_t`` as this process's shards from :meth:`ImportancePenalty.estimate`; the store keeps
local shards of ``Ω`` and ``θ*`` and applies the gradient shard by shard (see
:mod:`retain.strategies.anchored`), and ``normalize`` all-reduces its max or mean. Penalties that
cannot estimate on shards (False, the default) are refused at the task's start.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from retain.data.task import Task
from retain.distributed import all_reduce_sum, local_tensor, rank_and_world, refuse_sharded
from retain.errors import RetainError
from retain.strategies.anchor_files import read_terms, term_from_state, term_state, write_terms
from retain.strategies.anchored import (
    AnchorStore,
    AnchorTerm,
    StorageDtype,
    check_pattern,
    check_storage_dtype,
)
from retain.strategies.base import StateDict, Strategy, check_strength
from retain.strategies.params import select_parameters

__all__ = [
    "ImportancePenalty",
    "Normalize",
    "PenaltyMode",
    "check_choice",
    "check_sampling",
    "importance_term",
    "normalized",
    "rank_share",
]

PenaltyMode = Literal["separate", "online"]
Normalize = Literal["none", "max", "mean"]
_OWN_KEYS = ("mode", "num_tasks", "tasks_seen", "model_class")


class ImportancePenalty(Strategy, ABC):
    """Base of the penalties ``R(θ) = λ/2 · Σ_t Σ_i Ω_{t,i} (θ_i − θ*_{t,i})²`` (module docstring).

    Subclasses implement :meth:`estimate`; everything else (consolidation, the gradient, the
    loss-space penalty, state, files) is here.
    """

    tunable_strength: ClassVar[str | None] = "strength"
    #: The name of ``Ω`` in states and files (``task<t>.<weight_kind>.<param>``).
    weight_kind: ClassVar[str] = "importance"
    #: How messages call ``Ω``.
    weight_label: ClassVar[str] = "importance"
    #: True when :meth:`estimate` handles a sharded (FSDP2) model, returning local shards.
    sharded_estimate: ClassVar[bool] = False

    def _setup(
        self,
        strength: float,
        mode: str,
        gamma: float,
        normalize: str,
        params: str | None,
        storage_dtype: StorageDtype,
        offload: bool,
    ) -> None:
        """Check and store the parameters every penalty of the family takes."""
        self.strength = check_strength(self.name, "strength", strength)
        check_choice(self.name, "mode", mode, ("separate", "online"))
        check_choice(self.name, "normalize", normalize, ("none", "max", "mean"))
        self.mode: PenaltyMode = mode  # type: ignore[assignment]
        self.normalize: Normalize = normalize  # type: ignore[assignment]
        gamma = float(gamma)
        if not 0.0 < gamma <= 1.0:
            raise RetainError(
                f"{self.name} gamma must be in (0, 1], got {gamma}; use 1 for no decay"
            )
        self.gamma = gamma
        self.params = check_pattern(f"{self.name} params", params)
        self.storage_dtype = check_storage_dtype(self.name, storage_dtype)
        self.offload = bool(offload)
        self._store = AnchorStore(self.name, self.storage_dtype, self.offload)
        self._tasks_seen = 0
        self._model_class: str | None = None

    @abstractmethod
    def estimate(
        self, model: nn.Module, task: Task, params: Mapping[str, nn.Parameter]
    ) -> dict[str, Tensor]:
        """``Ω_t`` (``{name: tensor shaped like the parameter}``, >= 0) of ``params`` on
        ``task``'s own data; under torch.distributed the same on every rank."""

    def file_fields(self) -> dict[str, Any]:
        """JSON fields this penalty adds to its state and files (EWC: its estimator)."""
        return {}

    @property
    def terms(self) -> list[AnchorTerm]:
        """The stored ``(Ω_t, θ*_t)`` terms (``weight`` is ``Ω_t``, ``anchor`` is ``θ*_t``)."""
        return list(self._store.terms)

    @property
    def stored_bytes(self) -> int:
        """Memory held by the stored importances and anchors, in bytes."""
        return self._store.nbytes

    def on_task_start(self, model: nn.Module, task: Task) -> None:
        """Check that ``params`` selects something now, rather than after training the task, and
        that a sharded model is one :meth:`estimate` can handle."""
        if not self.sharded_estimate:
            refuse_sharded(
                model, self.name, f"its {self.weight_label} estimate needs whole parameters"
            )
        select_parameters(model, self.params, what=f"{self.name} params")

    def on_task_end(self, model: nn.Module, task: Task) -> None:
        """Estimate ``Ω_t`` on the task's own data and protect the current weights with it."""
        selected = select_parameters(model, self.params, what=f"{self.name} params")
        self.consolidate(model, self.estimate(model, task, selected))

    def consolidate(self, model: nn.Module, importance: Mapping[str, Tensor]) -> None:
        """Protect ``model``'s current weights with ``importance`` (``Ω`` by parameter name).

        This is what :meth:`on_task_end` does after estimating ``Ω_t``: normalise it, then
        append ``(Ω_t, θ_t)`` (separate) or set ``Ω ← γ·Ω + Ω_t``, ``θ* ← θ_t`` (online).
        """
        named = dict(model.named_parameters())
        new: dict[str, Tensor] = {}
        for name, value in importance.items():
            param = named.get(name)
            if param is None or local_tensor(param).shape != value.shape:
                raise RetainError(
                    f"{self.name} {self.weight_label} entry {name!r} does not match a parameter "
                    f"of {type(model).__name__}; estimate the {self.weight_label} on this model"
                )
            new[name] = value.detach().float()
        if not new:
            raise RetainError(
                f"{self.name} got an empty {self.weight_label}; select at least one trainable "
                "parameter"
            )
        sharded = any(local_tensor(named[n]) is not named[n] for n in new)
        new = normalized(new, self.normalize, sharded=sharded)
        store = self._store
        if self.mode == "separate" or not store.terms:
            terms = [*store.terms, importance_term(store, named, new)]
        else:
            old_weight = store.terms[0].weight or {}
            names = [n for n in dict.fromkeys([*old_weight, *new]) if n in named]
            decayed: dict[str, Tensor] = {}
            for n in names:
                device = named[n].device
                total = torch.zeros(local_tensor(named[n]).shape, device=device)
                if (previous := old_weight.get(n)) is not None:
                    total += self.gamma * previous.to(device, torch.float32)
                if (current := new.get(n)) is not None:
                    total += current.to(device)
                decayed[n] = total
            terms = [importance_term(store, named, decayed)]
        store.set_terms(terms)
        self._tasks_seen += 1
        self._model_class = type(model).__name__

    def after_backward(self, model: nn.Module) -> None:
        """``g_i += λ · Σ_t Ω_{t,i} (θ_i − θ*_{t,i})`` with fused ``torch._foreach_*`` kernels."""
        self._store.add_gradient(model, self.strength)

    def penalty(self, model: nn.Module) -> Tensor:
        """``R(θ) = λ/2 · Σ_t Σ_i Ω_{t,i} (θ_i − θ*_{t,i})²`` (float32 scalar; 0 before a task)."""
        return self._store.loss(model, self.strength)

    def save_terms(self, path: str | Path) -> Path:
        """Write every ``(Ω_t, θ*_t)`` to a safetensors file with the parameter names and
        shapes, the model class, the mode and :meth:`file_fields` (atomically)."""
        if not self._store.terms:
            raise RetainError(
                f"{self.name} has no {self.weight_label} to save yet; save after a task has ended"
            )
        self._store.check_whole(f"save the {self.name} {self.weight_label}")
        meta = {
            "model_class": self._model_class,
            **self.file_fields(),
            "mode": self.mode,
            "tasks_seen": self._tasks_seen,
        }
        return write_terms(path, self._store.terms, self.weight_kind, meta)

    def load_terms(self, path: str | Path, model: nn.Module) -> None:
        """Replace the stored terms by those in ``path`` (from :meth:`save_terms`).

        The file must come from the same model: a parameter missing from ``model`` or with
        another shape raises :class:`RetainError` naming it. With ``params`` set, only the
        matching parameters of the file are kept.
        """
        terms, header = read_terms(path, model, self.weight_kind, self._store)
        if self.params is not None:
            keep = set(
                select_parameters(
                    model, self.params, trainable_only=False, what=f"{self.name} params"
                )
            )
            terms = [
                AnchorTerm(
                    {n: t for n, t in term.anchor.items() if n in keep},
                    None
                    if term.weight is None
                    else {n: t for n, t in term.weight.items() if n in keep},
                )
                for term in terms
            ]
        if self.mode == "online" and len(terms) > 1:
            raise RetainError(
                f"{str(path)!r} holds {len(terms)} separate {self.weight_label} terms; load it "
                f"with mode='separate' (online {self.name} keeps one term)"
            )
        self._store.set_terms(terms)
        self._tasks_seen = int(header.get("tasks_seen") or len(terms))
        self._model_class = type(model).__name__

    def state_dict(self) -> StateDict:
        """``task<t>.<weight_kind>.<param>`` and ``task<t>.anchor.<param>`` tensors plus JSON
        fields (mode, counts, model class, :meth:`file_fields`). Refused while the terms hold
        shards of a sharded model."""
        self._store.check_whole(f"checkpoint the {self.name} state")
        state: StateDict = {
            "mode": self.mode,
            "num_tasks": len(self._store.terms),
            "tasks_seen": self._tasks_seen,
            "model_class": self._model_class,
            **self.file_fields(),
        }
        for t, term in enumerate(self._store.terms):
            state.update(term_state(term, f"task{t}.", self.weight_kind))
        return state

    def load_state_dict(self, state: StateDict) -> None:
        """Restore what :meth:`state_dict` returned (the mode must match)."""
        if not state:
            self._store.set_terms([])
            return
        if state.get("mode") != self.mode:
            raise RetainError(
                f"{self.name} state was saved with mode={state.get('mode')!r} but this strategy "
                f"has mode={self.mode!r}; build it with the same mode"
            )
        count = int(state.get("num_tasks", 0))
        prefixes = tuple(f"task{t}." for t in range(count))
        known = (*_OWN_KEYS, *self.file_fields())
        stray = [k for k in state if k not in known and not k.startswith(prefixes)]
        if stray:
            raise RetainError(
                f"{self.name} state has unknown key {stray[0]!r}; pass a {self.name} state"
            )
        terms = [term_from_state(state, p, self.weight_kind, self._store) for p in prefixes]
        self._store.set_terms(terms)
        self._tasks_seen = int(state.get("tasks_seen", count))
        model_class = state.get("model_class")
        self._model_class = str(model_class) if model_class is not None else None


def importance_term(
    store: AnchorStore, named: Mapping[str, nn.Parameter], importance: Mapping[str, Tensor]
) -> AnchorTerm:
    """``(Ω, θ*)`` in ``store``'s storage form, anchored at the current weights of ``Ω``'s
    parameters."""
    anchor = store.snapshot({n: named[n] for n in importance})
    weight = {n: store.stored(f.to(named[n].device)) for n, f in importance.items()}
    return AnchorTerm(anchor, weight)


def normalized(
    importance: dict[str, Tensor], normalize: str, *, sharded: bool = False
) -> dict[str, Tensor]:
    """``Ω / max Ω`` or ``Ω / mean Ω`` over every entry (unchanged for ``"none"`` or ``Ω = 0``).

    ``sharded``: the tensors are this process's shards, so the max, the sum and the entry count
    are all-reduced over processes (every rank must call) and the scale is the global one.
    """
    if normalize == "none":
        return importance
    if normalize == "max":
        # An empty shard (a rank holding no rows) contributes 0, which is <= any max of Ω >= 0.
        local = max((float(f.max()) for f in importance.values() if f.numel()), default=0.0)
        box = torch.tensor([local], dtype=torch.float64)
        if sharded and torch.distributed.is_initialized():
            torch.distributed.all_reduce(box, op=torch.distributed.ReduceOp.MAX)
        scale = float(box.item())
    else:
        total = sum(float(f.sum(dtype=torch.float64)) for f in importance.values())
        count = float(sum(f.numel() for f in importance.values()))
        box = torch.tensor([total, count], dtype=torch.float64)
        if sharded:
            all_reduce_sum(box)
        scale = float(box[0]) / max(float(box[1]), 1.0)
    if not scale > 0:
        return importance
    return {n: f / scale for n, f in importance.items()}


def check_sampling(
    strategy: str, names: tuple[str, str], samples: int | None, batch_size: int
) -> tuple[int | None, int]:
    """``(samples, batch_size)`` of an importance estimate as ints, refusing ``samples < 1``
    (None: every example) and ``batch_size < 1``; ``names`` are the two parameters' names."""
    if samples is not None and int(samples) < 1:
        raise RetainError(f"{strategy} {names[0]} must be >= 1 or None, got {samples}")
    if int(batch_size) < 1:
        raise RetainError(f"{strategy} {names[1]} must be >= 1, got {batch_size}")
    return None if samples is None else int(samples), int(batch_size)


def check_choice(strategy: str, parameter: str, value: str, allowed: tuple[str, ...]) -> None:
    """Refuse ``value`` unless it is one of ``allowed`` (the message lists them)."""
    if value not in allowed:
        options = ", ".join(repr(a) for a in allowed)
        raise RetainError(f"{strategy} {parameter} must be one of {options}, got {value!r}")


def rank_share(task: Task, samples: int | None) -> Task:
    """The first ``samples`` examples of ``task`` (None: all), split across ranks (rank ``r`` of
    ``W`` takes ``r, r + W, ...``) so that an all-reduced mean covers each sample once."""
    examples = task.examples
    n = len(examples) if samples is None else min(samples, len(examples))
    rank, world = rank_and_world()
    if world == 1 and n == len(examples):
        return task
    return task.with_examples([examples[i] for i in range(rank, n, world)])
