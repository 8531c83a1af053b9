"""Which update implementation an optimizer uses: fused, foreach or the per-parameter loop.

PyTorch's AdamW and SGD have three implementations of the same update: ``for_loop`` (one
parameter at a time in Python, the CPU default), ``foreach`` (multi-tensor ``torch._foreach_*``
ops, the CUDA default) and ``fused`` (one kernel over every parameter; CUDA, CPU, MPS, XPU).
They give the same weights up to float rounding (AdamW on an MLP after 20 steps: max
``|Δw| < 1e-6``). ``"auto"`` takes the fastest one the parameters allow: fused when every
parameter is a plain floating-point tensor on a device with fused kernels (PyTorch's own rule,
``torch.optim.optimizer._default_to_fused_or_foreach``), else foreach.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Literal, get_args

import torch
from torch import Tensor

from retain.distributed import local_tensor
from retain.errors import RetainError

__all__ = ["OptimizerImpl", "check_impl", "choose_impl", "impl_kwargs", "impl_of"]

OptimizerImpl = Literal["auto", "fused", "foreach", "for_loop"]


def check_impl(impl: str) -> OptimizerImpl:
    """``impl`` when it names an implementation, else a :class:`RetainError`."""
    choices: tuple[OptimizerImpl, ...] = get_args(OptimizerImpl)
    for choice in choices:
        if impl == choice:
            return choice
    raise RetainError(
        f"unknown optimizer_impl {impl!r}; use 'auto', 'fused', 'foreach' or 'for_loop'"
    )


def _fusable(params: Iterable[Tensor]) -> bool:
    """Whether every tensor is a plain floating-point tensor on a device with fused kernels (not
    a sharded ``DTensor``: torch 2.13 has no sharding rule for fused SGD)."""
    from torch.optim.optimizer import _default_to_fused_or_foreach

    tensors = list(params)
    if any(local_tensor(p) is not p for p in tensors):
        return False
    fused, _ = _default_to_fused_or_foreach(tensors, differentiable=False, use_fused=True)
    return bool(fused)


def _params(groups: Sequence[dict[str, Any]]) -> list[Tensor]:
    return [p for group in groups for p in group["params"]]


def choose_impl(impl: OptimizerImpl, groups: Sequence[dict[str, Any]]) -> OptimizerImpl:
    """The implementation ``impl`` resolves to for these parameter groups (never ``"auto"``):
    ``"fused"`` when every parameter can be fused, else ``"foreach"``; an explicit ``"fused"``
    the parameters cannot use is a :class:`RetainError`."""
    if impl == "auto":
        return "fused" if _fusable(_params(groups)) else "foreach"
    if impl == "fused" and not _fusable(_params(groups)):
        kinds = sorted({f"{p.dtype} on {p.device.type}" for p in _params(groups)})
        raise RetainError(
            f"optimizer_impl='fused' needs floating-point parameters on a device with fused "
            f"kernels, but the model has {', '.join(kinds)}; use optimizer_impl='foreach' or 'auto'"
        )
    return impl


def impl_kwargs(impl: OptimizerImpl, groups: Sequence[dict[str, Any]]) -> dict[str, bool]:
    """The ``fused`` / ``foreach`` keyword arguments of ``torch.optim.AdamW`` or ``SGD`` for
    ``impl`` (see :func:`choose_impl`)."""
    chosen = choose_impl(impl, groups)
    return {"fused": chosen == "fused", "foreach": chosen == "foreach"}


def impl_of(optimizer: torch.optim.Optimizer) -> OptimizerImpl:
    """The implementation an optimizer built here uses (from its first group's flags)."""
    group = optimizer.param_groups[0]
    if group.get("fused"):
        return "fused"
    return "foreach" if group.get("foreach") else "for_loop"
