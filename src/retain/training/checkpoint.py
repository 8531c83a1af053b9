"""Training checkpoints that resume bit-identically: safetensors and JSON, never pickle.

``save_checkpoint(directory, ...)`` writes ``directory/step-<n>/``::

    checkpoint.json         manifest, written last: format version, retain/torch versions, save
                            sequence number, world size, model fingerprint (each state-dict name,
                            shape, dtype; tied-tensor aliases), optimizer and scheduler classes,
                            strategy names, bytes + SHA-256 of each file
    model.safetensors       model.state_dict(); a tensor tied to an earlier one is stored once
    optimizer.safetensors   optimizer.state_dict(): tensors as ``state.<param index>.<name>``, the
                            rest (param_groups, tuples, ints, None) as typed JSON in the header
    scheduler.json          scheduler.state_dict() (LambdaLR drops its functions, as torch does)
    strategies.safetensors  the strategy chain's state (:mod:`retain.strategies.state`)
    tensors.safetensors     extra tensors, e.g. a monitor's best weights
    position.json           where the loop is (task, step, epoch, ...)
    rng.safetensors         torch CPU/CUDA, Python ``random`` and NumPy RNG states (one process);
                            ``rng.<rank>.safetensors`` per rank under torch.distributed

A model sharded with FSDP2 (``fully_shard``) is saved by every rank, and differently:

    shards/                 the weights and the optimizer's tensor state, each rank's rows in
                            its own safetensors file (``torch.distributed.checkpoint``;
                            :mod:`retain.training.sharded_checkpoint`)
    optimizer.json          the optimizer's param_groups and non-tensor state
    strategies.<rank>.safetensors, tensors.<rank>.safetensors
                            each rank's strategy state and extra tensors, holding its local shards
                            (anchors, Fisher) as they are

and the manifest names the world size it was sharded over. Such a checkpoint resumes only on a
model sharded the same way over as many processes (the per-rank strategy state and RNG are
those ranks'); anything else is refused with one line before anything changes. Exported weights
stay whole safetensors (:func:`retain.training.sharded_checkpoint` is only for resuming).

``n`` is ``position["global_step"]`` when given, else the save's sequence number. Everything is
written into a hidden staging sibling ``.staging-step-<n>`` and renamed into place with
``os.replace`` (atomic on one filesystem), so a kill at any moment leaves the previous complete
checkpoints and at most a hidden staging folder, which :func:`latest_checkpoint` ignores and the
next save deletes. Which folders are complete: :mod:`retain.training.checkpoint_scan`; a file that
fails verification when loaded raises :class:`CorruptCheckpointError`. Under torch.distributed
with more than one process only rank 0 writes shared files and every rank writes its own RNG file
into the staging folder, so ``directory`` must be on a filesystem every rank sees; a failure on any
rank is raised on every rank (a flag all-reduce).

Resuming exactly: build the model and strategies as for the original run and call
``load_checkpoint(path, model=m, strategies=s, rng=False)``; begin the task the position names
(``s.begin_task`` rebuilds the same training data from the restored state); build the optimizer and
scheduler; then ``load_checkpoint(path, model=m, optimizer=o, scheduler=sch)`` restores their state,
the weights again (undoing anything ``begin_task`` changed) and, last, the RNG.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from retain.distributed import is_sharded, local_tensor, rank_and_world
from retain.errors import RetainError
from retain.strategies.base import Strategy
from retain.strategies.chain import as_chain
from retain.strategies.state import load_strategy_state, save_strategy_state
from retain.tensor_files import read_safetensors, write_safetensors
from retain.training.checkpoint_files import (
    CorruptCheckpointError,
    capture_rng,
    read_tree,
    restore_rng,
    write_tree,
)
from retain.training.checkpoint_scan import (
    FORMAT,
    MANIFEST,
    CheckpointScan,
    _checkpoints,
    latest_checkpoint,
    older_checkpoint,
    scan_checkpoints,
)
from retain.training.sharded_checkpoint import (
    check_sharding,
    load_sharded_checkpoint,
    write_sharded,
)

__all__ = [
    "CheckpointScan",
    "CorruptCheckpointError",
    "capture_rng",
    "latest_checkpoint",
    "load_checkpoint",
    "older_checkpoint",
    "restore_rng",
    "save_checkpoint",
    "scan_checkpoints",
]

FORMAT_VERSION = 1
_FIX = "resume with the same model and strategies"


def _unwrap(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel / DataParallel / torch.compile wrappers."""
    wrappers = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    while True:
        inner = model.module if isinstance(model, wrappers) else getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def _model_state(model: nn.Module) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The state dict without aliases (a tensor that is an earlier one: tied weights), and the
    fingerprint: each name's shape and dtype, the aliases, the number of values."""
    unique: dict[str, Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[Any, ...], str] = {}
    entries = []
    for name, t in _unwrap(model).state_dict().items():
        if not torch.is_tensor(t):
            raise RetainError(f"model state {name!r} is a {type(t).__name__}, not a tensor")
        entries.append([name, list(t.shape), str(t.dtype).removeprefix("torch.")])
        here = local_tensor(t)  # a sharded weight's own rows: its storage tells ties apart
        storage = here.untyped_storage().data_ptr()
        ident = (here.device, storage, here.storage_offset(), t.shape, here.stride(), t.dtype)
        if t.numel() and ident in seen:
            aliases[name] = seen[ident]
        else:
            seen.setdefault(ident, name)
            unique[name] = t
    count = sum(t.numel() for t in unique.values())
    info = {"class": type(_unwrap(model)).__name__, "parameters": count, "entries": entries}
    return unique, {**info, "aliases": aliases}


def _model_difference(saved: dict[str, Any], mine: dict[str, Any]) -> str | None:
    theirs = {e[0]: e[1:] for e in saved["entries"]}
    ours = {e[0]: e[1:] for e in mine["entries"]}
    for name, spec in theirs.items():
        if name not in ours:
            return f"{name!r} is missing here"
        if ours[name] != spec:
            return f"{name!r} is {spec[0]} {spec[1]} there, {ours[name][0]} {ours[name][1]} here"
    extra = [n for n in ours if n not in theirs]
    if extra:
        return f"{extra[0]!r} is not in the checkpoint"
    if saved["aliases"] != mine["aliases"]:
        return f"tied tensors differ: {saved['aliases']} there, {mine['aliases']} here"
    return None


def _file_info(path: Path, sync: bool = False) -> dict[str, Any]:
    """Size and SHA-256 of ``path``; ``sync`` also flushes it to disk."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
        if sync:
            os.fsync(f.fileno())
    return {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def _phase(world: int, cleanup: Path | None, work: Callable[[], None]) -> None:
    """Run ``work``; when it failed on any rank (one flag all-reduce under torch.distributed),
    delete ``cleanup`` and raise on every rank, so no rank waits for a failed one."""
    error: Exception | None = None
    try:
        work()
    except Exception as exc:
        error = exc
    failed = error is not None
    if world > 1:
        dist = torch.distributed
        nccl = dist.get_backend() == "nccl"
        flag = torch.tensor([int(failed)], device="cuda" if nccl else "cpu")
        dist.all_reduce(flag)
        failed = bool(flag.item())
    if failed:
        if cleanup is not None:
            shutil.rmtree(cleanup, ignore_errors=True)
        if error is not None:
            raise error
        raise RetainError("another process failed while writing the checkpoint; see its error")


def _rng_file(rank: int, world: int) -> str:
    return f"rng.{rank}.safetensors" if world > 1 else "rng.safetensors"


def save_checkpoint(
    directory: str | Path,
    *,
    model: nn.Module,
    optimizer: Optimizer | None = None,
    scheduler: Any | None = None,
    strategies: Strategy | Sequence[Strategy] | None = None,
    position: dict[str, Any],
    tensors: dict[str, Tensor] | None = None,
    keep: int | None = None,
) -> Path:
    """Write a complete checkpoint to ``directory/step-<n>/`` atomically and return its path.

    ``n`` is ``position["global_step"]`` (an int) when present, else this save's sequence number
    (one more than the newest checkpoint's). A checkpoint of the same name is replaced. ``keep=K``
    then deletes all but the K most recently saved complete checkpoints. Under torch.distributed
    every rank must call it (it is collective); see the module docstring for the layout.
    """
    directory = Path(directory)
    if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
        raise RetainError(f"keep must be a whole number >= 1 (or None to keep all), got {keep!r}")
    if not isinstance(position, dict) or not all(isinstance(k, str) for k in position):
        raise RetainError("position must be a dict with string keys (task, step, epoch, ...)")
    step = position.get("global_step")
    if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 0):
        raise RetainError(f"position['global_step'] must be a whole number >= 0, got {step!r}")
    rank, world = rank_and_world()
    sharded = is_sharded(model)
    found = _checkpoints(directory)
    sequence = found[-1][0][0] + 1 if found else 1
    name = f"step-{sequence if step is None else step}"
    final, staging = directory / name, directory / f".staging-{name}"
    chain = None if strategies is None else as_chain(strategies)
    manifest: dict[str, Any] = {"format": FORMAT, "format_version": FORMAT_VERSION}

    def begin() -> None:
        if rank == 0:
            directory.mkdir(parents=True, exist_ok=True)
            for stale in directory.glob(".staging-step-*"):
                shutil.rmtree(stale, ignore_errors=True)
            staging.mkdir()

    def write() -> None:
        write_tree(staging / _rng_file(rank, world), capture_rng(), "RNG state")
        if sharded:
            write_sharded(staging, rank, model, optimizer, chain, tensors)
        if rank != 0:
            return
        manifest["model"] = _model_state(model)[1]
        if not sharded:
            unique = _model_state(model)[0]
            write_safetensors(staging / "model.safetensors", unique, {"format": "pt"})
        for what, obj in (("optimizer", optimizer), ("scheduler", scheduler)):
            manifest[what] = None if obj is None else {"class": type(obj).__name__}
            if obj is not None and not (sharded and what == "optimizer"):
                suffix = "safetensors" if what == "optimizer" else "json"
                write_tree(staging / f"{what}.{suffix}", obj.state_dict(), what)
        manifest["strategies"] = None if chain is None else [s.name for s in chain]
        if chain is not None and not sharded:
            save_strategy_state(chain, staging / "strategies.safetensors")
        if tensors and not sharded:
            write_tree(staging / "tensors.safetensors", dict(tensors), "tensors")
        write_tree(staging / "position.json", position, "position")

    def publish() -> None:
        if rank != 0:
            return
        from retain.version import __version__

        found = sorted(f for f in staging.rglob("*") if f.is_file())
        files = {f.relative_to(staging).as_posix(): _file_info(f, sync=True) for f in found}
        manifest.update(sequence=sequence, world_size=world, files=files)
        manifest["sharded"] = sharded
        manifest.update(retain_version=__version__, torch_version=torch.__version__)
        write_tree(staging / MANIFEST, manifest, "manifest")
        _file_info(staging / MANIFEST, sync=True)
        old = directory / f".staging-{name}-replaced"
        if final.exists():
            os.replace(final, old)
        os.replace(staging, final)  # the commit point: atomic on one filesystem
        shutil.rmtree(old, ignore_errors=True)
        with contextlib.suppress(OSError):  # make the rename durable where directories sync
            fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        for _, older in _checkpoints(directory)[:-keep] if keep is not None else ():
            trash = directory / f".staging-{older.name}-deleted"
            os.replace(older, trash)
            shutil.rmtree(trash, ignore_errors=True)

    _phase(world, None, begin)
    _phase(world, staging if rank == 0 else None, write)
    _phase(world, staging if rank == 0 else None, publish)
    return final


def load_checkpoint(
    path: str | Path,
    *,
    model: nn.Module | None,
    optimizer: Optimizer | None = None,
    scheduler: Any | None = None,
    strategies: Strategy | Sequence[Strategy] | None = None,
    rng: bool = True,
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Restore what :func:`save_checkpoint` wrote into the objects given (None: left alone) and
    return ``(position, tensors)`` (the extra tensors, on CPU); ``rng`` restores this rank's RNG.

    First checks, raising :class:`RetainError` before anything changes: the manifest, the model's
    state-dict names, shapes, dtypes and ties, the optimizer's and scheduler's classes, the
    strategy names in order, (with ``rng``) the number of processes, and the size and SHA-256 of
    each file this call reads.
    """
    path = Path(path)
    manifest = read_tree(path / MANIFEST, "checkpoint manifest")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise RetainError(f"{str(path)!r} is not a retain checkpoint; pass a step-<n> folder")
    if manifest.get("format_version") != FORMAT_VERSION:
        version = manifest.get("format_version")
        raise RetainError(f"checkpoint {str(path)!r} has format {version}, not {FORMAT_VERSION}")
    rank, world = rank_and_world()
    sharded = bool(manifest.get("sharded", False))
    check_sharding(path, manifest, sharded, model, world)
    if model is not None:
        saved, (_, mine) = manifest["model"], _model_state(model)
        diff = _model_difference(saved, mine)
        if diff is not None:
            raise RetainError(
                f"checkpoint {str(path)!r} was saved from a model with {saved['parameters']:,} "
                f"parameters in {len(saved['entries'])} tensors; this model has "
                f"{mine['parameters']:,} in {len(mine['entries'])} ({diff}); {_FIX}"
            )
    for what, obj in (("optimizer", optimizer), ("scheduler", scheduler)):
        kind = (manifest.get(what) or {}).get("class")
        if obj is not None and kind != type(obj).__name__:
            raise RetainError(
                f"checkpoint {str(path)!r} holds {kind or 'no'} {what} state, not "
                f"{type(obj).__name__}; build the {what} as when the checkpoint was saved"
            )
    chain = None if strategies is None else as_chain(strategies)
    if chain is not None and (manifest["strategies"] or []) != [s.name for s in chain]:
        raise RetainError(
            f"checkpoint {str(path)!r} was saved with strategies {manifest['strategies'] or []}; "
            f"these are {[s.name for s in chain]}; {_FIX}"
        )
    if rng and manifest["world_size"] != world:
        raise RetainError(
            f"checkpoint {str(path)!r} was saved by {manifest['world_size']} process(es); this "
            f"run has {world}; resume with as many processes (or pass rng=False)"
        )
    given = {"model": model, "optimizer": optimizer, "strategies": chain, "scheduler": scheduler}
    reads = {f for f in manifest["files"] if given.get(_restores(f)) is not None}
    extra_file = f"tensors.{rank}.safetensors" if sharded else "tensors.safetensors"
    reads |= {"position.json", extra_file} | ({_rng_file(rank, world)} if rng else set())
    for name in reads:
        info = manifest["files"].get(name)
        if info is not None and (not (path / name).is_file() or _file_info(path / name) != info):
            raise CorruptCheckpointError(
                f"checkpoint file {str(path / name)!r} is missing, truncated or corrupt (size or "
                "SHA-256 differs from the manifest)"
            )
    position = read_tree(path / "position.json", "checkpoint position")
    extra: dict[str, Tensor] = {}
    if (path / extra_file).is_file():
        extra = read_tree(path / extra_file, "checkpoint tensors")
    if sharded:
        load_sharded_checkpoint(path, rank, model, optimizer, chain, manifest)
        model = optimizer = chain = None  # restored above
    opt_state: Any = (
        None if optimizer is None else read_tree(path / "optimizer.safetensors", "optimizer")
    )
    sch_state = None if scheduler is None else read_tree(path / "scheduler.json", "scheduler")
    rng_state = read_tree(path / _rng_file(rank, world), "RNG state") if rng else None
    if model is not None:
        unique, _ = read_safetensors(path / "model.safetensors", "checkpoint model")
        aliases = manifest["model"]["aliases"]
        full = {e[0]: unique[aliases.get(e[0], e[0])] for e in manifest["model"]["entries"]}
    if chain is not None and manifest["strategies"] is not None:
        load_strategy_state(chain, path / "strategies.safetensors")
    if optimizer is not None:
        try:
            optimizer.load_state_dict(opt_state)
        except (ValueError, KeyError, TypeError) as exc:
            msg = f"optimizer state in {str(path)!r} does not fit this optimizer ({exc}); {_FIX}"
            raise RetainError(msg) from exc
    if scheduler is not None:
        scheduler.load_state_dict(sch_state)
    if model is not None:
        _unwrap(model).load_state_dict(full, strict=True)
    if rng_state is not None:
        restore_rng(rng_state)
    return position, extra


def _restores(name: str) -> str:
    """What a checkpoint file restores: ``model`` for DCP's shards (weights and optimizer
    tensors), else its name up to the first dot (``strategies.1.safetensors``: strategies)."""
    return "model" if name.startswith("shards/") else name.split(".")[0]
