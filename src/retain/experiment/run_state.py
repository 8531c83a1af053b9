"""Whether a folder may take a run, and putting it in order: a run directory's state (new, to
resume, finished, of another config, or not a run directory at all), preparing it, and removing
what a fresh run wrote when it failed before anything worth resuming. The folder's contents are
described in :mod:`retain.experiment.runner`."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from retain.atomic_files import write_text
from retain.distributed import is_main_process
from retain.errors import RetainError
from retain.experiment.config import config_from_dict
from retain.output_dirs import (
    MARKER,
    check_output_parent,
    check_replaceable,
    output_kind,
    write_marker,
)
from retain.training.checkpoint import latest_checkpoint

__all__ = [
    "check_run_dir",
    "has_trained",
    "prepare_run_dir",
    "run_state",
    "same_config",
    "undo_fresh_run",
]


def run_state(out: Path, config_yaml: str) -> str:
    """``"new"``, ``"resume"``, ``"finished"``, ``"different"`` or ``"foreign"`` for ``out``.

    A non-empty folder is a run only when it holds retain's run marker
    (:mod:`retain.output_dirs`); anything else (a file, a link, a folder of the user's) is
    ``"foreign"``.
    """
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        return "foreign"
    if not out.is_dir() or not any(out.iterdir()):
        return "new"
    if output_kind(out) != "run":
        return "foreign"
    if (out / "results.json").is_file():
        return "finished"
    return "resume" if same_config(out / "config.yaml", config_yaml) else "different"


#: Settings that do not change what a run computes: a run resumes under other values.
_NOT_RESULTS = {"tracking"}


def same_config(stored: Path, config_yaml: str) -> bool:
    """Whether the run config in ``stored`` is ``config_yaml``'s, up to :data:`_NOT_RESULTS`
    (and defaults a file written by an earlier version left out)."""
    if not stored.is_file():
        return False
    text = stored.read_text(encoding="utf-8")
    if text == config_yaml:
        return True
    try:
        old, new = (config_from_dict(yaml.safe_load(t)) for t in (text, config_yaml))
    except (RetainError, yaml.YAMLError):
        return False
    return old.model_dump(exclude=_NOT_RESULTS) == new.model_dump(exclude=_NOT_RESULTS)


def check_run_dir(out: Path, config_yaml: str, overwrite: bool) -> str:
    """``out``'s :func:`run_state`, refusing what may not be run into (nothing is written)."""
    check_output_parent(out)
    state = run_state(out, config_yaml)
    if state == "foreign":
        raise RetainError(
            f"{str(out)!r} exists and is not a retain run directory (no {MARKER} of a run); "
            "choose another --out (it is never deleted, even with --overwrite)"
        )
    if state in ("finished", "different"):
        if not overwrite:
            what = (
                "a finished run (results.json)"
                if state == "finished"
                else "an unfinished run of a different config"
            )
            raise RetainError(
                f"{str(out)!r} holds {what}; choose another --out or pass --overwrite to replace it"
            )
        check_replaceable(out, "run")
    return state


def prepare_run_dir(out: Path, config_yaml: str, state: str) -> bool:
    """Make ``out`` ready for a run in ``state`` (only the main process writes); returns whether
    the folder was created here."""
    if not is_main_process():
        return False
    if state in ("finished", "different"):
        shutil.rmtree(out)  # retain's own files only: check_run_dir made sure
    created = not out.exists()
    out.mkdir(exist_ok=True)
    if state != "resume":
        write_marker(out, "run")
        write_text(out / "config.yaml", config_yaml)
    return created


def has_trained(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a complete checkpoint taken after at least one optimizer step
    (its ``step-<n>`` has ``n > 0``; ``step-0`` is only the starting point)."""
    folder = run_dir / "checkpoints"
    found = [latest_checkpoint(folder / part) for part in ("tasks", "steps")]
    return any(path is not None and path.name != "step-0" for path in found)


def undo_fresh_run(out: Path, created: bool) -> None:
    """Remove what a fresh run wrote into ``out`` when it failed before any optimizer step
    reached a checkpoint (nothing to resume from): the folder when this run created it, else
    only its contents. A run whose ``results.json`` was written is finished and kept."""
    if not is_main_process() or has_trained(out) or (out / "results.json").is_file():
        return
    if created:
        shutil.rmtree(out, ignore_errors=True)
        return
    for entry in out.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
