"""One launch of section 5 of ``bench_engine.py``: data-parallel step time and peak memory.

``bench_engine.py`` runs it as ``python -m torch.distributed.run --nproc-per-node 2
--master-addr 127.0.0.1 --master-port P engine_dist_child.py OUT.json ...`` (gloo on CPU,
``OMP_NUM_THREADS=1``) or as a plain ``python engine_dist_child.py OUT.json ...`` (one process).
Every variant trains the same model from the same seed on the same global batch:

- ``retain``: :func:`retain.training.loop.train_task` on the plain model. Its
  :class:`~retain.training.steps.StepRunner` all-reduces the whole gradients in one flat buffer
  after backward (DDP's arithmetic, no overlap with backward); in one process it is the plain
  ``batch_loss(...).backward()`` step, the reference.
- ``ddp``: ``torch.nn.parallel.DistributedDataParallel`` and a hand loop: each rank's half of the
  global batch, ``loss = W · Σ ℓ / N`` (DDP averages over the ``W`` ranks), ``backward`` (bucketed
  all-reduce overlapping it), the same fused AdamW, ``zero_grad``; the loss is read with
  ``.item()`` but not all-reduced.
- ``fsdp2``, ``fsdp2+l2sp``, ``fsdp2+ewc``: ``fully_shard`` on each decoder block (Llama) or
  each ``Linear`` (MLP), then the root, trained by ``train_task`` (the step runner leaves the
  reduce-scatter to FSDP2; AdamW is foreach because fused kernels have no ``DTensor`` rule);
  L2-SP and EWC (empirical Fisher) act on the local shards.

Each variant first trains ``--warm`` steps of a first task through ``train_task`` (so L2-SP has
its anchor and EWC its Fisher, estimated on the sharded weights) and is then timed on a second
task: ``--repeats`` round-robin rounds over the variants of ``--steps`` steps each; a step's time
is the gap between consecutive ``after_step`` hooks (the first step of a round, which starts the
loader, is left out). During the timed rounds the strategies' ``on_task_end`` is skipped, so their
state (one EWC term) stays what the first task left. Rank 0 writes each variant's step seconds.

``--memory`` runs one variant ``--steps`` steps and writes each rank's ``ru_maxrss`` after the
imports and data (before the model is built) and at the end (its peak; in MiB). The peak of a
sharded run includes building the whole model once on every rank before ``fully_shard``.

Models: ``mlp``: ``MLP(784, [256], 10)`` on permuted MNIST; ``llama``: a random
``LlamaForCausalLM`` (hidden 256, 4 layers, 8 heads, 4 key-value heads, MLP 1024, vocabulary
2,000, untied embeddings; 5.2 M parameters) on random 64-token sequences; ``llama-wide``:
hidden 512, 8 layers, MLP 1376, vocabulary 8,000 (31 M parameters), for memory.
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from retain.data.task import CausalLM, Task, pad_collate, summed_loss, target_count
from retain.distributed import init_distributed, rank_and_world
from retain.strategies.base import Strategy
from retain.strategies.chain import Chain
from retain.strategies.ewc import EWC
from retain.strategies.l2sp import L2SP
from retain.training.loop import TaskHooks, TrainConfig, make_optimizer, train_task

VARIANTS = ("retain", "ddp", "fsdp2", "fsdp2+l2sp", "fsdp2+ewc")
#: Random Llamas by name: (hidden size, layers, MLP size, vocabulary).
LLAMAS: dict[str, tuple[int, int, int, int]] = {
    "llama": (256, 4, 1024, 2000),
    "llama-wide": (512, 8, 1376, 8000),
}
SEQ = 64


class FrozenEnd(Chain):
    """The same strategies with ``on_task_end`` skipped: repeated timing rounds leave the state
    (anchors, Fisher terms) as the first task left it instead of adding a term per round."""

    def on_task_end(self, model: nn.Module, task: Task) -> None:
        return None


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    if name == "mlp":
        from retain.assets.mlp import MLP

        return MLP(784, [256], 10)
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, layers, mlp, vocab = LLAMAS[name]
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        intermediate_size=mlp,
        num_attention_heads=hidden // 32,
        num_key_value_heads=hidden // 64,
        max_position_embeddings=SEQ,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config)


def tasks(name: str, size: int) -> list[Task]:
    """Two tasks of at least ``size`` examples."""
    if name == "mlp":
        from retain.data.permuted import permuted_image_tasks

        return [s.train for s in permuted_image_tasks("mnist", 2, seed=0)]
    vocab = LLAMAS[name][3]
    out = []
    for t in range(2):
        generator = torch.Generator().manual_seed(10 + t)
        ids = torch.randint(3, vocab, (size, SEQ), generator=generator)
        examples = [{"input_ids": ids[i], "labels": ids[i].clone()} for i in range(size)]
        out.append(Task(f"lm{t}", examples, CausalLM(), pad_collate(0)))
    return out


def shard(model: nn.Module) -> None:
    """``fully_shard`` on each decoder block, or each ``Linear`` of a model without blocks, then
    the root."""
    from torch.distributed.fsdp import fully_shard

    blocks = [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")]
    for module in blocks or [m for m in model.modules() if isinstance(m, nn.Linear)]:
        fully_shard(module)
    fully_shard(model)


def strategies_of(variant: str) -> list[Strategy]:
    if variant.endswith("+l2sp"):
        return [L2SP(alpha=0.01)]
    if variant.endswith("+ewc"):
        return [EWC(strength=100.0, fisher="empirical", fisher_samples=16, fisher_batch_size=8)]
    return []


class Variant:
    """One model under one data-parallel scheme, after ``warm`` steps of the first task."""

    def __init__(
        self, variant: str, model_name: str, data: list[Task], config: TrainConfig, warm: int
    ) -> None:
        self.name, self.config = variant, config
        chain = Chain(strategies_of(variant))
        model = chain.prepare(build(model_name))
        self.ddp: nn.Module | None = None
        if variant.startswith("fsdp2"):
            shard(model)
        elif variant == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            self.ddp = DistributedDataParallel(model)
        self.model = model
        if warm:
            train_task(model, data[0], chain, replace(config, max_steps=warm), progress=False)
        self.chain = FrozenEnd(chain.strategies)
        self.task = data[1]

    def steps(self, count: int) -> list[float]:
        """Seconds of each of ``count`` steps but the first."""
        marks: list[float] = []
        config = replace(self.config, max_steps=count + 1)
        if self.ddp is not None:
            hand_loop(self.ddp, self.task, config, lambda: marks.append(time.perf_counter()))
        else:
            hooks = TaskHooks(after_step=lambda *_: marks.append(time.perf_counter()))
            train_task(self.model, self.task, self.chain, config, progress=False, hooks=hooks)
        return [b - a for a, b in itertools.pairwise(marks)]


def hand_loop(model: nn.Module, task: Task, config: TrainConfig, mark: Callable[[], None]) -> None:
    """A plain DDP training loop over the same global batches as ``train_task``."""
    rank, world = rank_and_world()
    optimizer = make_optimizer(model, None, config)
    generator = torch.Generator().manual_seed(config.seed)
    loader: DataLoader[int] = DataLoader(
        range(len(task.examples)),  # type: ignore[arg-type]
        batch_size=config.batch_size,
        shuffle=True,
        generator=generator,
    )
    model.train()
    for step, indices in enumerate(loader, start=1):
        if config.max_steps is not None and step > config.max_steps:
            break
        chosen = indices.tolist()
        size = -(-len(chosen) // world)
        whole = task.collate([task.examples[i] for i in chosen])
        batch = task.collate([task.examples[i] for i in chosen[rank * size : (rank + 1) * size]])
        logits, targets = task.objective.logits_and_targets(model, batch)
        loss = summed_loss(logits, targets) * world / target_count(task.objective, whole)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        float(loss.item())
        mark()


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def gather(value: Any) -> list[Any]:
    """``value`` of every rank (rank order)."""
    _, world = rank_and_world()
    if world == 1:
        return [value]
    out: list[Any] = [None] * world
    torch.distributed.all_gather_object(out, value)
    return out


def setup(text: str) -> tuple[str, int, int, int]:
    """``MODEL:BATCH:STEPS:ROUNDS`` (global batch, steps per round, timed rounds)."""
    model, batch, steps, rounds = text.split(":")
    if model != "mlp" and model not in LLAMAS:
        raise argparse.ArgumentTypeError(f"unknown model {model!r}")
    return model, int(batch), int(steps), int(rounds)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument(
        "--setup", type=setup, action="append", required=True, help="MODEL:BATCH:STEPS:ROUNDS"
    )
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--warm", type=int, default=3, help="first-task steps")
    parser.add_argument("--memory", action="store_true", help="peak memory of one variant")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rank, world = init_distributed()
    names = args.variants.split(",")
    result: dict[str, Any] = {"world": world}
    if args.memory:
        ((model, batch, steps, _),) = args.setup
        (name,) = names
        if model != "mlp":
            from transformers import LlamaForCausalLM  # noqa: F401  (its imports before the base)
        data = tasks(model, (steps + 2) * batch)
        base = peak_mib()
        variant = Variant(name, model, data, _config(batch), 0)
        variant.steps(steps)
        result["memory"] = gather({"base": base, "peak": peak_mib()})
    else:
        result["times"] = {}
        for model, batch, steps, rounds in args.setup:
            data = tasks(model, (steps + 2) * batch)
            variants = {n: Variant(n, model, data, _config(batch), args.warm) for n in names}
            times: dict[str, list[float]] = {n: [] for n in names}
            for _ in range(rounds):
                for n, variant in variants.items():
                    times[n] += variant.steps(steps)
            result["times"][model] = times
    if rank == 0:
        args.out.write_text(json.dumps(result))
    if world > 1:
        torch.distributed.destroy_process_group()


def _config(batch: int) -> TrainConfig:
    """AdamW (``optimizer_impl`` auto), ``batch`` examples per step; random tokens may not
    learn, so the divergence rule is off."""
    return TrainConfig(lr=1e-3, batch_size=batch, seed=0, divergence_factor=None)


if __name__ == "__main__":
    main()
