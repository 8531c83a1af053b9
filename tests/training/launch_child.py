"""``fit_sequence`` as a user script, run by ``test_launch.py`` alone and under ``torchrun``.

``python launch_child.py OUT`` (or ``torchrun --nproc_per_node 2 launch_child.py OUT``) trains two
permuted-digits tasks with EWC (SGD, global batch 32) and, on the main process, writes the
weights to ``OUT/weights.safetensors`` and the matrix R to ``OUT/result.json``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from retain.assets.mlp import MLP
from retain.data.permuted import TaskSplit, permuted_image_tasks
from retain.distributed import is_main_process
from retain.strategies.chain import chain
from retain.strategies.ewc import EWC
from retain.training.loop import TrainConfig
from retain.training.sequence import fit_sequence


def main() -> None:
    out = Path(sys.argv[1])
    torch.set_num_threads(1)
    splits = [
        TaskSplit(s.train.with_examples(s.train.examples[:256]), s.test)
        for s in permuted_image_tasks("digits", 2, seed=0)
    ]
    torch.manual_seed(0)
    model = MLP(64, [32], 10)
    config = TrainConfig(lr=0.05, batch_size=32, optimizer="sgd", momentum=0.9, seed=3)
    strategies = chain(EWC(strength=100.0, fisher_samples=128))
    model, result = fit_sequence(model, splits, strategies, config, progress=False)
    if is_main_process():
        out.mkdir(parents=True, exist_ok=True)
        save_file(
            {k: v.contiguous() for k, v in model.state_dict().items()}, out / "weights.safetensors"
        )
        result.save(out / "result.json")
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
