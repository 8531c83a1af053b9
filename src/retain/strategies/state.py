"""Save and load strategy state as safetensors (tensors) plus JSON metadata (everything else).

Nothing is unpickled: tensors go through ``safetensors`` and the remaining values (numbers,
strings, lists) through ``json`` in the file's metadata header. Writes are atomic (a temporary
file renamed into place).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from retain.errors import RetainError
from retain.strategies.base import StateDict, Strategy
from retain.tensor_files import read_safetensors, write_safetensors

__all__ = ["load_strategy_state", "save_strategy_state"]

_META_KEY = "retain.strategy_state"


def save_strategy_state(strategy: Strategy, path: str | Path) -> Path:
    """Write ``strategy.state_dict()`` to ``path`` (a ``.safetensors`` file), atomically."""
    state = strategy.state_dict()
    tensors = {k: v for k, v in state.items() if torch.is_tensor(v)}
    rest = {k: v for k, v in state.items() if not torch.is_tensor(v)}
    try:
        meta = json.dumps(rest, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise RetainError(f"strategy {strategy.name!r} state is not serialisable: {exc}") from exc
    return write_safetensors(path, tensors, {_META_KEY: meta, "strategy": strategy.describe()})


def read_strategy_state(path: str | Path) -> StateDict:
    """The state saved by :func:`save_strategy_state` (tensors on CPU)."""
    tensors, metadata = read_safetensors(path, "strategy state")
    meta = metadata.get(_META_KEY)
    if meta is None:
        raise RetainError(f"{str(path)!r} holds no retain strategy state; pass a file it saved")
    state: StateDict = dict(json.loads(meta))
    state.update(tensors)
    return state


def load_strategy_state(strategy: Strategy, path: str | Path) -> None:
    """Restore ``strategy`` from a file written by :func:`save_strategy_state`."""
    strategy.load_state_dict(read_strategy_state(path))
