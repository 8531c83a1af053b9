"""Save and load strategy state as safetensors (tensors) plus JSON metadata (everything else).

Nothing is unpickled: tensors go through ``safetensors`` and the remaining values (numbers,
strings, lists) through ``json`` in the file's metadata header. Writes are atomic (a temporary
file renamed into place).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from retain.errors import RetainError
from retain.strategies.base import StateDict, Strategy

__all__ = ["load_strategy_state", "save_strategy_state"]

_META_KEY = "retain.strategy_state"


def save_strategy_state(strategy: Strategy, path: str | Path) -> Path:
    """Write ``strategy.state_dict()`` to ``path`` (a ``.safetensors`` file), atomically."""
    path = Path(path)
    state = strategy.state_dict()
    tensors = {k: v.detach().contiguous().clone() for k, v in state.items() if torch.is_tensor(v)}
    rest = {k: v for k, v in state.items() if not torch.is_tensor(v)}
    try:
        meta = json.dumps(rest, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise RetainError(f"strategy {strategy.name!r} state is not serialisable: {exc}") from exc
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={_META_KEY: meta, "strategy": strategy.describe()})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_strategy_state(path: str | Path) -> StateDict:
    """The state saved by :func:`save_strategy_state` (tensors on CPU)."""
    path = Path(path)
    if not path.is_file():
        raise RetainError(f"strategy state file {str(path)!r} does not exist; check the path")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = (f.metadata() or {}).get(_META_KEY)
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise RetainError(f"{str(path)!r} is not a safetensors file: {exc}") from exc
    if meta is None:
        raise RetainError(f"{str(path)!r} holds no retain strategy state; pass a file it saved")
    state: StateDict = dict(json.loads(meta))
    state.update(tensors)
    return state


def load_strategy_state(strategy: Strategy, path: str | Path) -> None:
    """Restore ``strategy`` from a file written by :func:`save_strategy_state`."""
    strategy.load_state_dict(read_strategy_state(path))
