"""Engine step time, measured side by side in one run (ratios, not absolute times).

Run: ``HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 .venv/bin/python benchmarks/bench_engine.py``
(about 1 minute on 2 cores; ``--quick``: about 25 s). Permuted MNIST (3 tasks of 4,000
examples), ``MLP(784, [256], 10)``, batch 16, one thread:

1. step time of each strategy over a plain step (the same ``train_task`` loop, on the second
   task, so every strategy has its memory, anchors or importance): ``l2sp``, ``ewc``, ``mas``,
   ``replay``, ``agem``, ``lora``. Replay's step costs what a plain one does; its task has
   ``1 / (1 − ratio)`` times the examples, so a task costs that many times more steps (column
   "per task");
2. optimizer implementations (``TrainConfig.optimizer_impl``): the whole step and
   ``optimizer.step()`` alone, for-loop vs foreach vs fused AdamW;
3. gradient accumulation: ``grad_accum`` 4 against 1 at the same 64 examples per step;
4. checkpoint write and load (model, AdamW state, strategy state, RNG; SHA-256 checked) as a
   share of one task of ``--task-steps`` steps.

A step's time is the gap between consecutive ``after_step`` hooks inside ``train_task`` (data,
forward, backward, strategy hooks, optimizer), so task-start and task-end work (Fisher
estimation, memory updates) is left out. Variants run round-robin, ``--repeats`` rounds of
``--steps`` steps each, and each variant's median step is reported, so machine noise hits every
variant alike.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from retain.assets.mlp import MLP
from retain.data.permuted import TaskSplit, permuted_image_tasks
from retain.data.task import batch_loss
from retain.strategies.agem import AGEM
from retain.strategies.base import Strategy
from retain.strategies.chain import Chain
from retain.strategies.ewc import EWC
from retain.strategies.l2sp import L2SP
from retain.strategies.mas import MAS
from retain.strategies.replay import Replay
from retain.training.checkpoint import load_checkpoint, save_checkpoint
from retain.training.loop import TaskHooks, TrainConfig, make_optimizer, train_task
from retain.training.optimizer_impl import OptimizerImpl

BATCH = 16


class Variant:
    """One model and strategy after the first task, timed on the second task."""

    def __init__(
        self, splits: list[TaskSplit], strategy: Strategy | None, config: TrainConfig
    ) -> None:
        torch.manual_seed(0)
        self.chain = Chain([strategy] if strategy is not None else [])
        self.model = self.chain.prepare(MLP(784, [256], 10))
        self.config = config
        first, second = splits[0].train, splits[1].train
        self.chain.on_task_start(self.model, first)
        train_task(self.model, first, self.chain, replace(config, max_steps=20), progress=False)
        self.task = self.chain.train_data(second, self.model)
        self.chain.on_task_start(self.model, self.task)
        self.examples = len(self.task.examples) / len(second.examples)

    def steps(self, count: int) -> list[float]:
        """Seconds of each of ``count`` steps but the first (which pays the loader's start)."""
        marks: list[float] = []
        hooks = TaskHooks(after_step=lambda *_: marks.append(time.perf_counter()))
        config = replace(self.config, max_steps=count + 1)
        train_task(self.model, self.task, self.chain, config, progress=False, hooks=hooks)
        return [b - a for a, b in itertools.pairwise(marks)]


def interleaved(variants: dict[str, Variant], steps: int, repeats: int) -> dict[str, float]:
    """Median step seconds of each variant over ``repeats`` round-robin rounds."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, variant in variants.items():
            times[name] += variant.steps(steps)
    return {name: statistics.median(values) for name, values in times.items()}


def strategies(quick: bool) -> dict[str, Callable[[], Strategy | None]]:
    made: dict[str, Callable[[], Strategy | None]] = {
        "plain": lambda: None,
        "l2sp": lambda: L2SP(alpha=0.01),
        "ewc": lambda: EWC(strength=100.0, fisher_samples=64),
        "mas": lambda: MAS(strength=1.0, samples=64),
        "replay (ratio 0.5)": lambda: Replay(ratio=0.5, buffer_size=1000),
        "agem (sample 64)": lambda: AGEM(memory_size=256, sample_size=64),
    }
    if not quick:
        made["agem (sample 16)"] = lambda: AGEM(memory_size=256, sample_size=16)
    try:
        from retain.strategies.peft_adapters import LoRA

        made["lora (r 8)"] = lambda: LoRA(r=8, target_modules=["body.0", "head"])
    except ImportError:
        pass
    return made


def bench_strategies(splits: list[TaskSplit], steps: int, repeats: int, quick: bool) -> None:
    config = TrainConfig(lr=1e-3, batch_size=BATCH)
    variants = {name: Variant(splits, make(), config) for name, make in strategies(quick).items()}
    med = interleaved(variants, steps, repeats)
    base = med["plain"]
    print(f"\n1. strategy step time over a plain step ({repeats} rounds x {steps} steps)")
    print(f"   {'strategy':20s} {'ms/step':>8s} {'x plain':>8s} {'per task':>9s}")
    for name, value in med.items():
        per_task = value / base * variants[name].examples
        print(f"   {name:20s} {value * 1e3:8.2f} {value / base:7.2f}x {per_task:8.2f}x")


def optimizer_alone(impl: OptimizerImpl, repeats: int, calls: int) -> list[float]:
    torch.manual_seed(0)
    model = MLP(784, [256], 10)
    optimizer = make_optimizer(model, None, TrainConfig(lr=1e-3, optimizer_impl=impl))
    x, y = torch.randn(BATCH, 784), torch.randint(0, 10, (BATCH,))
    nn.functional.cross_entropy(model(x), y).backward()  # type: ignore[no-untyped-call]
    optimizer.step()
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            optimizer.step()
        out.append((time.perf_counter() - start) / calls)
    return out


def bench_optimizers(splits: list[TaskSplit], steps: int, repeats: int) -> None:
    impls: list[OptimizerImpl] = ["for_loop", "foreach", "fused"]
    variants: dict[str, Variant] = {
        impl: Variant(splits, None, TrainConfig(lr=1e-3, batch_size=BATCH, optimizer_impl=impl))
        for impl in impls
    }
    whole = interleaved(variants, steps, repeats)
    alone: dict[str, list[float]] = {impl: [] for impl in impls}
    for _ in range(repeats):
        for impl in impls:
            alone[impl] += optimizer_alone(impl, 1, 50)
    print(f"\n2. AdamW implementations ({repeats} interleaved rounds)")
    print(f"   {'impl':10s} {'step ms':>8s} {'x loop':>7s} {'opt.step us':>12s} {'x loop':>7s}")
    loop_alone = statistics.median(alone["for_loop"])
    for impl in impls:
        a = statistics.median(alone[impl])
        print(
            f"   {impl:10s} {whole[impl] * 1e3:8.2f} {whole[impl] / whole['for_loop']:6.2f}x "
            f"{a * 1e6:12.0f} {a / loop_alone:6.2f}x"
        )


def bench_accumulation(splits: list[TaskSplit], steps: int, repeats: int) -> None:
    base = TrainConfig(lr=1e-3, batch_size=64)
    variants = {
        f"grad_accum {k}": Variant(splits, None, replace(base, grad_accum=k)) for k in (1, 4)
    }
    med = interleaved(variants, steps, repeats)
    ratio = med["grad_accum 4"] / med["grad_accum 1"]
    print(f"\n3. gradient accumulation, 64 examples per step ({repeats} rounds x {steps} steps)")
    for name, value in med.items():
        print(f"   {name:12s} {value * 1e3:8.2f} ms/step")
    print(f"   overhead of 4 micro-batches: {ratio:.2f}x")


def bench_checkpoints(splits: list[TaskSplit], task_steps: int, repeats: int) -> None:
    config = TrainConfig(lr=1e-3, batch_size=BATCH)
    made: dict[str, Callable[[], Strategy | None]] = {
        "plain": lambda: None,
        "ewc": lambda: EWC(strength=100.0, fisher_samples=64),
        "replay": lambda: Replay(ratio=0.5, buffer_size=1000),
    }
    print(f"\n4. checkpoint write and load as a share of a {task_steps}-step task")
    head = ("strategy", "task s", "write ms", "share", "load ms", "share")
    print("   {:10s} {:>7s} {:>9s} {:>6s} {:>8s} {:>6s}".format(*head))
    for name, make in made.items():
        variant = Variant(splits, make(), config)
        task = statistics.median(variant.steps(min(task_steps, 60))) * task_steps
        optimizer = make_optimizer(variant.model, variant.chain, config)
        batch = variant.task.batches(BATCH)[0]
        loss = batch_loss(variant.task.objective, variant.model, batch)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        writes, loads = [], []
        with tempfile.TemporaryDirectory() as folder:
            for i in range(repeats):
                start = time.perf_counter()
                path = save_checkpoint(
                    Path(folder),
                    model=variant.model,
                    optimizer=optimizer,
                    strategies=variant.chain,
                    position={"global_step": i},
                    keep=1,
                )
                writes.append(time.perf_counter() - start)
                start = time.perf_counter()
                load_checkpoint(
                    path, model=variant.model, optimizer=optimizer, strategies=variant.chain
                )
                loads.append(time.perf_counter() - start)
        w, r = statistics.median(writes), statistics.median(loads)
        shares = f"{w * 1e3:9.1f} {w / task:6.1%} {r * 1e3:8.1f} {r / task:6.1%}"
        print(f"   {name:10s} {task:7.2f} {shares}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="about 30 s: fewer, shorter rounds")
    parser.add_argument("--repeats", type=int, help="interleaved rounds (default 9; quick 3)")
    parser.add_argument("--steps", type=int, help="steps per round (default 60; quick 15)")
    parser.add_argument("--task-steps", type=int, default=250, help="steps of one task (250)")
    args = parser.parse_args()
    repeats = args.repeats or (3 if args.quick else 9)
    steps = args.steps or (15 if args.quick else 60)
    torch.set_num_threads(1)
    start = time.perf_counter()
    splits = permuted_image_tasks("mnist", 2, seed=0)
    print(f"engine benchmark: torch {torch.__version__}, 1 thread, MLP 784-256-10, batch {BATCH}")
    bench_strategies(splits, steps, repeats, args.quick)
    bench_optimizers(splits, steps, repeats)
    bench_accumulation(splits, steps, repeats)
    bench_checkpoints(splits, args.task_steps, repeats)
    print(f"\n(total {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
