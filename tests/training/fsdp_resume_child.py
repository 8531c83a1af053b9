"""A sharded (FSDP2) task-sequence run with checkpoints, killed and resumed by
``test_fsdp_resume.py``.

``torchrun --nproc-per-node 2 fsdp_resume_child.py RUN_DIR [--resume]`` trains 2 permuted-digits
tasks on an MLP sharded by :func:`retain.distributed.shard_model` (every ``Linear``, uneven rows),
with EWC (its strength tuned by a forgetting budget on task 0's accuracy, every 2 steps),
replay and A-GEM, AdamW, a forgetting monitor on task 0's accuracy (evaluated every 4
steps, restoring the best weights within a 5 % budget), and a checkpoint every 3 optimizer
steps, through
:func:`retain.training.sequence.fit_sequence`; the main process writes ``RUN_DIR/result.json`` and
the whole weights to ``RUN_DIR/weights.safetensors``. ``RETAIN_TEST_EXIT_AT=N`` ends every
process abruptly (``os._exit``, no cleanup, as a kill would) after the ``N``-th optimizer step.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from retain.assets.mlp import MLP
from retain.data.permuted import TaskSplit, permuted_image_tasks
from retain.distributed import init_distributed, is_main_process, shard_model
from retain.errors import RetainError
from retain.evaluation.suite import EvalSuite
from retain.evaluation.task_probe import TaskAccuracyProbe
from retain.strategies.agem import AGEM
from retain.strategies.base import Strategy
from retain.strategies.chain import chain
from retain.strategies.ewc import EWC
from retain.strategies.replay import Replay
from retain.training.budget import ForgettingBudget
from retain.training.loop import TrainConfig
from retain.training.monitor import MonitorConfig
from retain.training.sequence import fit_sequence


class ExitAt(Strategy):
    """Ends the process after optimizer step ``$RETAIN_TEST_EXIT_AT`` of this process's life."""

    name = "exit_at"
    unsharded_only = None  # it changes nothing

    def __init__(self) -> None:
        self.steps = 0

    def on_step(self, step: int, model: nn.Module) -> None:
        self.steps += 1
        if self.steps == int(os.environ.get("RETAIN_TEST_EXIT_AT", "0")):
            os._exit(3)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    init_distributed()
    splits = permuted_image_tasks("digits", 2, seed=0)
    splits = [TaskSplit(s.train.with_examples(s.train.examples[:240]), s.test) for s in splits]
    torch.manual_seed(0)
    watched = EvalSuite("budget", [TaskAccuracyProbe("task0", splits[0].test)])
    ewc = EWC(strength=50.0, fisher_samples=64, fisher_batch_size=16)
    strategies = chain(
        ForgettingBudget(ewc, watched, max_degradation=0.02, every=2),
        Replay(ratio=0.25, buffer_size=64),
        AGEM(memory_size=48, sample_size=16),
        ExitAt(),
    )
    try:
        model, result = fit_sequence(
            MLP(64, [33], 10),
            splits,
            strategies,
            TrainConfig(lr=3e-3, batch_size=24, seed=7),
            suite=EvalSuite("watch", [TaskAccuracyProbe("task0", splits[0].test)]),
            monitor=MonitorConfig(max_degradation=0.05, eval_every=4),
            checkpoint_dir=args.out / "checkpoints",
            checkpoint_every=3,
            resume=args.resume,
            shard=shard_model,
            progress=False,
        )
    except RetainError as exc:
        print(f"error: {exc}", flush=True)
        raise SystemExit(2) from None
    weights = {name: _whole(p).detach().contiguous() for name, p in model.named_parameters()}
    if is_main_process():
        result.save(args.out / "result.json")
        save_file(weights, args.out / "weights.safetensors")
    torch.distributed.destroy_process_group()


def _whole(param: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return param.full_tensor() if isinstance(param, DTensor) else param


if __name__ == "__main__":
    main()
