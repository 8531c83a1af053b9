"""Shared machinery of the anchored penalties (L2-SP, EWC): quadratic terms around stored weights.

A strategy stores ``T`` *terms*, each an anchor ``θ*_t`` (weights at some moment) and, optionally,
a per-entry weight ``w_t`` (EWC's diagonal Fisher; 1 for L2-SP), and penalises

    R(θ) = c/2 · Σ_t Σ_i w_{t,i} (θ_i − θ*_{t,i})²,    ∂R/∂θ_i = c · Σ_t w_{t,i} (θ_i − θ*_{t,i})

with ``c`` the strategy's strength. ``R`` is in the units of the loss (nats); ``θ`` in the units of
the parameters. :meth:`AnchorStore.add_gradient` adds ``∂R/∂θ`` to ``.grad`` in place with fused
``torch._foreach_*`` kernels over lists matched to the stored tensors once (no autograd graph, no
per-parameter Python arithmetic); :meth:`AnchorStore.loss` gives the same ``R`` in loss space.

Storage: ``storage_dtype="bfloat16"`` halves the memory of anchors and weights (both are upcast to
float32 inside the fused computation); ``offload=True`` keeps them in CPU memory and copies them
to the parameters' device at each step.

Cost per step and term: two fused calls per chunk of at most :data:`CHUNK_NUMEL` entries
(``d = θ − θ*`` into a temporary, then ``g += c · w ⊙ d``), memory-bound; the chunk lists are built
once and rebuilt only when the terms, the model or its parameters' storage change. With bfloat16
storage the lists mix dtypes and PyTorch runs the fused calls tensor by tensor (in C++): half the
memory, more time (about 1.5x the float32 time of the transform on CPU).

Terms are saved with safetensors by :mod:`retain.strategies.anchor_files`, together with the
parameter names and shapes, so that loading into another model fails with a clear message.

Sharded models (FSDP2, ``fully_shard``): a parameter is a ``DTensor`` sharded on dim 0 and so is
its gradient after ``backward``. The store then keeps *this process's shard* of every anchor and
weight (:func:`~retain.distributed.local_tensor`, taken from the sharded parameter itself, so no
gather ever happens) and applies ``g += c · Σ_t w_t ⊙ (θ − θ*_t)`` to the local shard of ``.grad``:
the transform is elementwise, so each rank updating its own rows gives exactly the unsharded
result. Memory per rank is the stored bytes divided by the world size (a shard is ``⌈n/W⌉`` rows
or fewer; FSDP2's own padding is not copied). :meth:`AnchorStore.loss` sums the local shards and
all-reduces that one scalar (every rank must call it); the value is global, the gradient reaches
the local shards. Stored shards are only meaningful on the same sharding, so
:meth:`AnchorStore.check_whole` lets owners refuse to save them (a whole anchor given to a sharded
model is refused when bound).
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from retain.distributed import all_reduce_sum, local_tensor, per_rank_state_active
from retain.errors import RetainError

__all__ = [
    "AnchorStore",
    "AnchorTerm",
    "StorageDtype",
    "check_pattern",
    "check_storage_dtype",
]

StorageDtype = Literal["float32", "bfloat16"]
_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16}
#: Entries per fused call, by device type: on CPU the temporary ``θ − θ*`` (4 MiB) stays in cache
#: between the two calls (measured 2-3x faster than one call over all parameters); elsewhere large
#: chunks keep kernel launches few while bounding the temporary (128 MiB). Larger tensors are cut
#: into flat pieces.
CHUNK_NUMEL: dict[str, int] = {"cpu": 1 << 20, "other": 1 << 25}


@dataclass
class AnchorTerm:
    """One quadratic term: ``anchor[name]`` is ``θ*`` and ``weight[name]`` is ``w`` (None: 1)."""

    anchor: dict[str, Tensor]
    weight: dict[str, Tensor] | None = None

    def tensors(self) -> Iterator[Tensor]:
        """Every stored tensor of the term (anchors, then weights)."""
        yield from self.anchor.values()
        if self.weight is not None:
            yield from self.weight.values()


@dataclass
class _Chunk:
    """One fused call: pieces (flat slices or whole tensors) of parameters and stored tensors.

    ``index`` holds ``(position in the term, start, end)`` per piece; ``start < 0``: whole tensor.
    """

    params: list[Tensor]
    anchors: list[Tensor]
    weights: list[Tensor] | None
    index: list[tuple[int, int, int]]


@dataclass
class _Bound:
    """A term matched to a model: its parameters, the chunks over them, and how to check them.

    ``params`` are the tensors the arithmetic reads (the parameters, or their local shards when
    sharded); ``owners`` the parameters themselves, whose ``.grad`` receives the gradient.
    """

    params: list[Tensor]
    chunks: list[_Chunk]
    split: list[tuple[int, int]]  # (position, data_ptr) of parameters cut into flat pieces
    copy: bool  # offloaded storage: copy pieces to the parameters' device at each step
    owners: list[Tensor]
    sharded: bool = False

    def stale(self) -> bool:
        """True when a parameter's storage moved since the pieces were cut (``model.to(...)``)."""
        if any(self.params[i].data_ptr() != ptr for i, ptr in self.split):
            return True
        if self.sharded and any(
            local_tensor(o).data_ptr() != p.data_ptr()
            for o, p in zip(self.owners, self.params, strict=True)
        ):
            return True
        first = self.chunks[0] if self.chunks else None
        return (
            first is not None
            and not self.copy
            and first.anchors[0].device != first.params[0].device
        )


class AnchorStore:
    """Holds the terms of one strategy and applies ``R`` (see the module docstring).

    ``owner`` names the strategy in messages; ``storage_dtype`` and ``offload`` set where and how
    anchors and weights are kept.
    """

    def __init__(self, owner: str, storage_dtype: StorageDtype, offload: bool) -> None:
        self.owner = owner
        self.dtype = _DTYPES[storage_dtype]
        self.offload = offload
        self.terms: list[AnchorTerm] = []
        #: True once an anchor was taken from a sharded (FSDP2) model: the terms hold local shards.
        self.sharded = False
        self._version = 0
        self._cache: tuple[weakref.ref[nn.Module], int, list[_Bound]] | None = None

    # ---- storage -------------------------------------------------------------------------

    def stored(self, tensor: Tensor) -> Tensor:
        """A detached copy of ``tensor`` in the storage dtype (on CPU when offloading)."""
        device = torch.device("cpu") if self.offload else tensor.device
        out = tensor.detach().to(device=device, dtype=self.dtype, copy=True)
        if self.offload and torch.cuda.is_available():
            out = out.pin_memory()
        return out

    def snapshot(self, params: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Stored copies of the current values of ``params`` (an anchor); of this process's
        shards when the parameters are sharded ``DTensor``s."""
        locals_ = {name: local_tensor(p) for name, p in params.items()}
        self.sharded = any(t is not params[n] for n, t in locals_.items())
        return {name: self.stored(t) for name, t in locals_.items()}

    def check_whole(self, action: str) -> None:
        """Refuse ``action`` (``"checkpoint the l2sp anchor"``) when the terms hold local
        shards (a file or checkpoint of them would be one rank's rows only)."""
        if self.sharded and self.terms and not per_rank_state_active():
            raise RetainError(
                f"cannot {action}: {self.owner} holds this process's shards of them (FSDP2); "
                "saving sharded anchors is not supported yet"
            )

    def set_terms(self, terms: list[AnchorTerm]) -> None:
        """Replace every term (the matched lists are rebuilt at the next step)."""
        self.terms = terms
        self._version += 1
        self._cache = None

    @property
    def num_tensors(self) -> int:
        """Number of stored tensors (anchors and weights of every term)."""
        return sum(1 for term in self.terms for _ in term.tensors())

    @property
    def nbytes(self) -> int:
        """Bytes held by the stored tensors."""
        return sum(t.numel() * t.element_size() for term in self.terms for t in term.tensors())

    # ---- the penalty -----------------------------------------------------------------------

    def add_gradient(self, model: nn.Module, coefficient: float) -> None:
        """``p.grad += c · Σ_t w_t ⊙ (p − θ*_t)`` for every stored parameter that has a gradient."""
        if coefficient == 0.0 or not self.terms:
            return
        with torch.no_grad():
            for bound in self._bind(model):
                grads = [o.grad for o in bound.owners]
                if bound.sharded:
                    grads = [None if g is None else local_tensor(g) for g in grads]
                back: list[tuple[Tensor, Tensor]] = []  # sharded: (local grad, contiguous copy)
                for i, _ in bound.split:  # flat slices need a contiguous gradient
                    grad = grads[i]
                    if grad is not None and not grad.is_contiguous():
                        grads[i] = contiguous = grad.contiguous()
                        if bound.sharded:  # the DTensor keeps its shard: copy the result back
                            back.append((grad, contiguous))
                        else:
                            bound.owners[i].grad = contiguous
                for chunk in bound.chunks:
                    _apply(chunk, grads, coefficient, bound.copy)
                for grad, contiguous in back:
                    grad.copy_(contiguous)

    def loss(self, model: nn.Module, coefficient: float) -> Tensor:
        """``R(θ) = c/2 · Σ_t Σ_i w_{t,i} (θ_i − θ*_{t,i})²`` as a differentiable float32 scalar.

        Sharded: the local shards' sum ``R_r``, all-reduced (one scalar, every rank must call)
        and returned as ``R_r + (Σ_r R_r − R_r).detach()``: the global value, whose gradient is
        that of ``R_r`` on this rank's shards (which is all of ``∂R/∂θ`` for those entries).
        """
        named = dict(model.named_parameters())
        parts: list[Tensor] = []
        for term in self.terms:
            for name, anchor in term.anchor.items():
                owner = self._param(named, name, anchor, model)
                param = local_tensor(owner)
                self.sharded = self.sharded or param is not owner  # also after a load
                diff = param.float() - anchor.to(param.device, torch.float32)
                square = diff * diff
                if term.weight is not None:
                    square = square * term.weight[name].to(param.device, torch.float32)
                parts.append(square.sum())
        if not parts:
            first = next(iter(named.values()), None)
            total = torch.zeros((), device=first.device if first is not None else None)
        else:
            total = 0.5 * coefficient * torch.stack(parts).sum()
        if not self.sharded:
            return total
        whole = all_reduce_sum(total.detach().clone())
        return total + (whole - total.detach())

    def _param(
        self, named: Mapping[str, nn.Parameter], name: str, anchor: Tensor, model: nn.Module
    ) -> nn.Parameter:
        param = named.get(name)
        if param is None:
            raise RetainError(
                f"{self.owner} anchored parameter {name!r}, which {type(model).__name__} does not "
                "have; train the same model (wrap it, e.g. with PEFT, in prepare() before the "
                "first task)"
            )
        local = local_tensor(param)
        if local is not param and local.shape != anchor.shape:
            raise RetainError(
                f"{self.owner} anchor of {name!r} has shape {tuple(anchor.shape)} but this "
                f"process holds a shard of shape {tuple(local.shape)} (FSDP2); take anchors on "
                "the sharded model (loading whole anchors into a sharded one is not supported yet)"
            )
        if local is param and param.shape != anchor.shape:
            raise RetainError(
                f"{self.owner} anchored parameter {name!r} with shape {tuple(anchor.shape)} but "
                f"the model's has shape {tuple(param.shape)}; train the same model"
            )
        return param

    def _bind(self, model: nn.Module) -> list[_Bound]:
        """The terms matched to ``model``'s parameters, cached until the terms or storage change."""
        cache = self._cache
        if (
            cache is not None
            and cache[0]() is model
            and cache[1] == self._version
            and not any(bound.stale() for bound in cache[2])
        ):
            return cache[2]
        named = dict(model.named_parameters())
        bounds = []
        for term in self.terms:
            owners: list[Tensor] = []
            for name, anchor in list(term.anchor.items()):
                param = self._param(named, name, anchor, model)
                if not self.offload and anchor.device != param.device:
                    term.anchor[name] = anchor.to(param.device)
                    if term.weight is not None:
                        term.weight[name] = term.weight[name].to(param.device)
                owners.append(param)
            params = [local_tensor(p) for p in owners]
            anchors = list(term.anchor.values())
            weights = [term.weight[n] for n in term.anchor] if term.weight is not None else None
            copy = self.offload and any(p.device.type != "cpu" for p in params)
            bound = _plan(params, anchors, weights, copy)
            bound.owners = owners
            bound.sharded = any(p is not o for p, o in zip(params, owners, strict=True))
            bounds.append(bound)
        self.sharded = self.sharded or any(bound.sharded for bound in bounds)  # after a load
        self._cache = (weakref.ref(model), self._version, bounds)
        return bounds


def check_pattern(what: str, pattern: str | None) -> str | None:
    """``pattern`` after checking that it compiles (whether it matches is checked on the model)."""
    if pattern is None:
        return None
    try:
        re.compile(pattern)
    except re.error as exc:
        raise RetainError(f"{what} {pattern!r} is not a valid regular expression: {exc}") from exc
    return pattern


def check_storage_dtype(owner: str, storage_dtype: str) -> StorageDtype:
    """``storage_dtype`` after checking it is ``"float32"`` or ``"bfloat16"``."""
    if storage_dtype == "float32":
        return "float32"
    if storage_dtype == "bfloat16":
        return "bfloat16"
    raise RetainError(
        f"{owner} storage_dtype must be 'float32' or 'bfloat16', got {storage_dtype!r}"
    )


def _plan(
    params: list[Tensor], anchors: list[Tensor], weights: list[Tensor] | None, copy: bool
) -> _Bound:
    """Cut the term into chunks of at most :data:`CHUNK_NUMEL` entries (flat pieces of large
    contiguous tensors; whole tensors otherwise)."""
    device = params[0].device.type if params else "cpu"
    limit = CHUNK_NUMEL["cpu" if device == "cpu" else "other"]
    chunks: list[_Chunk] = []
    split: list[tuple[int, int]] = []
    current = _Chunk([], [], [] if weights is not None else None, [])
    size = 0

    def add(i: int, start: int, end: int) -> None:
        nonlocal current, size
        n = params[i].numel() if start < 0 else end - start
        if size and size + n > limit:
            chunks.append(current)
            current = _Chunk([], [], [] if weights is not None else None, [])
            size = 0
        tensors = [params[i], anchors[i]] + ([weights[i]] if weights is not None else [])
        pieces = tensors if start < 0 else [t.view(-1)[start:end] for t in tensors]
        current.params.append(pieces[0])
        current.anchors.append(pieces[1])
        if current.weights is not None:
            current.weights.append(pieces[2])
        current.index.append((i, start, end))
        size += n

    for i, param in enumerate(params):
        numel = param.numel()
        stored = [anchors[i]] + ([weights[i]] if weights is not None else [])
        if numel > limit and all(t.is_contiguous() for t in [param, *stored]):
            split.append((i, param.data_ptr()))
            for start in range(0, numel, limit):
                add(i, start, min(start + limit, numel))
        else:
            add(i, -1, -1)
    if current.index:
        chunks.append(current)
    return _Bound(params, chunks, split, copy, owners=params)


def _apply(chunk: _Chunk, grads: list[Tensor | None], coefficient: float, copy: bool) -> None:
    """``g += c · w ⊙ (θ − θ*)`` over one chunk, skipping pieces whose parameter has no gradient."""
    pieces = [
        g if (g := grads[i]) is None or start < 0 else g.view(-1)[start:end]
        for i, start, end in chunk.index
    ]
    params, anchors, weights = chunk.params, chunk.anchors, chunk.weights
    if any(g is None for g in pieces):
        keep = [k for k, g in enumerate(pieces) if g is not None]
        if not keep:
            return
        params = [params[k] for k in keep]
        anchors = [anchors[k] for k in keep]
        weights = [weights[k] for k in keep] if weights is not None else None
    present = [g for g in pieces if g is not None]
    if copy:
        anchors = _to_devices(anchors, params)
        weights = _to_devices(weights, params) if weights is not None else None
    diff = torch._foreach_sub(params, anchors)
    if weights is None:
        torch._foreach_add_(present, diff, alpha=coefficient)
    else:
        torch._foreach_addcmul_(present, weights, diff, value=coefficient)


def _to_devices(tensors: list[Tensor], params: list[Tensor]) -> list[Tensor]:
    """Each stored tensor copied to its parameter's device (asynchronously from pinned memory)."""
    return [t.to(p.device, non_blocking=True) for t, p in zip(tensors, params, strict=True)]


# ---- state and files ---------------------------------------------------------------------
