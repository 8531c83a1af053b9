"""Output folders that retain owns: a marker it writes first, the files it writes, and a lock.

Every folder retain writes as an output (a run, a sweep, a comparison, an audit, a diagnose)
holds a marker, written before anything else::

    .retain-output.json     {"format": "retain.output/1", "kind": "run", "retain": "0.1.0"}

A folder is retain's only when that marker is there and names the kind; common file names such as
``config.yaml`` or ``results.json`` never make it so. ``--overwrite`` replaces only a folder of
its own kind, and only when every entry in it is one that retain writes for that kind
(:data:`LAYOUTS`, :func:`foreign_entries`); a single other file makes it refuse, so a file that
retain did not write is never deleted.

:func:`output_lock` holds an exclusive lock on an output folder for the life of a command: a
second process that wants the same folder is refused at once with the holder's pid. The lock is
the kernel's (``flock``, through ``filelock``) on a hidden sibling ``.<name>.lock`` that holds the
holder's pid; the kernel drops it when its process dies, so a lock file left by a killed process
never blocks a resume, and the file is removed on release.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from retain.atomic_files import write_json
from retain.distributed import is_main_process
from retain.errors import RetainError

__all__ = [
    "LAYOUTS",
    "MARKER",
    "OUTPUT_FORMAT",
    "OutputKind",
    "check_output_parent",
    "check_replaceable",
    "foreign_entries",
    "output_kind",
    "output_lock",
    "write_marker",
]

OutputKind = Literal["run", "sweep", "comparison", "audit", "diagnose"]

#: The marker file's name and ``format``.
MARKER, OUTPUT_FORMAT = ".retain-output.json", "retain.output/1"

_REPORT = ("report.html", "plots", "plots/*.png")
#: Per kind, the entries (files and folders, relative paths, ``fnmatch`` patterns; ``/**`` is
#: everything below) that retain writes into an output folder of that kind. A sweep's run
#: folders (``<variant>/seed-<n>``) are checked as runs, against their own markers.
LAYOUTS: dict[str, tuple[str, ...]] = {
    "run": (
        "config.yaml",
        "results.json",
        "progress.json",
        "checkpoints",
        "checkpoints/**",
        *_REPORT,
    ),
    "sweep": ("sweep.yaml", "comparison.json", *_REPORT),
    "comparison": ("comparison.json", *_REPORT),
    "audit": ("results.json", "report.md", *_REPORT),
    "diagnose": ("results.json", *_REPORT),
}


def output_kind(folder: Path) -> str | None:
    """The kind named by ``folder``'s marker; None when it has no valid retain marker."""
    try:
        data = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != OUTPUT_FORMAT:
        return None
    kind = data.get("kind")
    return kind if isinstance(kind, str) and kind in LAYOUTS else None


def write_marker(folder: Path, kind: OutputKind) -> None:
    """Write ``folder``'s marker (atomically) naming ``kind`` and this retain's version."""
    from retain.version import __version__

    write_json(folder / MARKER, {"format": OUTPUT_FORMAT, "kind": kind, "retain": __version__})


def _own(relative: str, kind: str) -> bool:
    """Whether ``relative`` (posix) is an entry retain writes in a ``kind`` folder: the marker,
    a layout entry, a hidden temporary of an atomic write (``.<name>.<random>``) or a lock."""
    name = relative.rsplit("/", 1)[-1]
    if relative == MARKER or (name.startswith(".") and name.endswith(".lock")):
        return True
    patterns = LAYOUTS[kind]
    for pattern in patterns:
        if pattern.endswith("/**") and relative.startswith(pattern[:-2]):
            return True
        if fnmatch.fnmatchcase(relative, pattern):
            return True
    parent = relative.rsplit("/", 1)[0] + "/" if "/" in relative else ""
    # ``.results.json.x1y2z3``: an atomic write that a kill interrupted.
    return name.startswith(".") and any(
        fnmatch.fnmatchcase(parent + name[1:].rsplit(".", 1)[0], p) for p in patterns
    )


def foreign_entries(folder: Path, kind: str) -> list[str]:
    """Entries of ``folder`` (relative posix paths, sorted) that retain does not write for
    ``kind``: user files, links, folders of another shape. A sweep's ``<variant>/seed-<n>``
    folders must be runs (their own marker) and are checked as runs.

    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (root / "results.json").write_text("{}"); _ = (root / "notes.txt").write_text("mine")
    >>> foreign_entries(root, "audit")
    ['notes.txt']
    """
    found: list[str] = []

    def walk(here: Path, prefix: str, as_kind: str) -> None:
        for entry in sorted(here.iterdir()):
            relative = prefix + entry.name
            if entry.is_symlink():
                found.append(relative)
            elif as_kind == "sweep" and entry.is_dir() and not _own(relative, as_kind):
                # <variant>/: only run folders (and their locks) inside
                for run in sorted(entry.iterdir()):
                    name = f"{relative}/{run.name}"
                    if run.name.startswith(".") and run.name.endswith(".lock"):
                        continue
                    if run.is_dir() and not run.is_symlink() and output_kind(run) == "run":
                        found.extend(f"{name}/{r}" for r in foreign_entries(run, "run"))
                    else:
                        found.append(name)
            elif not _own(relative, as_kind):
                found.append(relative)
            elif entry.is_dir() and not relative.startswith("checkpoints"):
                walk(entry, relative + "/", as_kind)
            elif entry.is_dir():
                found.extend(_links_below(entry, relative + "/"))

    walk(folder, "", kind)
    return found


def _links_below(folder: Path, prefix: str) -> list[str]:
    """Symbolic links anywhere below ``folder`` (a deletion must never follow one)."""
    links = []
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(root) / name
            if path.is_symlink():
                links.append(prefix + path.relative_to(folder).as_posix())
    return links


def check_output_parent(out: Path) -> None:
    """Refuse an ``out`` that cannot be an output folder: a file, a symbolic link, the working
    directory or a folder above it, or one whose parent is missing or not writable."""
    shown = repr(str(out))
    if out.is_symlink():
        raise RetainError(
            f"--out {shown} is a symbolic link (to {os.readlink(out)!r}); pass the folder it "
            "points to, or a new folder"
        )
    if out.exists() and not out.is_dir():
        raise RetainError(f"--out {shown} is a file; pass a folder (--out DIR)")
    here = Path.cwd().resolve()
    if out.resolve() == here or out.resolve() in here.parents:
        raise RetainError(
            f"--out {shown} is the working directory or a folder above it; pass a new folder "
            "for the output (e.g. --out results/)"
        )
    parent = _existing_ancestor(out.resolve().parent)
    if not parent.is_dir():
        raise RetainError(
            f"--out {shown} lies under {str(parent)!r}, which is a file, not a folder; choose "
            "another --out"
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise RetainError(f"cannot write into {str(parent)!r}; choose another --out")


def _existing_ancestor(folder: Path) -> Path:
    """``folder`` or its nearest ancestor that exists (missing parents are created later)."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _make_parents(out: Path) -> list[Path]:
    """Create the missing parent folders of ``out``; returns them, deepest first."""
    made = []
    folder = out.resolve().parent
    while not folder.exists():
        made.append(folder)
        folder = folder.parent
    for path in reversed(made):
        try:
            path.mkdir()
        except FileExistsError:  # another process made it meanwhile
            pass
        except OSError as exc:
            raise RetainError(
                f"cannot create {str(path)!r} ({exc.strerror}); choose another --out"
            ) from None
    return made


def check_replaceable(out: Path, kind: OutputKind) -> None:
    """Refuse to replace the non-empty folder ``out`` unless it is retain's own output of
    ``kind`` holding nothing but retain's files (:func:`foreign_entries`)."""
    shown = repr(str(out))
    found = output_kind(out)
    if found is None:
        raise RetainError(
            f"{shown} is not a retain output folder (no {MARKER}); it is never deleted, even "
            "with --overwrite: choose another --out"
        )
    if found != kind:
        raise RetainError(
            f"{shown} holds a retain {found} output, not {_article(kind)} {kind}; it is never "
            "replaced by another kind: choose another --out"
        )
    foreign = foreign_entries(out, kind)
    if foreign:
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        raise RetainError(
            f"{shown} holds files retain did not write ({', '.join(foreign[:3])}{more}); move "
            "them out or choose another --out (nothing was deleted)"
        )


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def _lock_path(out: Path) -> Path:
    resolved = out.resolve()
    return resolved.parent / f".{resolved.name}.lock"


def _note_pid(fd: int) -> None:
    """Write this process's pid into the lock file just acquired (for the refusal message)."""
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)


@contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """Hold the exclusive lock of output folder ``out`` for the block (see the module docstring).

    Only the main process of a distributed run locks (the others write no output).
    Re-entrant within a process (a sweep locks its folder, then each run its own). A folder
    locked by another process is a :class:`RetainError` naming the holder's pid. Missing parent
    folders of ``out`` are created first, and removed again when the command leaves them empty
    (it failed before writing anything).
    """

    if not is_main_process():  # only the main process writes outputs (and locks them)
        yield
        return
    made = _make_parents(out)
    try:
        with _locked(out):
            yield
    finally:
        for folder in made:  # deepest first; only those this command created and left empty
            with contextlib.suppress(OSError):
                folder.rmdir()


@contextmanager
def _locked(out: Path) -> Iterator[None]:
    from filelock import FileLock, Timeout

    path = _lock_path(out)
    lock = FileLock(path, timeout=0, is_singleton=True, on_acquired=_note_pid)
    try:
        lock.acquire()
    except Timeout:
        try:
            holder = path.read_text(encoding="utf-8").strip() or "unknown"
        except OSError:
            holder = "unknown"
        raise RetainError(
            f"{str(out)!r} is in use by another retain process (pid {holder}); wait for it to "
            "finish or choose another --out"
        ) from None
    except OSError as error:
        raise RetainError(
            f"cannot lock {str(out)!r} ({error.strerror or error}); choose another --out"
        ) from None
    try:
        yield
    finally:
        if lock.lock_counter == 1:
            # Unlinked while still held: a process that opened the old file finds it unlinked
            # once it gets the lock, and filelock then retries on the new path.
            path.unlink(missing_ok=True)
        lock.release()
