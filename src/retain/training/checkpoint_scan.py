"""Which checkpoint folders are complete: the scan behind resume decisions.

A checkpoint folder ``step-<n>`` (:mod:`retain.training.checkpoint`) is *complete* when its
manifest ``checkpoint.json`` parses, names the retain format, and every file it lists exists at the
recorded size. SHA-256 digests are not read here (that means reading every byte); they are
checked when a checkpoint is loaded. Hidden staging folders (``.staging-step-<n>``, left by a kill
mid-save) are never checkpoints and are not reported; every other ``step-<n>`` folder that is not
complete is reported with the reason, so a resume can say what it passed over.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "CheckpointScan",
    "checkpoint_problem",
    "latest_checkpoint",
    "older_checkpoint",
    "scan_checkpoints",
]

FORMAT, MANIFEST = "retain.checkpoint", "checkpoint.json"
_NAME = re.compile(r"step-(\d+)")


@dataclass(frozen=True)
class CheckpointScan:
    """The ``step-<n>`` folders of one checkpoint directory.

    Attributes:
        complete: complete checkpoints, oldest first (by save sequence, then step).
        skipped: every other ``step-<n>`` folder with the reason it is not complete, e.g.
            ``"incomplete: no checkpoint.json"`` or ``"model.safetensors is 10 bytes, the
            manifest says 20"``. Hidden staging folders (left by a kill) are not listed.
    """

    complete: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def _inspect(folder: Path) -> tuple[int, str]:
    """``(save sequence, "")`` for a complete checkpoint ``folder`` (a valid manifest, every file
    it lists present at its recorded size; no SHA-256, which is checked at load), else
    ``(-1, why not)``."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return -1, f"incomplete: no {MANIFEST}"
    except (OSError, ValueError) as exc:
        return -1, f"{MANIFEST} is unreadable ({exc})"
    try:
        if manifest.get("format") != FORMAT:
            return -1, "not a retain checkpoint"
        for name, info in manifest["files"].items():
            if not (folder / name).is_file():
                return -1, f"{name} is missing"
            size = (folder / name).stat().st_size
            if size != info["bytes"]:
                return -1, f"{name} is {size:,} bytes, the manifest says {info['bytes']:,}"
        return int(manifest["sequence"]), ""
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return -1, f"{MANIFEST} is unreadable ({type(exc).__name__}: {exc})"


def _checkpoints(
    directory: Path, skipped: list[tuple[Path, str]] | None = None
) -> list[tuple[tuple[int, int], Path]]:
    """Complete checkpoints in ``directory``, oldest first (by save sequence, then step); the
    other ``step-<n>`` folders go to ``skipped`` with the reason, when given."""
    found = []
    for child in sorted(directory.iterdir()) if directory.is_dir() else ():
        match = _NAME.fullmatch(child.name)
        if not match:
            continue
        sequence, why = _inspect(child)
        if why:
            if skipped is not None:
                skipped.append((child, why))
        else:
            found.append(((sequence, int(match.group(1))), child))
    return sorted(found)


def scan_checkpoints(directory: str | Path) -> CheckpointScan:
    """The complete checkpoints of ``directory`` and the ``step-<n>`` folders that are not
    (with the reason), so that a resume can say what it passed over."""
    skipped: list[tuple[Path, str]] = []
    found = _checkpoints(Path(directory), skipped)
    return CheckpointScan([path for _, path in found], skipped)


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The most recently saved complete checkpoint in ``directory`` (None when there is none);
    staging folders and folders without a valid manifest are ignored."""
    found = _checkpoints(Path(directory))
    return found[-1][1] if found else None


def older_checkpoint(path: str | Path) -> Path | None:
    """The complete checkpoint saved just before ``path`` in the same directory (None: none).

    For a ``path`` that is not complete itself (its save order is unknown), the newest complete
    one with a smaller step number.
    """
    path = Path(path)
    found = _checkpoints(path.parent)
    paths = [p for _, p in found]
    if path in paths:
        here = paths.index(path)
        return paths[here - 1] if here > 0 else None
    match = _NAME.fullmatch(path.name)
    earlier = [p for (_, step), p in found if match and step < int(match.group(1))]
    return earlier[-1] if earlier else None


def checkpoint_problem(folder: str | Path) -> str:
    """``""`` when ``folder`` is a complete checkpoint, else why it is not (e.g. ``"no such
    folder"``, ``"incomplete: no checkpoint.json"``, ``"model.safetensors is missing"``)."""
    folder = Path(folder)
    return _inspect(folder)[1] if folder.is_dir() else "no such folder"
