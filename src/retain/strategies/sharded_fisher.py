"""The diagonal Fisher of a sharded (FSDP2) model, as this process's shards, with no gather.

The estimators are those of :mod:`retain.diagnostics.fisher` (``"empirical"``: mean over samples
of squared per-sample loss gradients; ``"true"``: the same with labels sampled from the model;
``"batch"``: mean over mini-batches of the squared mini-batch-mean gradient), in nats² per
parameter unit², computed here on a model wrapped with ``torch.distributed.fsdp.fully_shard``.

Why not the unsharded engines: after ``backward`` an FSDP2 gradient is a ``DTensor`` shard of the
*reduce-scattered mean over ranks* of the ranks' gradients. If rank ``r`` back-propagated its own
sample ``n_r``, rank ``r`` would read ``((g_{n_0} + g_{n_1}) / 2)_shard`` and its square is not
``(g_{n_0}² + g_{n_1}²) / 2``: the per-sample squares would be lost (module docstring of
:mod:`retain.diagnostics.fisher`, worked example).

Scheme ("every rank runs every sample", in lockstep): all ranks take the *same* first ``n``
examples of the task and, for each sample (each mini-batch for ``"batch"``), run one forward and
one backward on the sharded model. Every rank then back-propagates the same loss, so the mean over
ranks is that sample's own gradient ``g_n`` and rank ``r`` reads exactly ``(g_n)_shard r``; it
squares it and accumulates into its shard of the sums. No all-reduce is needed at the end (each
rank has seen every sample), and the result equals rows ``shard r`` of the unsharded estimate.
Worked example, 2 ranks, one 4-row weight, samples with gradients ``a`` and ``b``: both ranks run
``a`` (rank 0 reads ``a[0:2]``, rank 1 ``a[2:4]``), then ``b``; rank 0 holds
``(a[0:2]² + b[0:2]²) / 2``, which is rows 0-1 of the one-process ``(a² + b²) / 2``.

This assumes FSDP2's default gradient reduction (the mean over ranks: no
``set_gradient_divide_factor`` on the modules), and labels for ``"true"`` are sampled from a
generator seeded with ``seed`` on every rank (mini-batch by mini-batch, as the one-process
estimate on rank 0 draws them), so all ranks back-propagate the same labels.

Memory per rank: the float32 sums of the selected parameters' *local shards* (their bytes over the
world size), plus what one training step with a batch of one sample needs under FSDP2 (one
layer's unsharded parameters and gradients at a time). Time per rank: that of the one-process
per-sample loop over all ``n`` samples (``n`` forward and backward passes of one sample, each with
an all-gather and a reduce-scatter); the work is repeated on every rank rather than divided.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
from torch import Tensor, nn

from retain.data.task import IGNORE_INDEX, Batch, Task, per_sample_loss
from retain.distributed import local_tensor
from retain.errors import RetainError

__all__ = ["sharded_fisher"]


def sharded_fisher(
    model: nn.Module,
    task: Task,
    params: Mapping[str, nn.Parameter],
    *,
    estimator: Literal["empirical", "true", "batch"] = "empirical",
    max_samples: int | None = None,
    batch_size: int = 32,
    seed: int = 0,
) -> dict[str, Tensor]:
    """This process's shards of the diagonal Fisher of ``params`` on the first ``max_samples``
    examples of ``task`` (None: all), by the scheme of the module docstring.

    Every rank must call it with the same ``task``, ``max_samples`` and ``batch_size``. The
    result maps each name to a float32 tensor shaped like the parameter's local shard. The model
    runs in eval mode; modes and ``.grad`` are restored. A frozen parameter in ``params``, an
    empty task and a non-finite loss raise :class:`RetainError`.
    """
    frozen = [n for n, p in params.items() if not p.requires_grad]
    if frozen:
        raise RetainError(
            f"Fisher of a sharded model needs trainable parameters, but {frozen[0]!r} is frozen; "
            "select trainable parameters only"
        )
    examples = task.examples
    n = len(examples) if max_samples is None else min(max_samples, len(examples))
    if n <= 0:
        raise RetainError(f"task {task.name!r} gives no examples for the Fisher; pass a task")
    every = list(model.parameters())
    saved = [p.grad for p in every]
    modes = [(m, m.training) for m in model.modules()]
    sums = {
        name: torch.zeros_like(local_tensor(p), dtype=torch.float32) for name, p in params.items()
    }
    device = every[0].device
    generator: torch.Generator | None = None
    count = 0
    model.eval()
    try:
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            batch = {k: v.to(device) for k, v in task.collate(examples[start:stop]).items()}
            if estimator == "batch":
                _backward(model, task, batch, None, start, every)
                _accumulate(sums, params)
                count += 1
                continue
            sampled = None
            if estimator == "true":
                if generator is None:
                    generator = torch.Generator(device=device).manual_seed(seed)
                with torch.no_grad():
                    logits, given = task.objective.logits_and_targets(model, batch)
                sampled = _sample(logits, given, generator)
            for k in range(stop - start):
                one = {key: value[k : k + 1] for key, value in batch.items()}
                chosen = None if sampled is None else sampled[k : k + 1]
                _backward(model, task, one, chosen, start + k, every)
                _accumulate(sums, params)
                count += 1
    finally:
        for p, grad in zip(every, saved, strict=True):
            p.grad = grad
        for module, mode in modes:
            module.training = mode
    return {name: value.div_(count) for name, value in sums.items()}


def _backward(
    model: nn.Module,
    task: Task,
    batch: Batch,
    targets: Tensor | None,
    first: int,
    every: list[nn.Parameter],
) -> None:
    """Clear the gradients, then back-propagate the mean per-sample loss of ``batch``."""
    for p in every:
        p.grad = None
    logits, given = task.objective.logits_and_targets(model, batch)
    losses = per_sample_loss(logits, given if targets is None else targets)
    bad = (~torch.isfinite(losses.detach())).nonzero()
    if bad.numel():
        raise RetainError(
            f"task {task.name!r}: loss of example {first + int(bad[0, 0])} is not finite while "
            "estimating the Fisher; check that example"
        )
    losses.mean().backward()  # type: ignore[no-untyped-call]


def _accumulate(sums: dict[str, Tensor], params: Mapping[str, nn.Parameter]) -> None:
    """``sums[name] += (local shard of the gradient)²`` (a parameter with no gradient adds 0)."""
    with torch.no_grad():
        for name, p in params.items():
            if p.grad is not None:
                grad = local_tensor(p.grad).float()
                sums[name].addcmul_(grad, grad)


def _sample(logits: Tensor, targets: Tensor, generator: torch.Generator) -> Tensor:
    """One label per non-ignored position from ``softmax(logits)`` (as the unsharded estimate)."""
    valid = targets != IGNORE_INDEX
    probs = torch.softmax(logits.detach()[valid].float(), dim=-1)
    sampled = torch.full_like(targets, IGNORE_INDEX)
    if probs.shape[0] > 0:
        draws = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        sampled[valid] = draws.to(sampled.dtype)
    return sampled
