"""Diagonal Fisher information of a model on a task, with exact per-sample gradients.

Definitions. For a batch, ``logits, targets = task.objective.logits_and_targets(model, batch)``
and the loss of sample ``n`` is ``loss_n = per_sample_loss(logits, targets)[n]``: the
cross-entropy (nats) averaged over that sample's non-ignored positions. Over ``N`` samples the
estimators of the diagonal Fisher (units: nats² per parameter unit², one value per parameter) are

* ``"empirical"``: ``F_i = (1/N) Σ_n (∂loss_n/∂θ_i)²``, the mean of *per-sample* squared
  gradients with the dataset's labels (Kirkpatrick et al., 2017, "Overcoming catastrophic
  forgetting in neural networks", PNAS; Martens, 2020, "New insights and perspectives on the
  natural gradient method", JMLR, §11 on the empirical Fisher).
* ``"true"``: the same, with each non-ignored target replaced by one label sampled from the
  model's own predictive distribution ``softmax(logits)`` at that position (a one-sample Monte
  Carlo estimate of the Fisher information matrix's diagonal, Martens 2020 §5). Labels are drawn
  in one batched step per mini-batch from a ``torch.Generator`` seeded with ``seed + rank``, so
  every engine sees the same labels.
* ``"batch"``: ``F_i = (1/B) Σ_b (∂L̄_b/∂θ_i)²`` over the ``B`` mini-batches, where
  ``L̄_b = (1/|b|) Σ_{n∈b} loss_n`` is the batch mean of the per-sample losses. It is the cheap
  approximation many EWC implementations use. It is *not* the per-sample Fisher: with per-sample
  gradients of mean ``μ_i`` and variance ``σ_i²``, ``E[(∂L̄_b/∂θ_i)²] = μ_i² + σ_i²/|b|`` whereas
  the empirical Fisher is ``μ_i² + σ_i²``; near a minimum (``μ ≈ 0``) it is smaller by about the
  batch size. With ``batch_size=1`` it equals ``"empirical"``.

Worked example: one weight ``w`` and two samples whose gradients are ``+1`` and ``-1``. The
empirical Fisher is ``((+1)² + (-1)²)/2 = 1``; the square of the mean gradient, and the
``"batch"`` estimate with ``batch_size=2``, are ``((+1 - 1)/2)² = 0``. Squaring a batch-mean
gradient instead of per-sample gradients is the classic bug this module avoids.

Engines compute the same per-sample quantities:

* ``"loop"``: one forward and backward per sample (``torch.autograd.grad`` of ``loss_n``);
  exact for any model, and slow.
* ``"hooks"``: one batched forward per micro-batch with hooks on the modules that own the
  selected parameters, gradients of ``Σ_n loss_n`` with respect to those modules' *outputs*
  only, and closed-form per-sample parameter gradients from (input, output gradient) pairs
  (:mod:`retain.diagnostics.per_sample_rules`), squared and summed layer by layer as the
  backward reaches each layer (:mod:`retain.diagnostics.fisher_hooks`). Parameters used several
  times (tied embeddings) get their usages' per-sample gradients summed before squaring.
* ``"auto"``: ``"hooks"``, falling back to ``"loop"`` with a warning when a module cannot be
  handled (a call with several arguments, a parameter used outside its module's own call).

Memory. The hooks engine splits each mini-batch into micro-batches so that the activations it
keeps for the backward pass (the captured inputs, outputs and output gradients, counted twice for
what autograd saves besides them) stay within ``max_memory`` bytes: the first micro-batch has one
sample, and its measured bytes per sample size the next ones. Sums of per-sample squares do not
depend on the split, so the result equals the unsplit one up to float32 rounding (and ``"true"``
draws the same labels on CPU). Output gradients are used and dropped layer by layer, never held
for the whole model, and per-sample gradients of a large weight are built a block of rows at a
time (at most ``min(32 MiB, max_memory / 4)`` bytes: :mod:`retain.diagnostics.blocked_squares`),
so a per-sample gradient of the whole model never exists. Besides the model, the estimate holds
the float32 sums (one copy of the selected parameters) and a working set of about
``max_memory`` bytes, or one sample's activations if that is more (``benchmarks/bench_memory.py``
measures it: BENCHMARKS.md, "Memory").

The model runs in eval mode (dropout off); every module's mode, parameters' ``requires_grad``
and ``.grad`` are restored. Under ``torch.distributed`` the sums and the sample (or batch) count
are all-reduced, so the result is the mean over the samples of every rank.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Literal

import torch
from torch import Tensor, nn

from retain.data.task import IGNORE_INDEX, Batch, Task, per_sample_loss
from retain.diagnostics import per_sample_rules as rules
from retain.diagnostics.fisher_hooks import batch_len, hooks_estimate
from retain.diagnostics.memory_budget import default_budget
from retain.distributed import rank_and_world
from retain.errors import RetainError

__all__ = ["FisherEngine", "FisherEstimator", "estimate_fisher"]

FisherEstimator = Literal["empirical", "true", "batch"]
FisherEngine = Literal["auto", "hooks", "loop"]

_ESTIMATORS = ("empirical", "true", "batch")
_ENGINES = ("auto", "hooks", "loop")
_BLOCK = 32 * 2**20  # bytes of per-sample gradient blocks built at once (at most)


def estimate_fisher(
    model: nn.Module,
    task: Task,
    *,
    estimator: FisherEstimator = "empirical",
    params: Mapping[str, nn.Parameter] | None = None,
    max_samples: int | None = None,
    batch_size: int = 32,
    engine: FisherEngine = "auto",
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    max_memory: int | None = None,
) -> dict[str, Tensor]:
    """Diagonal Fisher ``{name: F}`` of ``model`` on the first ``max_samples`` examples of ``task``.

    ``F`` is float32, shaped and placed like the parameter; see the module docstring for the
    ``"empirical"``, ``"true"`` and ``"batch"`` formulas (Kirkpatrick et al., 2017; Martens,
    2020). ``params`` defaults to every parameter with ``requires_grad`` (names from
    ``model.named_parameters()``); frozen parameters may be passed explicitly. ``engine`` picks
    how exact per-sample gradients are computed (``"batch"`` needs none and ignores it); ``seed``
    seeds the label sampling of ``"true"``; ``progress(done, total)`` is called with the samples
    done after each mini-batch; ``max_memory`` bounds the hooks engine's working set in bytes
    (default: :func:`~retain.diagnostics.memory_budget.default_budget`). Unknown parameter
    names, an empty task and a non-finite loss raise :class:`RetainError`.

    >>> from torch import nn
    >>> examples = [{"input": torch.randn(3), "labels": torch.tensor(i % 2)} for i in range(4)]
    >>> fisher = estimate_fisher(nn.Linear(3, 2), Task("toy", examples))
    >>> {name: tuple(f.shape) for name, f in fisher.items()}
    {'weight': (2, 3), 'bias': (2,)}
    """
    if estimator not in _ESTIMATORS:
        raise RetainError(f"unknown Fisher estimator {estimator!r}; use one of {_ESTIMATORS}")
    if engine not in _ENGINES:
        raise RetainError(f"unknown Fisher engine {engine!r}; use one of {_ENGINES}")
    if batch_size < 1:
        raise RetainError(f"Fisher batch_size must be >= 1, got {batch_size}")
    selected = _select(model, params)
    n_total = len(task.examples) if max_samples is None else min(max_samples, len(task.examples))
    if n_total <= 0:
        raise RetainError(
            f"task {task.name!r} gives no examples for the Fisher (max_samples={max_samples}, "
            f"{len(task.examples)} examples); pass max_samples >= 1 or a non-empty task"
        )
    modes = [(m, m.training) for m in model.modules()]
    frozen = [p for p in selected.values() if not p.requires_grad]
    model.eval()
    for p in frozen:
        p.requires_grad_(True)
    try:
        run = _Run(model, task, selected, estimator, n_total, batch_size, seed)
        run.progress = progress
        run.budget = default_budget(model, max_memory)
        if estimator == "batch":
            sums, count = run.batch_estimate()
        elif engine == "loop":
            sums, count = run.loop_estimate()
        else:
            try:
                sums, count = hooks_estimate(run)
            except rules.HooksUnsupportedError as exc:
                if engine == "hooks":
                    raise RetainError(
                        f"the hooks Fisher engine cannot handle {exc}; pass engine='loop'"
                    ) from None
                warnings.warn(
                    f"hooks Fisher engine cannot handle {exc}; using the per-sample loop",
                    stacklevel=2,
                )
                run = _Run(model, task, selected, estimator, n_total, batch_size, seed)
                run.progress = progress
                sums, count = run.loop_estimate()
    finally:
        for p in frozen:
            p.requires_grad_(False)
        for module, mode in modes:
            module.training = mode
    return _reduce(sums, count)


def _select(model: nn.Module, params: Mapping[str, nn.Parameter] | None) -> dict[str, nn.Parameter]:
    named = dict(model.named_parameters())
    if params is None:
        selected = {n: p for n, p in named.items() if p.requires_grad}
        if not selected:
            raise RetainError(
                f"{type(model).__name__} has no parameter with requires_grad; "
                "pass params={name: parameter} to choose which to estimate"
            )
        return selected
    aliases = dict(model.named_parameters(remove_duplicate=False))  # tied names too
    unknown = [n for n, p in params.items() if n not in aliases or aliases[n] is not p]
    if unknown:
        examples = ", ".join(list(named)[:3])
        raise RetainError(
            f"Fisher params {unknown[:3]} are not parameters of {type(model).__name__} "
            f"(names look like: {examples}); use names from model.named_parameters()"
        )
    if not params:
        raise RetainError("Fisher params is empty; pass None for every trainable parameter")
    if len({id(p) for p in params.values()}) < len(params):
        raise RetainError(
            "Fisher params names one tied parameter twice; pass each parameter under one name"
        )
    return dict(params)


def _reduce(sums: dict[str, Tensor], count: int) -> dict[str, Tensor]:
    """All-reduce the sums and the count under ``torch.distributed``, then divide."""
    total = float(count)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        first = next(iter(sums.values()))
        n = torch.tensor([total], dtype=torch.float64, device=first.device)
        torch.distributed.all_reduce(n)
        total = float(n.item())
        for value in sums.values():
            torch.distributed.all_reduce(value)
    return {name: value.div_(max(total, 1.0)) for name, value in sums.items()}


class _Run:
    """One estimate's settings, data and label generator (shared by the engines)."""

    def __init__(
        self,
        model: nn.Module,
        task: Task,
        selected: dict[str, nn.Parameter],
        estimator: FisherEstimator,
        n_total: int,
        batch_size: int,
        seed: int,
    ) -> None:
        self.model, self.task, self.selected = model, task, selected
        self.estimator, self.n_total, self.batch_size = estimator, n_total, batch_size
        self.seed = seed + rank_and_world()[0]
        first = next(iter(model.parameters()), None)
        self.device = first.device if first is not None else torch.device("cpu")
        self.generator: torch.Generator | None = None
        self.progress: Callable[[int, int], None] | None = None
        self.budget = default_budget(model)
        self.micro = 1  # samples per hooks micro-batch, resized after each one
        self.sums = {
            n: torch.zeros(p.shape, dtype=torch.float32, device=p.device)
            for n, p in selected.items()
        }

    @property
    def block(self) -> int:
        """Bytes of per-sample gradient blocks built at once: ``min(32 MiB, budget / 4)``."""
        return min(_BLOCK, max(1, self.budget // 4))

    def batches(self) -> Iterator[tuple[int, Batch]]:
        """``(index of the first sample, batch on the model's device)`` in order."""
        for start in range(0, self.n_total, self.batch_size):
            stop = min(start + self.batch_size, self.n_total)
            batch = self.task.collate([self.task.examples[i] for i in range(start, stop)])
            yield start, {k: v.to(self.device) for k, v in batch.items()}
            if self.progress is not None:
                self.progress(stop, self.n_total)

    def targets(self, logits: Tensor, targets: Tensor) -> Tensor:
        """The dataset's targets, or for ``"true"`` labels sampled from ``softmax(logits)``."""
        if self.estimator != "true":
            return targets
        if self.generator is None:
            self.generator = torch.Generator(device=logits.device).manual_seed(self.seed)
        valid = targets != IGNORE_INDEX
        probs = torch.softmax(logits.detach()[valid].float(), dim=-1)
        sampled = torch.full_like(targets, IGNORE_INDEX)
        if probs.shape[0] > 0:
            draws = torch.multinomial(probs, 1, generator=self.generator).squeeze(1)
            sampled[valid] = draws.to(sampled.dtype)
        return sampled

    def losses(
        self, batch: Batch, start: int, targets: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Per-sample losses ``[n]`` of ``batch`` and the targets used (``targets`` overrides)."""
        logits, given = self.task.objective.logits_and_targets(self.model, batch)
        chosen = self.targets(logits, given) if targets is None else targets
        losses = per_sample_loss(logits, chosen)
        bad = (~torch.isfinite(losses)).nonzero()
        if bad.numel():
            index = start + int(bad[0, 0])
            raise RetainError(
                f"task {self.task.name!r}: loss of example {index} is "
                f"{float(losses[int(bad[0, 0])].detach())} while estimating the Fisher; "
                "check that example"
            )
        return losses, chosen

    def add_squares(self, grads: tuple[Tensor | None, ...]) -> None:
        for (name, _), grad in zip(self.selected.items(), grads, strict=True):
            if grad is not None:
                dense = grad.to_dense() if grad.is_sparse else grad
                self.sums[name].add_(dense.float().square())

    def loop_estimate(self) -> tuple[dict[str, Tensor], int]:
        """Reference engine: one forward and ``autograd.grad`` per sample."""
        params = list(self.selected.values())
        for start, batch in self.batches():
            n = batch_len(batch)
            sampled = None
            if self.estimator == "true":
                with torch.no_grad():
                    logits, given = self.task.objective.logits_and_targets(self.model, batch)
                    sampled = self.targets(logits, given)
            for i in range(n):
                one = {k: v[i : i + 1] for k, v in batch.items()}
                own = None if sampled is None else sampled[i : i + 1]
                loss = self.losses(one, start + i, own)[0][0]
                self.add_squares(torch.autograd.grad(loss, params, allow_unused=True))
        return self.sums, self.n_total

    def batch_estimate(self) -> tuple[dict[str, Tensor], int]:
        """Squared gradients of each batch's mean per-sample loss."""
        params = list(self.selected.values())
        for start, batch in self.batches():
            loss = self.losses(batch, start)[0].mean()
            self.add_squares(torch.autograd.grad(loss, params, allow_unused=True))
        return self.sums, -(-self.n_total // self.batch_size)
