"""L2-SP: pull the weights towards a stored starting point (Li, Grandvalet & Davoine 2018).

Xuhong Li, Yves Grandvalet, Franck Davoine, "Explicit inductive bias for transfer learning with
convolutional networks", ICML 2018. The penalty is

    R(θ) = α/2 · Σ_i (θ_i − θ*_i)²,        ∂R/∂θ_i = α (θ_i − θ*_i),

over the selected parameters that existed when the anchor ``θ*`` was taken (a head added later is
not penalised). ``R`` is in nats when the loss is; ``α`` is per squared parameter unit.

On a sharded model (FSDP2 ``fully_shard``) each process stores its own shard of ``θ*`` (memory per
rank: the anchored parameters' bytes over the world size) and adds ``α (θ − θ*)`` to its shard
of the gradient; no gather is needed (:mod:`retain.strategies.anchored`).
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from retain.data.task import Task
from retain.errors import RetainError
from retain.strategies.anchor_files import term_from_state, term_state
from retain.strategies.anchored import (
    AnchorStore,
    AnchorTerm,
    StorageDtype,
    check_pattern,
    check_storage_dtype,
)
from retain.strategies.base import StateDict, Strategy, check_strength, register_strategy
from retain.strategies.params import select_parameters

__all__ = ["L2SP"]


@register_strategy("L2-SP: penalise the squared distance to the pretrained (or task-start) weights")
class L2SP(Strategy):
    """L2-SP (Li, Grandvalet & Davoine 2018): ``R(θ) = α/2 · Σ_i (θ_i − θ*_i)²``.

    Args:
        alpha: the strength ``α`` (>= 0; 0 switches the penalty off).
        anchor: ``"pretrained"`` takes ``θ*`` once, when the strategy first sees the model (the
            first ``on_task_start``), which protects the pretrained representation;
            ``"task_start"`` re-anchors at every task's start, which also protects what earlier
            tasks learned (their heads included).
        params: regular expression (``re.search`` on parameter names) choosing the parameters to
            anchor; None anchors every trainable parameter.
        storage_dtype: dtype of the stored anchor (``"bfloat16"`` halves its memory; it is upcast
            to float32 in the computation).
        offload: keep the anchor in CPU memory (copied to the parameters' device each step).

    The gradient ``α (θ − θ*)`` is added to ``.grad`` in ``after_backward`` for anchored parameters
    that have a gradient; :meth:`penalty` gives ``R`` in loss space.
    """

    name = "l2sp"
    unsharded_only = None  # anchors (and Fisher) on local shards: tests/training/test_fsdp.py
    tunable_strength = "alpha"

    def __init__(
        self,
        alpha: float = 0.01,
        anchor: Literal["pretrained", "task_start"] = "pretrained",
        params: str | None = None,
        storage_dtype: StorageDtype = "float32",
        offload: bool = False,
    ) -> None:
        self.alpha = check_strength("l2sp", "alpha", alpha)
        if anchor not in ("pretrained", "task_start"):
            raise RetainError(f"l2sp anchor must be 'pretrained' or 'task_start', got {anchor!r}")
        self.anchor = anchor
        self.params = check_pattern("l2sp params", params)
        self.storage_dtype = check_storage_dtype("l2sp", storage_dtype)
        self.offload = bool(offload)
        self._store = AnchorStore("l2sp", self.storage_dtype, self.offload)
        self._anchored = False

    @property
    def anchors(self) -> dict[str, Tensor]:
        """The stored anchor ``θ*`` by parameter name (empty before the first task); this
        process's shards on a sharded model."""
        return dict(self._store.terms[0].anchor) if self._store.terms else {}

    @property
    def stored_bytes(self) -> int:
        """Memory held by the stored anchor, in bytes."""
        return self._store.nbytes

    def on_task_start(self, model: nn.Module, task: Task) -> None:
        """Take the anchor ``θ*`` (first task only for ``"pretrained"``, every task otherwise)."""
        if self._anchored and self.anchor == "pretrained":
            return
        selected = select_parameters(model, self.params, what="l2sp params")
        self._store.set_terms([AnchorTerm(self._store.snapshot(selected))])
        self._anchored = True

    def after_backward(self, model: nn.Module) -> None:
        """``g_i += α (θ_i − θ*_i)`` for the anchored parameters with a gradient."""
        self._store.add_gradient(model, self.alpha)

    def penalty(self, model: nn.Module) -> Tensor:
        """``R(θ) = α/2 · Σ_i (θ_i − θ*_i)²`` (float32 scalar; 0 before the first anchor)."""
        return self._store.loss(model, self.alpha)

    def state_dict(self) -> StateDict:
        """``anchor.<param>`` tensors plus ``anchored`` and ``anchor_mode`` (refused while the
        anchor holds shards of a sharded model)."""
        self._store.check_whole("checkpoint the l2sp anchor")
        state: StateDict = {"anchored": self._anchored, "anchor_mode": self.anchor}
        for term in self._store.terms:
            state.update(term_state(term, "", "weight"))
        return state

    def load_state_dict(self, state: StateDict) -> None:
        """Restore the anchor saved by :meth:`state_dict`."""
        if state.get("anchor_mode", self.anchor) != self.anchor:
            raise RetainError(
                f"l2sp state was saved with anchor={state['anchor_mode']!r} but this strategy has "
                f"anchor={self.anchor!r}; build it with the same anchor"
            )
        stray = [k for k in state if k not in ("anchored", "anchor_mode")]
        stray = [k for k in stray if not k.startswith("anchor.")]
        if stray:
            raise RetainError(f"l2sp state has unknown key {stray[0]!r}; pass an l2sp state")
        self._anchored = bool(state.get("anchored", False))
        has_tensors = any(k.startswith("anchor.") for k in state)
        terms = [term_from_state(state, "", None, self._store)] if has_tensors else []
        self._store.set_terms(terms)
