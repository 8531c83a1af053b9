"""Two causal-LM tasks trained by a Hugging Face ``Trainer`` with ``RetainCallback``, run by
``test_hf_fsdp.py``.

``python hf_fsdp_child.py OUT VARIANT...`` trains a whole tiny Llama in one process;
``torchrun --nproc-per-node 2 hf_fsdp_child.py OUT VARIANT...`` trains it sharded with FSDP2 on
two gloo processes, on the same global batches: 8 sequences per optimizer step, as 2
micro-batches of ``8 / world / 2`` sequences per process (``gradient_accumulation_steps=2``). All
sequences have 8 tokens, so every rank's mean loss weighs the same number of tokens and the
Trainer's losses (``average_tokens_across_devices``) equal the one-process ones. The Trainer's
seeded sampler gives both runs the same global batches (each process takes every other
micro-batch of the same permutation).

Each task: ``strategies.begin_task`` on the model as it will be trained, ``make_optimizer``
(SGD with momentum), a fresh ``Trainer`` with ``RetainCallback`` (clipping at norm 1, constant
learning rate), ``train()``. SGD rather than AdamW: AdamW divides each gradient entry by its
running RMS, so an entry whose gradient is near zero turns the float rounding of the two
reduction orders (one process's mean against FSDP2's reduce-scatter of two halves) into weight
differences up to 7e-6 after 8 steps, which leaves too little margin under 1e-5 on other CPUs;
SGD keeps them at rounding size. Variants (:data:`VARIANTS`):

* ``none``, ``l2sp``, ``ewc``: Transformers' own FSDP2: the model is loaded with
  ``from_pretrained(..., distributed_config=DistributedConfig(fsdp_size=2))``, sharded as it
  loads (every parameter a ``DTensor`` sharded on dim 0), and the Trainer keeps it as it is.
* ``accelerate_l2sp``: Accelerate's FSDP2 (``TrainingArguments(fsdp=True, fsdp_config={"version":
  2, ...})``) on a model sharded by hand with ``fully_shard`` (each decoder block, then the root)
  before ``begin_task``; Accelerate keeps a model that is already FSDP2. The Trainer refuses
  ``optimizers=...`` under Accelerate's FSDP, so ``make_optimizer`` runs in an overridden
  ``create_optimizer`` (:class:`MakeOptimizerTrainer`, in the one-process run as well).
* ``accelerate_whole_l2sp``, ``accelerate_whole_mas``: the same Trainer given the whole model,
  which it shards in ``train()``, after ``begin_task``: the callback refuses both at
  ``on_train_begin`` (L2-SP's anchor was taken whole; MAS declares ``unsharded_only``). One
  process trains them normally (no FSDP without a process group).

Accelerate 1.16 turns FSDP on only for GPUs and other accelerators: on CPU it ignores the FSDP
plugin and the Trainer falls back to DDP. :class:`CpuFsdpTrainer` sets the plugin on Accelerate's
state after the Trainer built it, so that the Trainer takes the code path it takes with FSDP2 on
GPUs (``Accelerator.prepare`` of the model and optimizer with FSDP2, DTensor-aware clipping).

The main process writes ``OUT/VARIANT/weights.safetensors`` (whole weights) and
``OUT/VARIANT/result.json``: the per-step losses, the final penalty, and ``error`` (the message
of a refusal, or null).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor, nn
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PrinterCallback,
    Trainer,
    TrainingArguments,
)

from retain.data.task import CausalLM, Task, pad_collate
from retain.distributed import init_distributed, is_sharded, rank_and_world
from retain.errors import RetainError
from retain.strategies.base import Strategy
from retain.strategies.chain import Chain, chain
from retain.strategies.ewc import EWC
from retain.strategies.l2sp import L2SP
from retain.strategies.mas import MAS
from retain.training.hf import RetainCallback
from retain.training.loop import TrainConfig, make_optimizer

GLOBAL_BATCH, ACCUM = 8, 2
#: SGD with momentum (foreach on sharded DTensors, fused on whole tensors; see the docstring)
CONFIG = TrainConfig(lr=0.1, optimizer="sgd", momentum=0.9)

#: Strategies by variant name (built fresh for each run); ``none`` is plain fine-tuning.
VARIANTS: dict[str, Callable[[], list[Strategy]]] = {
    "none": lambda: [],
    "l2sp": lambda: [L2SP(alpha=0.5)],
    "ewc": lambda: [EWC(strength=1000.0, fisher_samples=12, fisher_batch_size=5)],
    "accelerate_l2sp": lambda: [L2SP(alpha=0.5)],
    "accelerate_whole_l2sp": lambda: [L2SP(alpha=0.5)],
    "accelerate_whole_mas": lambda: [MAS(samples=4)],
}


class MakeOptimizerTrainer(Trainer):
    """The recipe where the Trainer refuses ``optimizers=...`` (under Accelerate's FSDP it asks
    for a subclass): ``create_optimizer`` builds retain's optimizer from the strategies."""

    strategies: Chain

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        if self.optimizer is None:
            chosen = model if model is not None else self.model
            assert chosen is not None
            self.optimizer = make_optimizer(chosen, self.strategies, CONFIG)
        return self.optimizer


class CpuFsdpTrainer(MakeOptimizerTrainer):
    """A Trainer whose Accelerate state says FSDP (with the plugin of ``args.fsdp_config``) on
    CPU too, where Accelerate leaves it at DDP (see the module docstring). Accelerate's state is
    shared by every ``Accelerator`` of the process: ``train`` restores it (and the environment
    variable the FSDP plugin sets) when it ends, so the next variant starts as Accelerate left it.
    """

    def create_accelerator_and_postprocess(self) -> None:
        env = os.environ.get("ACCELERATE_USE_FSDP")
        super().create_accelerator_and_postprocess()
        state = self.accelerator.state
        self._restore = (state.distributed_type, env)
        if self.args.fsdp_plugin_args is not None and not self.is_fsdp_enabled:
            from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

            state.fsdp_plugin = FullyShardedDataParallelPlugin(**self.args.fsdp_plugin_args)
            state.distributed_type = DistributedType.FSDP
            self.is_fsdp_enabled = True

    def train(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().train(*args, **kwargs)
        finally:
            state = self.accelerator.state
            state.distributed_type, env = self._restore
            state.fsdp_plugin = None
            if env is None:
                os.environ.pop("ACCELERATE_USE_FSDP", None)
            else:
                os.environ["ACCELERATE_USE_FSDP"] = env


def main() -> None:
    out, variants = Path(sys.argv[1]), sys.argv[2:]
    torch.set_num_threads(1)
    rank, _ = init_distributed()
    saved = _save_model(out / ".model")
    for variant in variants:
        weights, result = train(variant, saved, out / variant)
        if rank == 0:
            (out / variant).mkdir(parents=True, exist_ok=True)
            if weights is not None:
                save_file(weights, out / variant / "weights.safetensors")
            (out / variant / "result.json").write_text(json.dumps(result))
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def train(variant: str, saved: Path, out: Path) -> tuple[dict[str, Tensor] | None, dict[str, Any]]:
    """Two tasks with ``VARIANTS[variant]``: the whole weights (None when refused), the per-step
    losses, the final penalty and the refusal's message."""
    _, world = rank_and_world()
    accelerate = variant.startswith("accelerate")
    model = _load(saved, sharded=world > 1 and not accelerate)
    if accelerate and world > 1 and "whole" not in variant:
        from torch.distributed.fsdp import fully_shard

        for module in model.modules():
            if type(module).__name__.endswith("DecoderLayer"):
                fully_shard(module)
        fully_shard(model)
    strategies = chain(*VARIANTS[variant]())
    losses: list[float] = []
    try:
        for task in _tasks():
            losses.extend(_train_task(model, task, strategies, out, accelerate))
    except RetainError as exc:
        return None, {"losses": losses, "penalty": None, "error": str(exc)}
    penalty = strategies.penalty(model)  # a collective on a sharded model: every rank calls it
    weights = {name: _whole(p).detach().contiguous() for name, p in model.named_parameters()}
    value = None if penalty is None else float(penalty.detach())
    return weights, {"losses": losses, "penalty": value, "error": None}


def _train_task(
    model: nn.Module, task: Task, strategies: Chain, out: Path, accelerate: bool
) -> list[float]:
    """One task through the documented Trainer recipe; the Trainer's per-step losses.

    ``accelerate``: Accelerate's FSDP2 on two processes (:class:`CpuFsdpTrainer`), and the
    optimizer built in ``create_optimizer`` on one and two (:class:`MakeOptimizerTrainer`)."""
    _, world = rank_and_world()
    data = strategies.begin_task(model, task)
    fsdp: dict[str, Any] = {}
    if accelerate and world > 1:
        # Accelerate looks the block class up by name, which fully_shard changed (FSDPLlama...):
        # name it only for a model that Accelerate shards itself
        blocks = (
            {} if is_sharded(model) else {"transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"]}
        )
        fsdp = {"fsdp": True, "fsdp_config": {"version": 2, **blocks}}
    args = TrainingArguments(
        output_dir=str(out / "trainer"),
        per_device_train_batch_size=GLOBAL_BATCH // world // ACCUM,
        gradient_accumulation_steps=ACCUM,
        num_train_epochs=1,
        learning_rate=CONFIG.lr,
        lr_scheduler_type="constant",
        max_grad_norm=1.0,
        seed=3,
        report_to=[],
        save_strategy="no",
        logging_strategy="steps",
        logging_steps=1,
        use_cpu=True,
        disable_tqdm=True,
        **fsdp,
    )
    common: dict[str, Any] = {
        "model": model,
        "args": args,
        "train_dataset": data.examples,
        "data_collator": data.collate,
        "callbacks": [RetainCallback(strategies, task)],
    }
    trainer: Trainer
    if accelerate:
        kind = CpuFsdpTrainer if fsdp else MakeOptimizerTrainer
        trainer = kind(**common)
        trainer.strategies = strategies
    else:
        optimizer = make_optimizer(model, strategies, CONFIG)
        trainer = Trainer(**common, optimizers=(optimizer, None))
        assert not trainer.is_fsdp_enabled  # no Accelerate FSDP: the model shards itself
    trainer.remove_callback(PrinterCallback)  # the logs are read from log_history
    trainer.train()
    return [float(entry["loss"]) for entry in trainer.state.log_history if "loss" in entry]


def _save_model(folder: Path) -> Path:
    """A 2-layer, 32-wide random Llama (untied embeddings) saved to ``folder`` by the main
    process (``save_pretrained`` writes on rank 0 only), read by every process."""
    config = LlamaConfig(
        vocab_size=60,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    if rank_and_world()[0] == 0:
        LlamaForCausalLM(config).save_pretrained(folder)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    return folder


def _load(saved: Path, sharded: bool) -> nn.Module:
    """The saved model, sharded over every process as it loads when ``sharded``."""
    if not sharded:
        return LlamaForCausalLM.from_pretrained(saved)
    from transformers import DistributedConfig

    _, world = rank_and_world()
    config = DistributedConfig(fsdp_size=world)
    return LlamaForCausalLM.from_pretrained(saved, distributed_config=config)


def _tasks() -> list[Task]:
    """Two tasks of 32 random 8-token sequences (4 optimizer steps each)."""
    tasks = []
    for t in range(2):
        ids = torch.randint(3, 60, (32, 8), generator=torch.Generator().manual_seed(10 + t))
        examples = [{"input_ids": ids[i], "labels": ids[i].clone()} for i in range(32)]
        tasks.append(Task(f"lm{t}", examples, CausalLM(), pad_collate(0)))
    return tasks


def _whole(param: Tensor) -> Tensor:
    """The whole parameter (gathered from every rank when it is a sharded ``DTensor``)."""
    from torch.distributed.tensor import DTensor

    return param.full_tensor() if isinstance(param, DTensor) else param


if __name__ == "__main__":
    main()
