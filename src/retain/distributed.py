"""Which process is the main one, under ``accelerate launch`` / ``torchrun`` or alone, which
device it computes on, and whether a model's parameters are sharded across processes (FSDP2).

Nothing in retain assumes a single process: every rank may evaluate, but only the main process
writes run directories and reports. A model wrapped with ``torch.distributed.fsdp.fully_shard``
(FSDP2) holds each parameter as a ``DTensor`` sharded on dim 0: rank ``r`` of ``W`` stores rows
``r·⌈n/W⌉ .. min((r+1)·⌈n/W⌉, n)`` of an ``n``-row parameter (the last ranks may hold fewer rows, or
none), and after ``backward`` each ``.grad`` is a ``DTensor`` sharded the same way. Code that works
on such a model touches only :func:`local_tensor` views and all-reduces what it sums
(:func:`all_reduce_sum`); a strategy that cannot calls :func:`refuse_sharded`.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar, cast

import torch
from torch import Tensor, nn

from retain.errors import RetainError

__all__ = [
    "all_reduce_sum",
    "auto_device",
    "from_main_process",
    "init_distributed",
    "is_main_process",
    "is_sharded",
    "local_tensor",
    "per_rank_state",
    "per_rank_state_active",
    "rank_and_world",
    "rank_share",
    "refuse_sharded",
    "resolve_device",
    "shard_model",
    "whole_tensor",
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


def is_sharded(model: nn.Module) -> bool:
    """True when ``model`` (or a submodule) is wrapped with FSDP2's ``fully_shard`` or holds a
    ``DTensor`` parameter, i.e. when each process holds only a shard of some weights."""
    dtensor = _dtensor_type()
    if dtensor is None:
        return False
    fsdp = getattr(torch.distributed, "fsdp", None)
    module_type = getattr(fsdp, "FSDPModule", None) if fsdp is not None else None
    if module_type is not None and any(isinstance(m, module_type) for m in model.modules()):
        return True
    return any(isinstance(p, dtensor) for p in model.parameters())


def refuse_sharded(model: nn.Module, owner: str, reason: str) -> None:
    """Raise a one-line :class:`RetainError` when ``model`` is sharded (:func:`is_sharded`):
    ``owner`` (the strategy) cannot train it, for ``reason``."""
    if is_sharded(model):
        raise RetainError(
            f"{owner} cannot train an FSDP-sharded model yet: {reason}; train it unsharded "
            "(DDP or one process) or drop this strategy"
        )


def local_tensor(tensor: Tensor) -> Tensor:
    """This process's shard of a ``DTensor`` (a view sharing its storage, so in-place updates
    reach the ``DTensor``); any other tensor unchanged."""
    dtensor = _dtensor_type()
    if dtensor is not None and isinstance(tensor, dtensor):
        local: Tensor = cast(Any, tensor).to_local()
        return local
    return tensor


def whole_tensor(tensor: Tensor) -> Tensor:
    """The whole value of a sharded ``DTensor`` (all-gathered: every process must call it); any
    other tensor unchanged."""
    dtensor = _dtensor_type()
    if dtensor is not None and isinstance(tensor, dtensor):
        whole: Tensor = cast(Any, tensor).full_tensor()
        return whole
    return tensor


@functools.cache
def _dtensor_type() -> type | None:
    """``torch.distributed.tensor.DTensor``, or None where torch has no distributed support."""
    if not torch.distributed.is_available():
        return None
    from torch.distributed.tensor import DTensor

    return DTensor


def all_reduce_sum(value: Tensor) -> Tensor:
    """``value`` summed over every process (in place; unchanged in a single process)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(value)
    return value


T = TypeVar("T")


def rank_share(items: Sequence[T]) -> list[tuple[T, bool]]:
    """This process's share of ``items`` for data-parallel evaluation: ``(item, counted)`` pairs,
    items ``rank, rank + W, rank + 2W, ...`` counted, then the first item again, not counted, until
    every rank has ``⌈len(items) / W⌉`` pairs. Every rank thus runs the same number of forwards,
    which a sharded (FSDP2) model needs: each forward all-gathers its weights with every rank.
    The counted pairs of all ranks are each item exactly once. One process: every item, counted.

    >>> rank_share(["a", "b", "c"])
    [('a', True), ('b', True), ('c', True)]
    """
    rank, world = rank_and_world()
    if world == 1:
        return [(item, True) for item in items]
    mine = [(item, True) for item in items[rank::world]]
    rounds = -(-len(items) // world)
    return mine + [(items[0], False) for _ in range(rounds - len(mine))]


_PER_RANK = contextvars.ContextVar("retain_per_rank_state", default=False)


@contextlib.contextmanager
def per_rank_state() -> Iterator[None]:
    """Within it, strategies holding local shards of a sharded model save and load them as they
    are: each rank's file of a sharded checkpoint, which only the same sharding can read back."""
    token = _PER_RANK.set(True)
    try:
        yield
    finally:
        _PER_RANK.reset(token)


def per_rank_state_active() -> bool:
    """True inside :func:`per_rank_state`."""
    return _PER_RANK.get()


def shard_model(model: nn.Module) -> nn.Module:
    """Shard ``model`` over the process group with FSDP2 (``fully_shard``) and return it.

    The units, each all-gathered for its forward and backward and freed after: every
    transformer block of a Hugging Face model (the classes its ``_no_split_modules`` names: the
    decoder or encoder layers), else every ``nn.Linear`` and ``nn.Embedding``; then the root,
    which holds what is left (embeddings, final norm, head). Call it after
    ``strategies.prepare(model)`` (PEFT wraps the model first, so the adapters are sharded with
    their blocks) and before the optimizer is built. Alone (no process group), the model is
    returned unchanged.
    """
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return model
    from torch.distributed.fsdp import fully_shard

    names = set(_no_split_modules(model))
    units = [m for m in model.modules() if type(m).__name__ in names]
    if not units:
        units = [m for m in model.modules() if isinstance(m, nn.Linear | nn.Embedding)]
    for unit in units:
        fully_shard(unit)
    fully_shard(model)
    return model


def _no_split_modules(model: nn.Module) -> list[str]:
    """The block class names of a Hugging Face model (also under a PEFT wrapper)."""
    for module in model.modules():
        found = getattr(module, "_no_split_modules", None)
        if found:
            return [str(name) for name in found]
    return []


def from_main_process(obj: Any) -> Any:
    """``obj`` as rank 0 has it (a broadcast of a picklable object every rank must join, between
    processes of one trusted job) when ``torch.distributed`` is initialised, else ``obj``: a
    decision taken once and the same on every rank."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
