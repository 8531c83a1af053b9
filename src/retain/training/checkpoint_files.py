"""How a checkpoint's files hold Python state, and the RNG state a checkpoint saves.

A state tree (an optimizer's ``state_dict``, a loop position, RNG states) is written by
:func:`write_tree` either as a ``.safetensors`` file, its tensors as safetensors tensors and
the rest as typed JSON under the header key ``retain.tree``, or as a ``.json`` file holding no
tensors.
The JSON tags what plain JSON would lose: ``{"__tensor__": key}``, ``{"__tuple__": [...]}``,
``{"__float__": "inf"}`` and ``{"__items__": [[key, value], ...]}`` for dicts with non-string
keys, so :func:`read_tree` returns exactly the types written. Never pickle.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from retain.errors import RetainError
from retain.tensor_files import read_safetensors, write_safetensors

__all__ = ["CorruptCheckpointError", "capture_rng", "read_tree", "restore_rng", "write_tree"]

_MARKS = ("__tensor__", "__tuple__", "__float__", "__items__")


class CorruptCheckpointError(RetainError):
    """A checkpoint file that is missing, truncated or fails SHA-256 verification at load.

    ``detail`` names the file and the problem without a fix, so that a caller that knows the
    other checkpoints of a run can name the one to use instead.
    """

    def __init__(self, detail: str) -> None:
        super().__init__(f"{detail}; resume from another checkpoint")
        self.detail = detail


def capture_rng() -> dict[str, Any]:
    """Every global RNG state: ``torch.cpu`` (and ``torch.cuda.<i>`` per visible CUDA device) as
    uint8 tensors, Python ``random`` as JSON ``{version, internal, gauss_next}``, NumPy's legacy
    MT19937 as ``numpy.keys`` (624 words, int64 tensor) plus JSON ``{algorithm, pos, ...}``."""
    state: dict[str, Any] = {"torch.cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state.update({f"torch.cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    version, internal, gauss = random.getstate()
    state["python"] = {"version": version, "internal": list(internal), "gauss_next": gauss}
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state["numpy.keys"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    state["numpy"] = {"algorithm": name, "pos": pos, "has_gauss": has_gauss, "gauss": cached}
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Set every global RNG to ``state`` from :func:`capture_rng`. CUDA states are restored for
    the devices both runs see (resuming on other hardware continues, not bit-identically)."""
    missing = [k for k in ("torch.cpu", "python", "numpy", "numpy.keys") if k not in state]
    if missing:
        raise RetainError(f"RNG state lacks {missing[0]!r}; pass what capture_rng() returned")
    torch.set_rng_state(state["torch.cpu"])
    for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        if f"torch.cuda.{i}" in state:
            torch.cuda.set_rng_state(state[f"torch.cuda.{i}"], i)
    py, npy = state["python"], state["numpy"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss_next"]))
    keys = state["numpy.keys"].numpy().astype(np.uint32)
    np.random.set_state((npy["algorithm"], keys, npy["pos"], npy["has_gauss"], npy["gauss"]))


def _encode(value: Any, tensors: dict[str, Tensor], key: str) -> Any:
    """JSON for ``value``; tensors go to ``tensors[key]``. Tuples, non-finite floats and dicts with
    non-string keys are tagged so that :func:`_decode` restores the exact types."""
    if torch.is_tensor(value):
        while key in tensors:
            key += "_"
        tensors[key] = value
        return {"__tensor__": key}
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"__float__": repr(value)}
    at = (key + ".") if key else ""
    if isinstance(value, (list, tuple)):
        items = [_encode(v, tensors, f"{at}{i}") for i, v in enumerate(value)]
        return {"__tuple__": items} if isinstance(value, tuple) else items
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value) and not any(m in value for m in _MARKS):
            return {k: _encode(v, tensors, f"{at}{k}") for k, v in value.items()}
        pairs = [[_encode(k, {}, ""), _encode(v, tensors, f"{at}{k}")] for k, v in value.items()]
        return {"__items__": pairs}
    raise RetainError(
        f"checkpoint value {key!r} has type {type(value).__name__}; a checkpoint stores tensors, "
        "numbers, strings, None, lists, tuples and dicts"
    )


def _decode(value: Any, tensors: dict[str, Tensor]) -> Any:
    """The inverse of :func:`_encode`."""
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1 and next(iter(value)) in _MARKS:
        ((mark, inner),) = value.items()
        if mark == "__tensor__":
            return tensors[inner]
        if mark == "__float__":
            return float(inner)
        if mark == "__tuple__":
            return tuple(_decode(v, tensors) for v in inner)
        return {_decode(k, tensors): _decode(v, tensors) for k, v in inner}
    return {k: _decode(v, tensors) for k, v in value.items()}


def write_tree(path: Path, tree: Any, what: str) -> None:
    """``tree`` as a ``.safetensors`` file (tensors plus typed JSON in the header) or as a
    ``.json`` file (which must hold no tensors)."""
    tensors: dict[str, Tensor] = {}
    binary = path.suffix == ".safetensors"
    tree = _encode(tree, tensors, "" if binary else what)
    text = json.dumps(tree, indent=None if binary else 1, allow_nan=False)
    if binary:
        write_safetensors(path, tensors, {"retain.tree": text})
    elif tensors:
        raise RetainError(f"{what} holds tensor {next(iter(tensors))!r}; pass it in tensors=")
    else:
        path.write_text(text + "\n", encoding="utf-8")


def read_tree(path: Path, what: str) -> Any:
    """What :func:`write_tree` wrote to ``path``."""
    try:
        if path.suffix != ".safetensors":
            return _decode(json.loads(path.read_text(encoding="utf-8")), {})
        tensors, metadata = read_safetensors(path, what)
        return _decode(json.loads(metadata["retain.tree"]), tensors)
    except (OSError, KeyError, ValueError) as exc:
        if isinstance(exc, RetainError):
            raise
        detail = f"{what} file {str(path)!r} is missing or corrupt ({exc})"
        raise CorruptCheckpointError(detail) from exc
