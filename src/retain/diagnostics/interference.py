"""Gradient interference between a new task and a prior capability, per layer and overall.

For gradients ``g_new`` (of the new task's loss) and ``g_old`` (of the prior capability's loss)
over the same parameters, the interference of a group ``G`` (a layer, or the whole model) is

    cos_G = <g_new,G, g_old,G> / (||g_new,G|| · ||g_old,G||)

in ``[-1, 1]`` (None when either norm is 0). A negative cosine means a step along ``-g_new``
increases the prior loss to first order (Lopez-Paz & Ranzato, 2017, "Gradient episodic memory",
NeurIPS; Yu et al., 2020, "Gradient surgery for multi-task learning", NeurIPS): the gradients
*conflict*. Layers are named by :func:`retain.diagnostics.drift.layer_of` on PEFT-free names.

* :func:`gradient_interference`: at a fixed model, ``batches`` pairs of mini-batches (new batch
  ``i``, prior batch ``i``), each pair's overall cosine, the fraction of pairs that conflict, and
  the per-layer cosine of the mean gradients.
* :class:`InterferenceTracker`: during training (a strategy placed first in the chain, so it sees
  the task gradient after clipping and before any strategy changes it), every ``every``-th
  optimizer step compares the step's gradient with the gradient of the prior capability on a
  fixed reference sample (computed in eval mode, without touching ``.grad``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from retain.data.task import Task, batch_loss
from retain.data.task_heads import tag_with_head
from retain.diagnostics.drift import layer_of, plain_name
from retain.errors import RetainError
from retain.evaluation.base import model_device
from retain.strategies.base import StateDict, Strategy

__all__ = [
    "InterferenceReport",
    "InterferenceTracker",
    "gradient_cosines",
    "gradient_interference",
    "task_gradient",
]


def _cos(dot: float, a: float, b: float) -> float | None:
    return dot / (a**0.5 * b**0.5) if a > 0 and b > 0 else None


def gradient_cosines(
    new: Mapping[str, Tensor], old: Mapping[str, Tensor]
) -> tuple[float | None, dict[str, float | None]]:
    """``(overall cosine, {layer: cosine})`` of two gradients over the names both have.

    >>> g = {"a.0.w": torch.tensor([1.0, 2.0]), "a.1.w": torch.tensor([3.0])}
    >>> gradient_cosines(g, g)[0]
    1.0
    """
    sums: dict[str, list[float]] = {}
    for name, a in new.items():
        b = old.get(name)
        if b is None:
            continue
        x, y = a.detach().double(), b.detach().to(a.device).double()
        row = sums.setdefault(layer_of(plain_name(name)), [0.0, 0.0, 0.0])
        row[0] += float((x * y).sum())
        row[1] += float(x.square().sum())
        row[2] += float(y.square().sum())
    if not sums:
        raise RetainError("the two gradients share no parameter name; compare the same model")
    total = [sum(r[k] for r in sums.values()) for k in range(3)]
    return _cos(*total), {layer: _cos(*r) for layer, r in sums.items()}


def _trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if not named:
        raise RetainError(f"{type(model).__name__} has no parameter with requires_grad")
    return named


def task_gradient(
    model: nn.Module,
    tasks: Task | Sequence[Task],
    params: Mapping[str, nn.Parameter] | None = None,
    *,
    batch_size: int = 16,
) -> dict[str, Tensor]:
    """Gradient of the mean loss over ``tasks`` (each the mean over its examples, in batches of
    ``batch_size`` weighted by size), in eval mode; ``.grad`` is left untouched.
    """
    chosen = dict(params) if params is not None else _trainable(model)
    tasks = [tasks] if isinstance(tasks, Task) else list(tasks)
    if not tasks:
        raise RetainError("task_gradient needs at least one task")
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    device = model_device(model)
    total = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in chosen.items()}
    try:
        for task in tasks:
            n = len(task.examples)
            for batch in task.batches(batch_size):
                size = int(next(iter(batch.values())).shape[0])
                on = {k: v.to(device) for k, v in batch.items()}
                loss = batch_loss(task.objective, model, on) * (size / n / len(tasks))
                grads = torch.autograd.grad(loss, list(chosen.values()), allow_unused=True)
                for name, grad in zip(chosen, grads, strict=True):
                    if grad is not None:
                        total[name].add_(grad.float())
    finally:
        for module, mode in modes:
            module.training = mode
    return total


@dataclass(frozen=True)
class InterferenceReport:
    """Gradient interference at one model (see the module docstring).

    Attributes:
        cosine: overall cosine of the mean new-task and mean prior gradients.
        layers: ``{layer: cosine}`` of the mean gradients.
        pair_cosines: overall cosine of each (new batch, prior batch) pair.
        conflicting: fraction of pairs with a negative cosine.
        layer_conflicting: ``{layer: fraction of pairs whose layer cosine is negative}``.
    """

    cosine: float | None
    layers: dict[str, float | None]
    pair_cosines: list[float | None]
    conflicting: float
    layer_conflicting: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return asdict(self)


def gradient_interference(
    model: nn.Module,
    new_task: Task,
    prior_task: Task,
    *,
    batches: int = 8,
    batch_size: int = 8,
    params: Mapping[str, nn.Parameter] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> InterferenceReport:
    """Interference of ``new_task`` with ``prior_task`` at ``model``'s current weights, over
    ``batches`` pairs of consecutive mini-batches of ``batch_size`` examples each;
    ``progress(done, total)`` is called after each pair."""
    if batches < 1 or batch_size < 1:
        raise RetainError(f"batches and batch_size must be >= 1, got {batches} and {batch_size}")
    chosen = dict(params) if params is not None else _trainable(model)
    new_batches = [
        new_task.with_examples(new_task.examples[i * batch_size : (i + 1) * batch_size])
        for i in range(batches)
        if i * batch_size < len(new_task.examples)
    ]
    old_batches = [
        prior_task.with_examples(prior_task.examples[i * batch_size : (i + 1) * batch_size])
        for i in range(batches)
        if i * batch_size < len(prior_task.examples)
    ]
    pairs = min(len(new_batches), len(old_batches))
    mean_new = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in chosen.items()}
    mean_old = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in chosen.items()}
    pair_cosines: list[float | None] = []
    negative: dict[str, int] = {}
    for k, (a, b) in enumerate(zip(new_batches[:pairs], old_batches[:pairs], strict=True)):
        g_new = task_gradient(model, a, chosen, batch_size=batch_size)
        g_old = task_gradient(model, b, chosen, batch_size=batch_size)
        overall, layers = gradient_cosines(g_new, g_old)
        pair_cosines.append(overall)
        for layer, value in layers.items():
            negative[layer] = negative.get(layer, 0) + int(value is not None and value < 0)
        for name in chosen:
            mean_new[name].add_(g_new[name], alpha=1 / pairs)
            mean_old[name].add_(g_old[name], alpha=1 / pairs)
        if progress is not None:
            progress(k + 1, pairs)
    cosine, layers = gradient_cosines(mean_new, mean_old)
    conflicting = sum(1 for c in pair_cosines if c is not None and c < 0) / max(pairs, 1)
    return InterferenceReport(
        cosine=cosine,
        layers=layers,
        pair_cosines=pair_cosines,
        conflicting=conflicting,
        layer_conflicting={layer: count / max(pairs, 1) for layer, count in negative.items()},
    )


class InterferenceTracker(Strategy):
    """Records gradient interference with a prior capability during training.

    Place it *first* in the strategy chain. The prior capability is ``prior`` (e.g. general text
    for a language model) when given, else the tasks of ``tasks`` that come before the current
    one (the first task then has nothing to compare with and is not measured). Each reference is
    the first ``samples`` examples of its task, routed through its own head. Every ``every``-th
    optimizer step costs one extra forward and backward over the reference examples.

    :attr:`records` lists ``{"task", "step", "global_step", "cosine", "layers"}`` dictionaries
    (``layers`` maps layer names to cosines); :meth:`summary` gives the conflicting fraction.
    """

    name = "interference"

    def __init__(
        self,
        every: int = 10,
        samples: int = 16,
        *,
        prior: Task | None = None,
        tasks: Iterable[Task] = (),
        batch_size: int = 16,
    ) -> None:
        if every < 1 or samples < 1 or batch_size < 1:
            raise RetainError(
                f"interference every, samples and batch_size must be >= 1, got {every}, "
                f"{samples} and {batch_size}"
            )
        self.every, self.samples, self.batch_size = every, samples, batch_size
        self.prior = prior
        self.tasks = list(tasks)
        if prior is None and not self.tasks:
            raise RetainError("InterferenceTracker needs prior= (a Task) or tasks= (the sequence)")
        self.records: list[dict[str, Any]] = []
        self.task_name = ""
        self.task_step = 0
        self.global_step = 0
        self._reference: list[Task] = []

    def on_task_start(self, model: nn.Module, task: Task) -> None:
        self.task_name, self.task_step = task.name, 0
        if self.prior is not None:
            self._reference = [self.prior.with_examples(self.prior.examples[: self.samples])]
            return
        names = [t.name for t in self.tasks]
        earlier = self.tasks[: names.index(task.name)] if task.name in names else []
        self._reference = [
            t.with_examples(tag_with_head(model, t.name, list(t.examples[: self.samples])))
            for t in earlier
        ]

    def after_backward(self, model: nn.Module) -> None:
        if not self._reference or (self.task_step + 1) % self.every:
            return
        inner = getattr(model, "module", model)  # DDP/Accelerate: gradients are already synced
        params = {
            n: p for n, p in inner.named_parameters() if p.requires_grad and p.grad is not None
        }
        if not params:
            return
        current = {n: p.grad.detach() for n, p in params.items() if p.grad is not None}
        reference = task_gradient(inner, self._reference, params, batch_size=self.batch_size)
        overall, layers = gradient_cosines(current, reference)
        self.records.append(
            {
                "task": self.task_name,
                "step": self.task_step + 1,
                "global_step": self.global_step + 1,
                "cosine": overall,
                "layers": layers,
            }
        )

    def describe(self) -> str:
        """``interference(every=..., samples=..., prior=...)``, without the reference data."""
        prior = self.prior.name if self.prior is not None else "earlier tasks"
        return f"interference(every={self.every}, samples={self.samples}, prior={prior!r})"

    def on_step(self, step: int, model: nn.Module) -> None:
        self.task_step = step
        self.global_step += 1

    def summary(self) -> dict[str, Any]:
        """``{"measured", "conflicting", "mean_cosine", "layers": {layer: mean cosine}}``."""
        values = [r["cosine"] for r in self.records if r["cosine"] is not None]
        layer_values: dict[str, list[float]] = {}
        for record in self.records:
            for layer, value in record["layers"].items():
                if value is not None:
                    layer_values.setdefault(layer, []).append(value)
        return {
            "measured": len(values),
            "conflicting": sum(v < 0 for v in values) / len(values) if values else None,
            "mean_cosine": sum(values) / len(values) if values else None,
            "layers": {k: sum(v) / len(v) for k, v in layer_values.items()},
        }

    def state_dict(self) -> StateDict:
        import json

        return {
            "records": json.dumps(self.records),
            "task_step": self.task_step,
            "global_step": self.global_step,
        }

    def load_state_dict(self, state: StateDict) -> None:
        import json

        self.records = json.loads(str(state["records"]))
        self.task_step = int(state["task_step"])
        self.global_step = int(state["global_step"])
