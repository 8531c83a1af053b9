"""Two tasks with a strategy on an FSDP2-sharded model, run by ``test_fsdp.py``.

``python fsdp_child.py OUT VARIANT...`` trains the plain model in one process;
``torchrun --nproc-per-node 2 fsdp_child.py OUT VARIANT...`` shards it with ``fully_shard``
(gloo, CPU): every ``Linear`` of an MLP, or every decoder block of a tiny Llama (``llama_*``
variants, causal-LM tasks), then the root. Each ``VARIANT`` names strategies (:data:`VARIANTS`)
and gets a fresh model, prepared by the strategies (LoRA wraps it in PEFT) before it is
sharded. The main process writes the whole weights to
``OUT/VARIANT/weights.safetensors`` and the final penalty value and per-step losses to
``OUT/VARIANT/result.json``.

The loop calls the strategy hooks in the order of :func:`retain.training.loop.train_task`
(``begin_task``, the optimizer, per step: backward, ``after_backward``, ``step``,
``zero_grad``, ``on_step``; then ``on_task_end``). It is written out here because ``train_task``'s
:class:`~retain.training.steps.StepRunner` all-reduces whole gradients itself, which an FSDP2
module (whose gradients are reduce-scattered shards) does not need. Each rank back-propagates
``W · Σ_{its targets} ℓ / N`` (``N``: the global batch's targets; FSDP2 averages over the ``W``
ranks), which gives the gradient of the global batch's mean loss, as one process does. The
optimizer is built here with ``foreach=True``: :func:`~retain.training.loop.make_optimizer` leaves
the choice to torch, which picks the fused CPU SGD kernel that ``DTensor`` does not implement.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor
from torch.optim import Optimizer
from torch.utils.data import DataLoader

from retain.assets.mlp import MLP
from retain.data.permuted import permuted_image_tasks
from retain.data.task import CausalLM, Task, pad_collate, summed_loss, target_count
from retain.distributed import init_distributed, rank_and_world
from retain.strategies.agem import AGEM
from retain.strategies.base import Strategy
from retain.strategies.chain import chain
from retain.strategies.ewc import EWC
from retain.strategies.freeze import Freeze
from retain.strategies.l2sp import L2SP
from retain.strategies.layerwise_lr import LayerwiseLR
from retain.strategies.peft_adapters import LoRA
from retain.strategies.replay import Replay
from retain.strategies.warmup import Warmup
from retain.training.loop import TrainConfig

#: Strategies by variant name (built fresh for each run); ``none`` is plain fine-tuning.
VARIANTS: dict[str, Callable[[], list[Strategy]]] = {
    "none": lambda: [],
    "l2sp": lambda: [L2SP(alpha=0.5)],
    "l2sp_task_start": lambda: [L2SP(alpha=0.5, anchor="task_start", params="body")],
    "ewc": lambda: [EWC(strength=100.0, fisher_samples=64, fisher_batch_size=16)],
    "ewc_online_true_max": lambda: [
        EWC(
            strength=2.0,
            fisher="true",
            mode="online",
            gamma=0.5,
            normalize="max",
            fisher_samples=48,
            fisher_batch_size=16,
        )
    ],
    "llama_none": lambda: [],
    "llama_l2sp": lambda: [L2SP(alpha=0.5)],
    "llama_ewc": lambda: [EWC(strength=1000.0, fisher_samples=12, fisher_batch_size=5)],
    "loop_none": lambda: [],
    "loop_l2sp": lambda: [L2SP(alpha=0.5)],
    "loop_ewc": lambda: [EWC(strength=100.0, fisher_samples=64, fisher_batch_size=16)],
    "agem": lambda: [AGEM(memory_size=64, sample_size=21, seed=1)],
    "agem_every_3": lambda: [AGEM(memory_size=64, sample_size=16, seed=1, reference_every=3)],
    "replay": lambda: [Replay(ratio=0.3, buffer_size=50, seed=1)],
    "loop_agem": lambda: [AGEM(memory_size=64, sample_size=21, seed=1)],
    "loop_replay": lambda: [Replay(ratio=0.3, buffer_size=50, seed=1)],
    "llama_agem": lambda: [AGEM(memory_size=32, sample_size=9, seed=1)],
    "llama_lora": lambda: [LoRA(r=4, alpha=8, target_modules=["q_proj", "v_proj", "up_proj"])],
    "loop_llama_lora": lambda: [LoRA(r=4, alpha=8, target_modules=["q_proj", "v_proj"])],
    "freeze": lambda: [Freeze("body.0")],
    "loop_llama_none": lambda: [],
    "loop_llama_layerwise_warmup": lambda: [LayerwiseLR(decay=0.5), Warmup(warmup_steps=3)],
    "ewc_batch_mean": lambda: [
        EWC(
            strength=0.002, fisher="batch", normalize="mean", fisher_samples=40, fisher_batch_size=8
        )
    ],
}


def _optimizer(model: torch.nn.Module, strategy: Strategy, config: TrainConfig) -> Optimizer:
    """:func:`~retain.training.loop.make_optimizer`'s SGD with ``foreach=True`` (see above)."""
    groups = strategy.param_groups(model, config.lr)
    if groups is None:
        groups = [{"params": [p for p in model.parameters() if p.requires_grad]}]
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, foreach=True)


def main() -> None:
    out, variants = Path(sys.argv[1]), sys.argv[2:]
    torch.set_num_threads(1)
    rank, _ = init_distributed()
    for variant in variants:
        weights, result = train(variant)
        if rank == 0:
            (out / variant).mkdir(parents=True, exist_ok=True)
            save_file(weights, out / variant / "weights.safetensors")
            (out / variant / "result.json").write_text(json.dumps(result))
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def train(variant: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Train two tasks with ``VARIANTS[variant]``: the whole weights, the final penalty and the
    per-step losses."""
    rank, world = rank_and_world()
    model, tasks = _llama() if "llama" in variant else _mlp()
    if "agem" in variant:
        tasks = [tasks[0], _one_label(tasks[0])]
    strategies = chain(*VARIANTS[variant]())
    model = strategies.prepare(model)
    if world > 1:
        from torch.distributed.fsdp import fully_shard

        blocks = [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")]
        for module in blocks or [m for m in model.modules() if isinstance(m, torch.nn.Linear)]:
            fully_shard(module)  # each decoder block (Llama) or each Linear (MLP), then the root
        fully_shard(model)
    config = TrainConfig(lr=0.1, batch_size=32, optimizer="sgd", momentum=0.9, seed=3)
    if variant.startswith("loop_"):  # retain's own train_task (StepRunner) on the FSDP2 model
        return _with_train_task(model, tasks, strategies)
    losses: list[float] = []
    for task in tasks:
        data = strategies.begin_task(model, task)
        optimizer = _optimizer(model, strategies, config)
        generator = torch.Generator().manual_seed(config.seed)
        loader: DataLoader[int] = DataLoader(
            range(len(data.examples)),  # type: ignore[arg-type]
            batch_size=config.batch_size,
            shuffle=True,
            generator=generator,
        )
        model.train()
        for step, indices in enumerate(loader, start=1):
            chosen = indices.tolist()
            size = -(-len(chosen) // world)
            mine = chosen[rank * size : (rank + 1) * size]
            whole = data.collate([data.examples[i] for i in chosen])
            batch = data.collate([data.examples[i] for i in mine])
            logits, targets = data.objective.logits_and_targets(model, batch)
            total = target_count(data.objective, whole)
            loss = summed_loss(logits, targets) * world / total
            loss.backward()  # type: ignore[no-untyped-call]
            box = loss.detach() / world
            if world > 1:
                torch.distributed.all_reduce(box)
            losses.append(float(box))
            strategies.after_backward(model)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            strategies.on_step(step, model)
        strategies.on_task_end(model, task)
    penalty = strategies.penalty(model)  # a collective on a sharded model: every rank calls it
    weights = {name: _whole(p).detach().contiguous() for name, p in model.named_parameters()}
    value = None if penalty is None else float(penalty.detach())
    projections = sum(int(getattr(s, "projections", 0)) for s in strategies)
    result: dict[str, Any] = {"penalty": value, "losses": losses, "projections": projections}
    if variant in ("none", "llama_none"):
        result["scores"] = _scores(model, tasks)
    return weights, result


def _scores(model: torch.nn.Module, tasks: list[Task]) -> dict[str, list[float]]:
    """Accuracy and mean loss of every task, data-parallel (``task_accuracy``, ``task_loss``:
    each rank every ``W``-th batch of 7, uneven shares) and by every rank over all batches."""
    from retain.evaluation.task_accuracy import task_accuracy, task_loss

    parallel, reference = [], []
    for task in tasks:
        parallel += [task_accuracy(model, task, batch_size=7), task_loss(model, task, 7)]
        correct = scored = 0
        loss = 0.0
        model.eval()
        with torch.no_grad():
            for batch in task.batches(7):
                logits, targets = task.objective.logits_and_targets(model, batch)
                valid = targets != -100
                correct += int(((logits.argmax(-1) == targets) & valid).sum())
                scored += int(valid.sum())
                loss += float(summed_loss(logits, targets))
        reference += [correct / scored, loss / scored]
    return {"parallel": parallel, "reference": reference}


def _with_train_task(
    model: torch.nn.Module, tasks: list[Task], strategies: Strategy
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The same two tasks through :func:`retain.training.loop.train_task`, whose step runner
    scales each rank's loss by the world size under FSDP2 and leaves the reduce-scatter to it;
    AdamW (foreach on ``DTensor``s) on the MLP, SGD with momentum on the Llama (AdamW divides
    near-zero gradients by their own tiny scale, which turns float32 reduction-order noise into
    5e-5 weight differences there), with 3 gradient-accumulation micro-batches of a global batch
    of 20, so some ranks' micro-batches are empty stand-ins on the last batch."""
    from retain.training.loop import train_task

    config = TrainConfig(lr=1e-2, batch_size=20, grad_accum=3, seed=3)
    if any(type(m).__name__.endswith("DecoderLayer") for m in model.modules()):
        config = TrainConfig(
            lr=0.1, batch_size=20, grad_accum=3, seed=3, optimizer="sgd", momentum=0.9
        )
    losses: list[float] = []
    for task in tasks:
        log = train_task(model, task.with_examples(task.examples[:90]), strategies, config)
        losses.extend(float(v) for v in log.losses)
    penalty = strategies.penalty(model)
    weights = {name: _whole(p).detach().contiguous() for name, p in model.named_parameters()}
    value = None if penalty is None else float(penalty.detach())
    projections = sum(int(getattr(s, "projections", 0)) for s in strategies)
    return weights, {"penalty": value, "losses": losses, "projections": projections}


def _one_label(task: Task) -> Task:
    """``task``'s inputs with every label set to one class (one token): a task whose gradient
    conflicts with the first one's, so A-GEM projects."""
    if "input_ids" in task.examples[0]:
        ids = [{**e, "labels": torch.full_like(e["labels"], 3)} for e in task.examples]
        return task.with_examples(ids)
    moved = [{**e, "labels": torch.zeros_like(e["labels"])} for e in task.examples]
    return task.with_examples(moved)


def _mlp() -> tuple[torch.nn.Module, list[Task]]:
    """An MLP with 33 and 17 hidden rows (uneven shards on 2 ranks) and two permuted-digits
    tasks of 128 examples."""
    tasks = [s.train for s in permuted_image_tasks("digits", 2, seed=0)]
    torch.manual_seed(0)
    return MLP(64, [33, 17], 10), [t.with_examples(t.examples[:128]) for t in tasks]


def _llama() -> tuple[torch.nn.Module, list[Task]]:
    """A 2-layer, 32-wide random Llama (the config of ``tests/tiny_models.py``, untied
    embeddings) and two tasks of 64 random 8-token sequences."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=60,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    tasks = []
    for t in range(2):
        ids = torch.randint(3, 60, (64, 8), generator=torch.Generator().manual_seed(10 + t))
        examples = [{"input_ids": ids[i], "labels": ids[i].clone()} for i in range(64)]
        tasks.append(Task(f"lm{t}", examples, CausalLM(), pad_collate(0)))
    return model, tasks


def _whole(param: Tensor) -> Tensor:
    """The whole parameter (gathered from every rank when it is a sharded ``DTensor``)."""
    from torch.distributed.tensor import DTensor

    return param.full_tensor() if isinstance(param, DTensor) else param


if __name__ == "__main__":
    main()
