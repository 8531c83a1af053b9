"""Which process is the main one, under ``accelerate launch`` / ``torchrun`` or alone, and which
device it computes on.

Nothing in retain assumes a single process: every rank may evaluate, but only the main process
writes run directories and reports.
"""

from __future__ import annotations

import os

import torch

from retain.errors import RetainError

__all__ = [
    "auto_device",
    "init_distributed",
    "is_main_process",
    "rank_and_world",
    "resolve_device",
]


def rank_and_world() -> tuple[int, int]:
    """``(rank, world size)`` of the initialised ``torch.distributed`` group; ``(0, 1)`` alone."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return int(dist.get_rank()), int(dist.get_world_size())
    return 0, 1


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
    return rank_and_world()


def auto_device() -> torch.device:
    """This process's accelerator (``cuda:LOCAL_RANK``) when there is one, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def resolve_device(name: str, what: str = "--device") -> torch.device:
    """The device ``name`` names (``"auto"``: :func:`auto_device`), checked to exist here.

    A name torch does not know, CUDA or MPS that this machine lacks, or a CUDA index past its
    devices is a :class:`~retain.errors.RetainError` that starts with ``what`` (the setting).
    """
    if name == "auto":
        return auto_device()
    try:
        device = torch.device(name)
    except RuntimeError:
        raise RetainError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise RetainError(f"{what}={name}: CUDA is not available here; use auto or cpu")
        if (device.index or 0) >= count:
            raise RetainError(
                f"{what}={name}: this machine has {count} CUDA device(s) "
                f"(cuda:0 .. cuda:{count - 1}); pick one of them"
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise RetainError(f"{what}={name}: MPS is not available here; use auto or cpu")
    return device
