"""EWC: penalise moving the weights that a task's Fisher information marks as important.

Kirkpatrick et al., "Overcoming catastrophic forgetting in neural networks", PNAS 2017 (separate
penalties, one per task); online EWC from Schwarz et al., "Progress & Compress: A scalable
framework for continual learning", ICML 2018 (one decayed running Fisher). With ``λ`` the strength,

    R(θ) = λ/2 · Σ_t Σ_i F_{t,i} (θ_i − θ*_{t,i})²,    ∂R/∂θ_i = λ · Σ_t F_{t,i} (θ_i − θ*_{t,i})

where ``F_t`` is the diagonal Fisher of task ``t`` (mean over samples of squared per-sample loss
gradients, in nats² per squared parameter unit) and ``θ*_t`` the weights at the end of task ``t``.
Online mode keeps one term: ``F ← γ·F + F_t``, ``θ* ← θ_t`` (memory constant in the number of
tasks). EWC protects the parameters that are trainable when the Fisher is estimated. Under
``torch.distributed`` the Fisher is the mean over every rank's samples (``estimate_fisher``
all-reduces), so every rank stores the same terms and adds the same gradient.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from retain.data.task import Task
from retain.errors import RetainError
from retain.strategies.anchor_files import read_terms, term_from_state, term_state, write_terms
from retain.strategies.anchored import (
    AnchorStore,
    AnchorTerm,
    StorageDtype,
    check_pattern,
    check_storage_dtype,
)
from retain.strategies.base import StateDict, Strategy, check_strength, register_strategy
from retain.strategies.params import select_parameters

__all__ = ["EWC"]

FisherEstimator = Literal["empirical", "true", "batch"]
_JSON_KEYS = ("mode", "num_tasks", "tasks_seen", "model_class", "estimator")


@register_strategy("EWC: penalise moving weights in proportion to each task's Fisher information")
class EWC(Strategy):
    """Elastic weight consolidation (Kirkpatrick et al. 2017; online: Schwarz et al. 2018).

    ``R(θ) = λ/2 · Σ_t Σ_i F_{t,i} (θ_i − θ*_{t,i})²`` with ``λ`` = ``strength``.

    Args:
        strength: ``λ`` (>= 0; 0 switches the penalty off).
        fisher: Fisher estimator passed to :func:`retain.diagnostics.fisher.estimate_fisher`
            (``"empirical"``: gradients of the labelled loss; ``"true"``: labels sampled from the
            model; ``"batch"``: squared mini-batch gradients).
        mode: ``"separate"`` keeps one ``(F_t, θ*_t)`` per task; ``"online"`` keeps one decayed
            sum ``F ← γ·F + F_t`` anchored at the latest weights.
        gamma: ``γ`` in (0, 1], the online decay.
        normalize: divide each task's Fisher by its maximum (``"max"``) or mean (``"mean"``) over
            all selected entries, so ``λ`` means the same across models; ``"none"`` keeps it.
        fisher_samples: examples of the task used to estimate the Fisher (None: all).
        fisher_batch_size: examples per forward pass while estimating the Fisher.
        params: regular expression (``re.search`` on names) choosing the protected parameters;
            None protects every trainable parameter.
        storage_dtype: dtype of the stored Fisher and anchors (``"bfloat16"``: per task, as many
            bytes as the model's float32 parameters; upcast to float32 in the computation).
        offload: keep the stored tensors in CPU memory (copied to the device each step).
    """

    name = "ewc"

    def __init__(
        self,
        strength: float = 1000.0,
        fisher: FisherEstimator = "empirical",
        mode: Literal["separate", "online"] = "separate",
        gamma: float = 1.0,
        normalize: Literal["none", "max", "mean"] = "none",
        fisher_samples: int | None = 512,
        fisher_batch_size: int = 32,
        params: str | None = None,
        storage_dtype: StorageDtype = "float32",
        offload: bool = False,
    ) -> None:
        self.strength = check_strength("ewc", "strength", strength)
        _check_choice("fisher", fisher, ("empirical", "true", "batch"))
        _check_choice("mode", mode, ("separate", "online"))
        _check_choice("normalize", normalize, ("none", "max", "mean"))
        self.fisher: FisherEstimator = fisher
        self.mode: Literal["separate", "online"] = mode
        self.normalize: Literal["none", "max", "mean"] = normalize
        gamma = float(gamma)
        if not 0.0 < gamma <= 1.0:
            raise RetainError(f"ewc gamma must be in (0, 1], got {gamma}; use 1 for no decay")
        self.gamma = gamma
        if fisher_samples is not None and int(fisher_samples) < 1:
            raise RetainError(f"ewc fisher_samples must be >= 1 or None, got {fisher_samples}")
        self.fisher_samples = None if fisher_samples is None else int(fisher_samples)
        if int(fisher_batch_size) < 1:
            raise RetainError(f"ewc fisher_batch_size must be >= 1, got {fisher_batch_size}")
        self.fisher_batch_size = int(fisher_batch_size)
        self.params = check_pattern("ewc params", params)
        self.storage_dtype = check_storage_dtype("ewc", storage_dtype)
        self.offload = bool(offload)
        self._store = AnchorStore("ewc", self.storage_dtype, self.offload)
        self._tasks_seen = 0
        self._model_class: str | None = None

    @property
    def terms(self) -> list[AnchorTerm]:
        """The stored ``(F_t, θ*_t)`` terms (``weight`` is ``F_t``, ``anchor`` is ``θ*_t``)."""
        return list(self._store.terms)

    @property
    def stored_bytes(self) -> int:
        """Memory held by the stored Fisher diagonals and anchors, in bytes."""
        return self._store.nbytes

    def on_task_start(self, model: nn.Module, task: Task) -> None:
        """Check that ``params`` selects something now, rather than after training the task."""
        select_parameters(model, self.params, what="ewc params")

    def on_task_end(self, model: nn.Module, task: Task) -> None:
        """Estimate ``F_t`` on the task's own data and protect the current weights with it."""
        from retain.diagnostics.fisher import estimate_fisher

        selected = select_parameters(model, self.params, what="ewc params")
        fisher = estimate_fisher(
            model,
            _my_share(task, self.fisher_samples),
            estimator=self.fisher,
            params=selected,
            max_samples=None,
            batch_size=self.fisher_batch_size,
        )
        self.consolidate(model, fisher)

    def consolidate(self, model: nn.Module, fisher: Mapping[str, Tensor]) -> None:
        """Protect ``model``'s current weights with the Fisher diagonal ``fisher`` (by name).

        This is what :meth:`on_task_end` does after estimating ``F_t``: normalise it, then append
        ``(F_t, θ_t)`` (separate) or set ``F ← γ·F + F_t``, ``θ* ← θ_t`` (online).
        """
        named = dict(model.named_parameters())
        new: dict[str, Tensor] = {}
        for name, value in fisher.items():
            param = named.get(name)
            if param is None or param.shape != value.shape:
                raise RetainError(
                    f"ewc Fisher entry {name!r} does not match a parameter of "
                    f"{type(model).__name__}; estimate the Fisher on this model"
                )
            new[name] = value.detach().float()
        if not new:
            raise RetainError("ewc got an empty Fisher; select at least one trainable parameter")
        new = _normalized(new, self.normalize)
        store = self._store
        if self.mode == "separate" or not store.terms:
            terms = [*store.terms, _term(store, named, new)]
        else:
            old_weight = store.terms[0].weight or {}
            names = [n for n in dict.fromkeys([*old_weight, *new]) if n in named]
            decayed: dict[str, Tensor] = {}
            for n in names:
                device = named[n].device
                total = torch.zeros(named[n].shape, device=device)
                if (previous := old_weight.get(n)) is not None:
                    total += self.gamma * previous.to(device, torch.float32)
                if (current := new.get(n)) is not None:
                    total += current.to(device)
                decayed[n] = total
            terms = [_term(store, named, decayed)]
        store.set_terms(terms)
        self._tasks_seen += 1
        self._model_class = type(model).__name__

    def after_backward(self, model: nn.Module) -> None:
        """``g_i += λ · Σ_t F_{t,i} (θ_i − θ*_{t,i})`` with fused ``torch._foreach_*`` kernels."""
        self._store.add_gradient(model, self.strength)

    def penalty(self, model: nn.Module) -> Tensor:
        """``R(θ) = λ/2 · Σ_t Σ_i F_{t,i} (θ_i − θ*_{t,i})²`` (float32 scalar; 0 before a task)."""
        return self._store.loss(model, self.strength)

    def save_fisher(self, path: str | Path) -> Path:
        """Write every ``(F_t, θ*_t)`` to a safetensors file with the parameter names and shapes,
        the model class, the estimator and the mode (atomically)."""
        if not self._store.terms:
            raise RetainError("ewc has no Fisher to save yet; save after a task has ended")
        meta = {
            "model_class": self._model_class,
            "estimator": self.fisher,
            "mode": self.mode,
            "tasks_seen": self._tasks_seen,
        }
        return write_terms(path, self._store.terms, "fisher", meta)

    def load_fisher(self, path: str | Path, model: nn.Module) -> None:
        """Replace the stored terms by those in ``path`` (from :meth:`save_fisher`).

        The file must come from the same model: a parameter missing from ``model`` or with
        another shape raises :class:`RetainError` naming it. With ``params`` set, only the
        matching parameters of the file are kept.
        """
        terms, header = read_terms(path, model, "fisher", self._store)
        if self.params is not None:
            keep = set(
                select_parameters(model, self.params, trainable_only=False, what="ewc params")
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
                f"{str(path)!r} holds {len(terms)} separate Fisher terms; load it with "
                "mode='separate' (online EWC keeps one term)"
            )
        self._store.set_terms(terms)
        self._tasks_seen = int(header.get("tasks_seen") or len(terms))
        self._model_class = type(model).__name__

    def state_dict(self) -> StateDict:
        """``task<t>.fisher.<param>`` and ``task<t>.anchor.<param>`` tensors plus JSON fields."""
        state: StateDict = {
            "mode": self.mode,
            "num_tasks": len(self._store.terms),
            "tasks_seen": self._tasks_seen,
            "model_class": self._model_class,
            "estimator": self.fisher,
        }
        for t, term in enumerate(self._store.terms):
            state.update(term_state(term, f"task{t}.", "fisher"))
        return state

    def load_state_dict(self, state: StateDict) -> None:
        """Restore what :meth:`state_dict` returned (the mode must match)."""
        if not state:
            self._store.set_terms([])
            return
        if state.get("mode") != self.mode:
            raise RetainError(
                f"ewc state was saved with mode={state.get('mode')!r} but this strategy has "
                f"mode={self.mode!r}; build it with the same mode"
            )
        count = int(state.get("num_tasks", 0))
        prefixes = tuple(f"task{t}." for t in range(count))
        stray = [k for k in state if k not in _JSON_KEYS and not k.startswith(prefixes)]
        if stray:
            raise RetainError(f"ewc state has unknown key {stray[0]!r}; pass an ewc state")
        terms = [term_from_state(state, p, "fisher", self._store) for p in prefixes]
        self._store.set_terms(terms)
        self._tasks_seen = int(state.get("tasks_seen", count))
        model_class = state.get("model_class")
        self._model_class = str(model_class) if model_class is not None else None


def _term(
    store: AnchorStore, named: Mapping[str, nn.Parameter], fisher: dict[str, Tensor]
) -> AnchorTerm:
    """``(F, θ*)`` in storage form, anchored at the current weights of the Fisher's parameters."""
    anchor = store.snapshot({n: named[n] for n in fisher})
    weight = {n: store.stored(f.to(named[n].device)) for n, f in fisher.items()}
    return AnchorTerm(anchor, weight)


def _normalized(fisher: dict[str, Tensor], normalize: str) -> dict[str, Tensor]:
    """``F / max F`` or ``F / mean F`` over every entry (unchanged for ``"none"`` or ``F = 0``)."""
    if normalize == "none":
        return fisher
    if normalize == "max":
        scale = max(float(f.max()) for f in fisher.values())
    else:
        total = sum(float(f.sum(dtype=torch.float64)) for f in fisher.values())
        scale = total / sum(f.numel() for f in fisher.values())
    if not scale > 0:
        return fisher
    return {n: f / scale for n, f in fisher.items()}


def _check_choice(parameter: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        options = ", ".join(repr(a) for a in allowed)
        raise RetainError(f"ewc {parameter} must be one of {options}, got {value!r}")


def _my_share(task: Task, samples: int | None) -> Task:
    """The first ``samples`` examples of ``task``, split across ranks (rank ``r`` of ``W`` takes
    ``r, r + W, ...``) so ``estimate_fisher``'s all-reduced mean covers each sample once."""
    examples = task.examples
    n = len(examples) if samples is None else min(samples, len(examples))
    dist = torch.distributed
    rank, world = 0, 1
    if dist.is_available() and dist.is_initialized():
        rank, world = int(dist.get_rank()), int(dist.get_world_size())
    if world == 1 and n == len(examples):
        return task
    return task.with_examples([examples[i] for i in range(rank, n, world)])
