"""Which process is the main one, under ``accelerate launch`` / ``torchrun`` or alone.

Nothing in retain assumes a single process: every rank may evaluate, but only the main process
writes run directories and reports.
"""

from __future__ import annotations

import os

import torch

__all__ = ["is_main_process"]


def is_main_process() -> bool:
    """True on global rank 0, and in a plain single-process run.

    Uses the initialised ``torch.distributed`` group when there is one, else the ``RANK``
    environment variable that ``torchrun`` and ``accelerate launch`` set.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return int(torch.distributed.get_rank()) == 0
    return os.environ.get("RANK", "0") == "0"
