"""Layer-wise learning rates: lower blocks, which hold general features, learn more slowly.

Discriminative fine-tuning (Howard & Ruder 2018, ULMFiT, section 3.2) and layer-wise learning-rate
decay ("LLRD", Clark et al. 2020, ELECTRA, appendix A) give block ``l`` of ``L`` the rate

    lr_l = lr * decay ** (L - 1 - l)        for l = 0 .. L-1 (block L-1 trains at lr)
    lr_head = lr                            (depth L: pooler, classifier, final norm, lm_head)
    lr_embeddings = lr * decay ** L         (depth -1)

with depths from :func:`retain.strategies.block_stack.detect_block_stack`. ``decay = 1`` is plain
fine-tuning. The groups are ordinary ``torch.optim`` parameter groups (``"params"``, ``"lr"`` and
a ``"name"`` such as ``"block.3"``, which optimizers keep), so any optimizer or ``Trainer``
accepts them. A ``LambdaLR`` scheduler (warm-up) multiplies each group's own initial rate by the
same factor, so the ratios between layers persist through the schedule.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from retain.errors import RetainError
from retain.records.run import TaskLog
from retain.strategies.base import ParamGroup, Strategy, register_strategy
from retain.strategies.block_stack import detect_block_stack

__all__ = ["LayerwiseLR", "layerwise_optimizer", "layerwise_param_groups"]


def _check_decay(decay: float) -> float:
    try:
        value = float(decay)
    except (TypeError, ValueError):
        value = math.nan
    if not (0.0 < value <= 1.0):
        raise RetainError(
            f"layerwise_lr decay must be in (0, 1], got {decay}; typical values are 0.8-0.95, "
            "and 1 means plain fine-tuning"
        )
    return value


def layerwise_param_groups(
    model: nn.Module, lr: float, decay: float, pattern: str | None = None
) -> list[ParamGroup]:
    """One optimizer group per depth: embeddings at ``lr * decay**L``, block ``l`` at
    ``lr * decay**(L-1-l)``, head at ``lr`` (Howard & Ruder 2018; Clark et al. 2020).

    Every parameter is included, frozen ones too (they get no gradient, so the optimizer skips
    them until gradual unfreezing enables them). Groups are ordered embeddings, blocks, head;
    depths without parameters are left out. ``pattern`` is passed to
    :func:`~retain.strategies.block_stack.detect_block_stack`.
    """
    decay = _check_decay(decay)
    if not (math.isfinite(lr) and lr > 0):
        raise RetainError(f"learning rate must be a finite number > 0, got {lr}")
    stack = detect_block_stack(model, pattern)
    by_depth: dict[int, list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        by_depth.setdefault(stack.depths[name], []).append(param)
    groups: list[ParamGroup] = []
    for depth in sorted(by_depth):
        exponent = max(stack.num_blocks - 1 - depth, 0)
        groups.append(
            {"params": by_depth[depth], "lr": lr * decay**exponent, "name": stack.label(depth)}
        )
    return groups


def layerwise_optimizer(
    model: nn.Module,
    lr: float,
    decay: float,
    optimizer_cls: Callable[..., Optimizer] = torch.optim.AdamW,
    pattern: str | None = None,
    **kwargs: Any,
) -> Optimizer:
    """``optimizer_cls`` over :func:`layerwise_param_groups` (``kwargs`` such as
    ``weight_decay`` go to the optimizer and apply to every group)."""
    groups = layerwise_param_groups(model, lr, decay, pattern)
    return optimizer_cls(groups, lr=lr, **kwargs)


@register_strategy("layer-wise learning-rate decay: block l at lr*decay^(L-1-l) (ULMFiT, ELECTRA)")
class LayerwiseLR(Strategy):
    """Discriminative fine-tuning: block ``l`` of ``L`` trains at ``lr * decay**(L-1-l)``, the
    head at ``lr``, the embeddings at ``lr * decay**L`` (Howard & Ruder 2018; Clark et al. 2020).

    Args:
        decay: per-block factor in (0, 1]; 1 is plain fine-tuning.
        pattern: regex whose group 1 is the block index, when automatic detection of the block
            ``nn.ModuleList`` does not fit the model.
    """

    name = "layerwise_lr"
    unsharded_only = None  # lr groups by parameter name: tests/training/test_fsdp.py

    def __init__(self, decay: float = 0.9, pattern: str | None = None) -> None:
        self.decay = _check_decay(decay)
        self.pattern = pattern

    def record_fields(self, model: nn.Module, lr: float, logs: Sequence[TaskLog]) -> dict[str, Any]:
        """``layer_lrs``: ``[{"group": name, "lr": rate}, ...]`` from the head down (the report's
        per-layer learning-rate figure)."""
        groups = self.param_groups(model, lr) or []
        rates = [
            {"group": str(g.get("name", f"group {k}")), "lr": float(g["lr"])}
            for k, g in enumerate(groups)
        ]
        return {"layer_lrs": rates}

    def param_groups(self, model: nn.Module, lr: float) -> list[ParamGroup] | None:
        """:func:`layerwise_param_groups` with this strategy's ``decay`` and ``pattern``."""
        return layerwise_param_groups(model, lr, self.decay, self.pattern)
