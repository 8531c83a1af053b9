"""Diagnostics benchmark: retain's implementations against the textbook ones, side by side.

* Fisher overlap over SmolLM2-135M's 134.5M parameters: retain's Bhattacharyya form
  ``Σ √(F_old F_new) / √(Σ F_old Σ F_new)`` accumulated per tensor, against the textbook
  ``1 - ½ Σ (√F̂_old - √F̂_new)²`` on normalised float64 copies of the whole model. The Fishers
  are real: estimated on 8 blocks of general text and of SMS text at the base weights.
* Linear CKA of SmolLM2 hidden states (2,048 tokens of general text, 31 layers of 576 features):
  float32 ``d × d`` products (retain) against float64 products.

Run: ``HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_diagnostics.py``. Prints one table of
times, ratios and agreement.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from retain.assets.datasets import load_dataset
from retain.assets.models import load_model
from retain.data.text import causal_lm_task
from retain.diagnostics.fisher import estimate_fisher
from retain.diagnostics.importance import fisher_overlap
from retain.diagnostics.similarity import hidden_states, linear_cka


def timed(fn: Callable[[], Any], repeats: int = 3) -> tuple[float, Any]:
    """Median seconds of ``repeats`` calls and the last result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2], result


def textbook_overlap(old: dict[str, torch.Tensor], new: dict[str, torch.Tensor]) -> float:
    a = torch.cat([old[n].flatten() for n in old]).double()
    b = torch.cat([new[n].flatten() for n in old]).double()
    return 1.0 - 0.5 * float(((a / a.sum()).sqrt() - (b / b.sum()).sqrt()).square().sum())


def retain_overlap(old: dict[str, torch.Tensor], new: dict[str, torch.Tensor]) -> float:
    root = total_a = total_b = 0.0
    for name in old:
        a, b = old[name], new[name]
        total_a += float(a.sum(dtype=torch.float64))
        total_b += float(b.sum(dtype=torch.float64))
        root += float((a * b).sqrt_().sum(dtype=torch.float64))
    return root / (total_a * total_b) ** 0.5


def fisher_overlap_total(
    old: dict[str, torch.Tensor], new: dict[str, torch.Tensor]
) -> float | None:
    """The figure retain reports (checks that the benchmarked loop is retain's formula)."""
    return fisher_overlap(old, new, scatter_points=1).overlap


def float64_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    xd = x.double() - x.double().mean(0)
    yd = y.double() - y.double().mean(0)
    cross = (yd.T @ xd).square().sum()
    return float(cross / ((xd.T @ xd).square().sum().sqrt() * (yd.T @ yd).square().sum().sqrt()))


def main() -> None:
    torch.manual_seed(0)
    loaded = load_model("smollm2-135m")
    general = [t for t in load_dataset("general_text")["test"]["text"] if t.strip()]
    sms = load_dataset("sms_spam")["train"]["text"]
    old_task = causal_lm_task("general", loaded.tokenizer, general, block_size=128)
    new_task = causal_lm_task("sms", loaded.tokenizer, sms, block_size=128)
    old = estimate_fisher(loaded.model, old_task, max_samples=8, batch_size=8)
    new = estimate_fisher(loaded.model, new_task, max_samples=8, batch_size=8)
    rows = []
    t_retain, v_retain = timed(lambda: retain_overlap(old, new))
    assert abs(v_retain - (fisher_overlap_total(old, new) or 0.0)) < 1e-9
    t_text, v_text = timed(lambda: textbook_overlap(old, new))
    rows.append(
        ("Fisher overlap, 134.5M parameters", t_retain, t_text, abs(v_retain - v_text), v_retain)
    )
    batches = old_task.batches(8, limit=16)
    with torch.no_grad():
        states = [hidden_states(loaded.model, batch) for batch in batches]
    layers = [torch.cat([s[i].reshape(-1, s[i].shape[-1]) for s in states]) for i in range(31)]
    noisy = [x + 0.05 * x.std() * torch.randn_like(x) for x in layers]
    t32, v32 = timed(lambda: [linear_cka(x, y) for x, y in zip(layers, noisy, strict=True)])
    t64, v64 = timed(lambda: [float64_cka(x, y) for x, y in zip(layers, noisy, strict=True)])
    worst = max(abs(a - b) for a, b in zip(v32, v64, strict=True))
    rows.append(("linear CKA, 31 layers x 2,048 tokens x 576", t32, t64, worst, min(v32)))
    print(
        f"{'what':45s} {'retain s':>9s} {'textbook s':>10s} {'speed-up':>8s} "
        f"{'max |diff|':>10s} {'value':>8s}"
    )
    for what, mine, theirs, diff, value in rows:
        print(
            f"{what:45s} {mine:9.2f} {theirs:10.2f} {theirs / mine:7.2f}x {diff:10.1e} {value:8.4f}"
        )


if __name__ == "__main__":
    main()
