"""Damaged weight files: one line naming the file instead of a safetensors traceback.

Only headers are read (no tensor is loaded), so the check is cheap enough to run before any work:
a truncated file fails ("file not fully covered"), as does one overwritten with garbage. A
``from_pretrained`` that still fails on a damaged file (a pickled ``.bin``) is recognised by
:func:`is_corrupt_weights_error` and reported by :func:`corrupt_weights_error`.
"""

from __future__ import annotations

import pickle
from pathlib import Path

from safetensors import SafetensorError, safe_open

from retain.errors import RetainError

__all__ = ["check_weight_files", "corrupt_weights_error", "is_corrupt_weights_error"]


def check_weight_files(folder: str | Path, what: str = "model") -> None:
    """Read the header of every ``*.safetensors`` file in ``folder``; refuse a broken one.

    A truncated file fails here ("file not fully covered"), as does one overwritten with garbage.
    """
    for file in sorted(Path(folder).expanduser().glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt"):
                pass
        except (SafetensorError, OSError) as exc:
            raise _corrupt(repr(str(file)), exc, what) from None


def _corrupt(shown: str, exc: BaseException, what: str) -> RetainError:
    if isinstance(exc, pickle.UnpicklingError):  # its message is a paragraph on weights_only
        reason = "not a readable pickle of plain tensors"
    else:
        reason = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        reason = reason.removeprefix("Error while deserializing header: ")
    return RetainError(
        f"{shown} is truncated or corrupt ({reason}); re-save or re-download the {what}"
    )


def is_corrupt_weights_error(exc: BaseException) -> bool:
    """Whether ``exc`` (raised while reading weights) says a weights file is damaged."""
    if isinstance(exc, (SafetensorError, pickle.UnpicklingError, EOFError)):
        return True
    text = str(exc)
    if isinstance(exc, RuntimeError) and ("PytorchStreamReader" in text or "zip archive" in text):
        return True
    # Random bytes read as a legacy (non-zip) torch file fail inside torch's unpickler with
    # whatever the bytes happen to trigger (UnicodeDecodeError, IndexError, ValueError, ...).
    return isinstance(exc, Exception) and _raised_in_torch_load(exc)


def _raised_in_torch_load(exc: BaseException) -> bool:
    """Whether ``exc`` was raised inside ``torch.load`` (its serialization or unpickler)."""
    tb = exc.__traceback__
    while tb is not None:
        name = tb.tb_frame.f_code.co_filename.replace("\\", "/")
        if name.endswith(("torch/serialization.py", "torch/_weights_only_unpickler.py")):
            return True
        tb = tb.tb_next
    return False


def corrupt_weights_error(
    name: str, folder: str | None, exc: BaseException, what: str = "model"
) -> RetainError:
    """The error for a damaged weights file of ``name``, naming the file when it can be found."""
    if folder is not None and Path(folder).expanduser().is_dir():
        check_weight_files(
            folder, what
        )  # raises, naming the file, when a safetensors header is bad
        bins = sorted(Path(folder).expanduser().glob("*.bin"))
        if len(bins) == 1:
            return _corrupt(repr(str(bins[0])), exc, what)
    return _corrupt(f"a weights file of {name!r}", exc, what)
