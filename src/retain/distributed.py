"""Which process is the main one, under ``accelerate launch`` / ``torchrun`` or alone.

Nothing in retain assumes a single process: every rank may evaluate, but only the main process
writes run directories and reports.
"""

from __future__ import annotations

import os

import torch

__all__ = ["init_distributed", "is_main_process"]


def is_main_process() -> bool:
    """True on global rank 0, and in a plain single-process run.

    Uses the initialised ``torch.distributed`` group when there is one, else the ``RANK``
    environment variable that ``torchrun`` and ``accelerate launch`` set, but only when
    ``WORLD_SIZE`` names more than one process: a ``RANK`` left over in a shell by itself never
    turns a single process into a silent non-main one.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return int(torch.distributed.get_rank()) == 0
    if _env_int("WORLD_SIZE", 1) <= 1:
        return True
    return _env_int("RANK", 0) == 0


def _env_int(name: str, default: int) -> int:
    """The integer in environment variable ``name``; ``default`` when unset or not a number."""
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def init_distributed() -> tuple[int, int]:
    """Join the process group of ``accelerate launch`` / ``torchrun``; returns ``(rank, world)``.

    When the environment names more than one process (``WORLD_SIZE > 1``) and no group exists yet,
    Accelerate's ``PartialState`` initialises it (NCCL on GPUs, gloo on CPUs) and binds this
    process to its local device. A group the caller initialised is used as it is; a plain run
    returns ``(0, 1)``.
    """
    dist = torch.distributed
    if dist.is_available() and not dist.is_initialized() and _env_int("WORLD_SIZE", 1) > 1:
        from accelerate import PartialState

        PartialState()
    if dist.is_available() and dist.is_initialized():
        return int(dist.get_rank()), int(dist.get_world_size())
    return 0, 1
