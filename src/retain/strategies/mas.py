"""MAS: penalise moving the weights whose change would most change the model's outputs.

Aljundi, Babiloni, Elhoseiny, Rohrbach & Tuytelaars, "Memory Aware Synapses: Learning what
(not) to forget", ECCV 2018. The importance of parameter entry ``i`` after a task is the mean
absolute gradient of the squared L2 norm of the output over the task's samples,

    Ω_i = (1/N) Σ_n |∂ q_n / ∂θ_i|,    q_n = ‖f(x_n)‖²₂

where ``f(x_n)`` is the logits vector of sample ``n`` (a sequence model: ``q_n`` is the mean of
``‖logits‖²`` over the sample's target positions). No label is used: the targets only mark which
positions count, so MAS needs no labelled data and measures sensitivity, not loss. Units of ``Ω``:
squared logits per parameter unit. The penalty is the family's
(:class:`~retain.strategies.importance.ImportancePenalty`)

    R(θ) = λ/2 · Σ_t Σ_i Ω_{t,i} (θ_i − θ*_{t,i})²,

so ``λ`` here is twice the paper's (it writes ``λ Σ Ω (θ − θ*)²``). The paper accumulates one
importance across tasks anchored at the latest weights, which is ``mode="online"`` with
``gamma=1``, the default. Each sample's gradient is exact: one forward per mini-batch, one
``autograd.grad`` per sample (cost about ``samples`` backward passes per task). Under
``torch.distributed`` each rank takes its share of the samples and the sums are all-reduced.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from retain.data.task import IGNORE_INDEX, Task
from retain.distributed import rank_and_world
from retain.errors import RetainError
from retain.strategies.anchored import StorageDtype
from retain.strategies.base import register_strategy
from retain.strategies.importance import ImportancePenalty, check_sampling, rank_share

__all__ = ["MAS", "output_sensitivity"]


@register_strategy("MAS: penalise moving weights the outputs are sensitive to (Aljundi 2018)")
class MAS(ImportancePenalty):
    """Memory Aware Synapses (Aljundi et al. 2018): ``Ω_i = mean_n |∂‖f(x_n)‖²/∂θ_i|``.

    Args:
        strength: ``λ`` of ``R(θ) = λ/2 · Σ_t Σ_i Ω_{t,i} (θ_i − θ*_{t,i})²`` (>= 0).
        mode: ``"online"`` (the paper's) keeps one accumulated ``Ω ← γ·Ω + Ω_t`` anchored at
            the latest weights; ``"separate"`` keeps one ``(Ω_t, θ*_t)`` per task.
        gamma: ``γ`` in (0, 1], the online decay (1: the paper's plain sum).
        normalize: divide each task's ``Ω`` by its maximum or mean (``"none"`` keeps it).
        samples: examples of the task used to estimate ``Ω`` (None: all).
        batch_size: examples per forward pass while estimating ``Ω``.
        params: regular expression choosing the protected parameters (None: every trainable one).
        storage_dtype: dtype of the stored importances and anchors.
        offload: keep the stored tensors in CPU memory.
    """

    name = "mas"
    conflicts: ClassVar[Mapping[str, str]] = {
        "progressive": "progressive freezes all earlier capacity, so MAS has nothing to protect"
    }

    def __init__(
        self,
        strength: float = 1.0,
        mode: Literal["separate", "online"] = "online",
        gamma: float = 1.0,
        normalize: Literal["none", "max", "mean"] = "none",
        samples: int | None = 512,
        batch_size: int = 32,
        params: str | None = None,
        storage_dtype: StorageDtype = "float32",
        offload: bool = False,
    ) -> None:
        self._setup(strength, mode, gamma, normalize, params, storage_dtype, offload)
        self.samples, self.batch_size = check_sampling(
            "mas", ("samples", "batch_size"), samples, batch_size
        )

    def estimate(
        self, model: nn.Module, task: Task, params: Mapping[str, nn.Parameter]
    ) -> dict[str, Tensor]:
        """``Ω_t`` on this rank's share of the task's first ``samples`` examples."""
        return output_sensitivity(
            model, rank_share(task, self.samples), params, batch_size=self.batch_size
        )


def output_sensitivity(
    model: nn.Module, task: Task, params: Mapping[str, nn.Parameter], batch_size: int = 32
) -> dict[str, Tensor]:
    """``{name: (1/N) Σ_n |∂q_n/∂θ|}`` over every example of ``task`` (``q_n`` as in the module
    docstring), float32, shaped like each parameter; the mean over every rank's samples under
    torch.distributed. The model runs in eval mode; its modes are restored."""
    if not task.examples and rank_and_world()[1] == 1:
        raise RetainError(f"task {task.name!r} has no examples to estimate the MAS importance on")
    selected = list(params.values())
    sums = {n: torch.zeros(p.shape, device=p.device) for n, p in params.items()}  # float32
    device = selected[0].device if selected else torch.device("cpu")
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        for start in range(0, len(task.examples), batch_size):
            batch = task.collate(task.examples[start : start + batch_size])
            batch = {k: v.to(device) for k, v in batch.items()}
            logits, targets = task.objective.logits_and_targets(model, batch)
            squares = logits.float().square().sum(dim=-1).reshape(logits.shape[0], -1)
            valid = (targets.reshape(logits.shape[0], -1) != IGNORE_INDEX).to(squares.dtype)
            norms = (squares * valid).sum(dim=1) / valid.sum(dim=1).clamp_min(1.0)
            if not bool(torch.isfinite(norms).all()):
                raise RetainError(
                    f"task {task.name!r}: an output is not finite while estimating the MAS "
                    "importance; check the model and that batch"
                )
            for n in range(norms.shape[0]):
                grads = torch.autograd.grad(
                    norms[n], selected, retain_graph=n + 1 < norms.shape[0], allow_unused=True
                )
                for name, grad in zip(params, grads, strict=True):
                    if grad is not None:
                        sums[name].add_(grad.float().abs())
    finally:
        for module, mode in modes:
            module.training = mode
    count = torch.tensor([float(len(task.examples))], dtype=torch.float64, device=device)
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(count)
        for value in sums.values():
            dist.all_reduce(value)
    return {name: value.div_(float(count.item())) for name, value in sums.items()}
