"""Engine step time, measured side by side in one run (ratios, not absolute times).

Run: ``HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 .venv/bin/python benchmarks/bench_engine.py``
(about 4 minutes on 2 idle cores, most of it section 5's process launches; ``--quick``: about
1.5 minutes; ``--no-distributed`` skips section 5, ``--only-distributed`` runs it alone).
Sections 1-4: permuted MNIST (2 tasks of 4,000 examples), ``MLP(784, [256], 10)``, batch 16, one
thread:

1. step time of each strategy over a plain step (the same ``train_task`` loop, on the second
   task, so every strategy has its memory, anchors or importance): ``l2sp``, ``ewc``, ``mas``,
   ``replay``, ``agem``, ``lora``. Replay's step costs what a plain one does; its task has
   ``1 / (1 − ratio)`` times the examples, so a task costs that many times more steps (column
   "per task");
2. optimizer implementations (``TrainConfig.optimizer_impl``): the whole step and
   ``optimizer.step()`` alone, for-loop vs foreach vs fused AdamW;
3. gradient accumulation: ``grad_accum`` 4 against 1 at the same 64 examples per step;
4. checkpoint write and load (model, AdamW state, strategy state, RNG; SHA-256 checked) as a
   share of one task of ``--task-steps`` steps;
5. FSDP2 against DDP (``engine_dist_child.py``, launched with ``python -m torch.distributed.run
   --nproc-per-node 2`` on gloo, ``OMP_NUM_THREADS=1``, master ports 29700-29799): the same model
   and global batch under torch's ``DistributedDataParallel`` (a hand loop), ``train_task`` on the
   plain model (its step runner all-reduces whole gradients: DDP's arithmetic), FSDP2
   (``fully_shard`` on each ``Linear`` or decoder block, then the root, through ``train_task``),
   FSDP2 with L2-SP and with EWC (on local shards), and one process as the reference; on the MLP
   (global batch 64) and a random 5 M-parameter Llama (hidden 256, 4 layers, vocabulary 2,000,
   16 sequences of 64 tokens). Launches of 2 and 1 processes alternate (each launch runs its
   variants round-robin). The full run adds each rank's peak resident memory (``ru_maxrss``) for
   DDP and FSDP2 on a 31 M-parameter Llama, one launch per variant.

A step's time is the gap between consecutive ``after_step`` hooks inside ``train_task`` (data,
forward, backward, strategy hooks, optimizer), so task-start and task-end work (Fisher
estimation, memory updates) is left out; the strategies' ``on_task_end`` is skipped during the
timed rounds, so every round sees the state the first task left (one EWC or MAS term, not one more
per round). Variants run round-robin, ``--repeats`` rounds of ``--steps`` steps each, and each
variant's median step is reported, so machine noise hits every variant alike.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine_dist_child import FrozenEnd
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
#: The summary of a variant's step times (``--stat``): the median, or a low quantile, which on a
#: busy machine keeps the steps that ran without being descheduled.
STATS: dict[str, Callable[[list[float]], float]] = {
    "median": statistics.median,
    "p10": lambda values: statistics.quantiles(values, n=10, method="inclusive")[0],
    "min": min,
}
stat = STATS["median"]


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
        # every timed round is a train_task call: keep the state the first task left (one EWC or
        # MAS term, A-GEM's and replay's memories) rather than adding to it at each round's end
        self.chain = FrozenEnd(self.chain.strategies)
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
    return {name: stat(values) for name, values in times.items()}


def strategies(quick: bool) -> dict[str, Callable[[], Strategy | None]]:
    made: dict[str, Callable[[], Strategy | None]] = {
        "plain": lambda: None,
        "l2sp": lambda: L2SP(alpha=0.01),
        "ewc": lambda: EWC(strength=100.0, fisher_samples=64),
        "mas": lambda: MAS(strength=1.0, samples=64),
        "replay (ratio 0.5)": lambda: Replay(ratio=0.5, buffer_size=1000),
        "agem (sample 64)": lambda: AGEM(memory_size=256, sample_size=64),
        "agem (64, every 4)": lambda: AGEM(memory_size=256, sample_size=64, reference_every=4),
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
    loop_alone = stat(alone["for_loop"])
    for impl in impls:
        a = stat(alone[impl])
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
        task = stat(variant.steps(min(task_steps, 60))) * task_steps
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
        w, r = stat(writes), stat(loads)
        shares = f"{w * 1e3:9.1f} {w / task:6.1%} {r * 1e3:8.1f} {r / task:6.1%}"
        print(f"   {name:10s} {task:7.2f} {shares}")


CHILD = Path(__file__).with_name("engine_dist_child.py")
#: Rows of section 5: the child's variant name, the label printed, and the world size.
DIST_ROWS = [
    ("retain", "1 process (reference)", 1),
    ("ddp", "DDP (torch)", 2),
    ("retain", "train_task, flat all-reduce", 2),
    ("fsdp2", "FSDP2 (train_task)", 2),
    ("fsdp2+l2sp", "FSDP2 + L2-SP", 2),
    ("fsdp2+ewc", "FSDP2 + EWC", 2),
]


def free_port() -> int:
    """A free TCP port in 29700-29799 on 127.0.0.1 (the range kept for this benchmark)."""
    for port in range(29700, 29800):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 29700-29799")


def launch(world: int, args: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``engine_dist_child.py`` on ``world`` processes (gloo, CPU, one thread each) with
    ``env`` added to the environment and return what its rank 0 wrote."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "result.json"
        command = [sys.executable, str(CHILD), str(out), *args]
        if world > 1:
            runner = ["-m", "torch.distributed.run", f"--nproc-per-node={world}"]
            runner += ["--master-addr=127.0.0.1", f"--master-port={free_port()}"]
            command = [sys.executable, *runner, *command[1:]]
        subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
        result: dict[str, Any] = json.loads(out.read_text())
    return result


def bench_distributed(quick: bool) -> None:
    """FSDP2 against DDP: launches of 2 and 1 processes, alternated ``launches`` times."""
    setups = {  # model: (global batch, steps per round, rounds per launch)
        "mlp": (64, 10 if quick else 30, 2 if quick else 4),
        "llama": (16, 2 if quick else 6, 2 if quick else 3),
    }
    launches = 1 if quick else 2
    common = [f"--setup={m}:{b}:{s}:{r}" for m, (b, s, r) in setups.items()]
    names = ",".join(dict.fromkeys(name for name, _, world in DIST_ROWS if world == 2))
    times: dict[tuple[str, str, int], list[float]] = {}
    for _ in range(launches):
        for world, variants in ((2, names), (1, "retain")):
            result = launch(world, [*common, f"--variants={variants}"])
            for model, by_name in result["times"].items():
                for name, values in by_name.items():
                    times.setdefault((model, name, world), []).extend(values)
    med = {key: stat(values) for key, values in times.items()}
    print(
        "\n5. FSDP2 against DDP: the same model and global batch on 2 processes (gloo, CPU, 1 "
        f"thread each); {launches} launch(es) of each world size, alternated"
    )
    head = "   {:28s}" + " {:>8s} {:>6s} {:>7s}" * len(setups)
    print(head.format("", *itertools.chain(*((m, "", "") for m in setups))))
    print(head.format("variant", *(["ms/step", "x DDP", "x FSDP2"] * len(setups))))
    for name, label, world in DIST_ROWS:
        cells = []
        for model in setups:
            value = med[model, name, world]
            ddp, fsdp = med[model, "ddp", 2], med[model, "fsdp2", 2]
            over = f"{value / fsdp:6.2f}x" if name.startswith("fsdp2+") else ""
            cells += [f"{value * 1e3:8.2f}", f"{value / ddp:5.2f}x", f"{over:>7s}"]
        print(f"   {label:28s} " + " ".join(cells))
    for model, (batch, steps, rounds) in setups.items():
        print(f"   {model}: global batch {batch}, {launches} x {rounds} rounds x {steps} steps")
    if not quick:
        bench_distributed_memory()


def bench_distributed_memory() -> None:
    """Per-rank peak resident memory (one launch per variant) on the wide Llama, with glibc's
    default ``malloc`` and with its mmap threshold fixed at 128 KiB (freed tensors go back to the
    system at once, so the peak is the live tensors' rather than a fragmented heap's)."""
    print(
        "\n   peak resident memory per rank above the imports, MiB: llama-wide (31 M parameters,"
        " 124 MB float32), global batch 8, 3 steps"
    )
    print(f"   {'variant':28s} {'default malloc':>15s} {'mmap threshold 128K':>20s}")
    for name, label, world in DIST_ROWS:
        if name not in ("retain", "ddp", "fsdp2"):
            continue
        cells = []
        for env in ({}, {"MALLOC_MMAP_THRESHOLD_": "131072"}):
            args = ["--setup=llama-wide:8:3:1", f"--variants={name}", "--memory"]
            ranks: list[dict[str, float]] = launch(world, args, env)["memory"]
            cells.append("/".join(f"{r['peak'] - r['base']:.0f}" for r in ranks))
        print(f"   {label:28s} {cells[0]:>15s} {cells[1]:>20s}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="about 30 s: fewer, shorter rounds")
    parser.add_argument("--repeats", type=int, help="interleaved rounds (default 9; quick 3)")
    parser.add_argument("--steps", type=int, help="steps per round (default 60; quick 15)")
    parser.add_argument("--task-steps", type=int, default=250, help="steps of one task (250)")
    parser.add_argument(
        "--stat", choices=list(STATS), default="median", help="summary of step times (median)"
    )
    parser.add_argument("--no-distributed", action="store_true", help="skip section 5")
    parser.add_argument("--only-distributed", action="store_true", help="section 5 alone")
    args = parser.parse_args()
    global stat
    stat = STATS[args.stat]
    repeats = args.repeats or (3 if args.quick else 9)
    steps = args.steps or (15 if args.quick else 60)
    torch.set_num_threads(1)
    start = time.perf_counter()
    print(f"engine benchmark: torch {torch.__version__}, 1 thread, MLP 784-256-10, batch {BATCH}")
    load = " ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"load average {load} at the start; step times summarised by their {args.stat}")
    if not args.only_distributed:
        splits = permuted_image_tasks("mnist", 2, seed=0)
        bench_strategies(splits, steps, repeats, args.quick)
        bench_optimizers(splits, steps, repeats)
        bench_accumulation(splits, steps, repeats)
        bench_checkpoints(splits, args.task_steps, repeats)
    if not args.no_distributed:
        bench_distributed(args.quick)
    load = " ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"\n(total {time.perf_counter() - start:.0f} s; load average {load} at the end)")


if __name__ == "__main__":
    main()
