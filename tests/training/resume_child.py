"""A fixed-seed task-sequence run with checkpoints, used by ``test_resume.py`` in a subprocess.

``python resume_child.py RUN_DIR [--resume]`` trains 3 permuted-digits tasks
(an MLP with dropout, EWC + replay, a forgetting monitor on task 0's accuracy), checkpointing
every 4 optimizer steps, and writes ``RUN_DIR/result.json`` and ``RUN_DIR/weights.safetensors``.
``RETAIN_TEST_SLEEP=SECONDS`` slows every step so the test can kill the process mid-task.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from retain.assets.mlp import MLP
from retain.data.permuted import TaskSplit, permuted_image_tasks
from retain.evaluation.suite import EvalSuite
from retain.evaluation.task_probe import TaskAccuracyProbe
from retain.strategies.base import Strategy
from retain.strategies.chain import chain
from retain.strategies.ewc import EWC
from retain.strategies.replay import Replay
from retain.training.loop import TrainConfig
from retain.training.monitor import MonitorConfig
from retain.training.sequence import fit_sequence


class Dropped(nn.Module):
    """An MLP behind dropout, so the run consumes the global RNG while training."""

    def __init__(self) -> None:
        super().__init__()
        self.drop = nn.Dropout(0.2)
        self.net = MLP(64, [32], 10)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(self.drop(pixel_values))
        return out


class Sleep(Strategy):
    """Sleeps ``$RETAIN_TEST_SLEEP`` seconds after every optimizer step (changes nothing)."""

    name = "sleep"

    def on_step(self, step: int, model: nn.Module) -> None:
        time.sleep(float(os.environ.get("RETAIN_TEST_SLEEP", "0")))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    splits = permuted_image_tasks("digits", 3, seed=0)
    # Small tasks: 12 steps of 32 examples each.
    splits = [TaskSplit(s.train.with_examples(s.train.examples[:384]), s.test) for s in splits]
    torch.manual_seed(0)
    model = Dropped()
    strategies = chain(
        EWC(strength=50.0, fisher_samples=64), Replay(ratio=0.3, buffer_size=64), Sleep()
    )
    suite = EvalSuite("watch", [TaskAccuracyProbe("task0", splits[0].test)])
    _, result = fit_sequence(
        model,
        splits,
        strategies,
        TrainConfig(lr=3e-3, batch_size=32, seed=7),
        suite=suite,
        monitor=MonitorConfig(max_degradation=0.5, eval_every=5),
        checkpoint_dir=args.out / "checkpoints",
        checkpoint_every=4,
        resume=args.resume,
    )
    result.save(args.out / "result.json")
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, args.out / "weights.safetensors"
    )


if __name__ == "__main__":
    main()
