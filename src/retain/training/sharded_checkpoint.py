"""The model and optimizer of an FSDP2-sharded run in a checkpoint, through
``torch.distributed.checkpoint`` (DCP) with its safetensors storage, never pickle; and each
rank's part of such a checkpoint (:func:`write_sharded`, :func:`load_sharded_checkpoint`) for
:mod:`retain.training.checkpoint`, whose docstring describes the folder.

:func:`save_sharded` writes, collectively (every rank calls it), into ``folder``::

    shard-0000<r+1>-model-00001-of-00001.safetensors   rank r's shards of every weight and of the
                                                     optimizer's tensor state, with DCP's offsets
                                                     in the safetensors header

through ``torch.distributed.checkpoint.HuggingFaceStorageWriter(save_distributed=True)``, and
returns the optimizer's remaining state (``param_groups``, non-tensor entries) for the caller to
write once as JSON. The keys are ``model.<name>`` (the fully qualified parameter and buffer names
of ``torch.distributed.checkpoint.state_dict.get_state_dict``) and ``optimizer.<name>.<entry>``
(``exp_avg``, ``step``, ``momentum_buffer``...): names, not positions, so the files describe the
weights whatever the optimizer's parameter order.

:func:`load_sharded` reads them back into a model sharded the same way (and its optimizer):
DCP reads each rank's rows from whichever files hold them, so the weights and optimizer state
themselves would reshard to another world size, but a retain checkpoint also holds per-rank
strategy state and RNG, so :func:`retain.training.checkpoint.load_checkpoint` refuses another
world size with one line (resume with as many processes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from retain.distributed import is_sharded, local_tensor, per_rank_state
from retain.errors import RetainError
from retain.strategies.base import Strategy
from retain.strategies.state import load_strategy_state, save_strategy_state
from retain.training.checkpoint_files import read_tree, write_tree

__all__ = [
    "check_sharding",
    "load_sharded",
    "load_sharded_checkpoint",
    "save_sharded",
    "write_sharded",
]


def _state(
    model: nn.Module, optimizer: Optimizer | None
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """DCP's state dicts of ``model`` and ``optimizer`` (sharded ``DTensor`` values; an optimizer
    without state yet gets it initialised, as DCP does)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

    if optimizer is None:
        return get_model_state_dict(model), None
    model_state, optimizer_state = get_state_dict(model, optimizer)
    return model_state, dict(optimizer_state)


def _flat(
    model_state: dict[str, Any], optimizer_state: dict[str, Any] | None
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The tensors under their file keys (module docstring), and the optimizer's other state."""
    tensors = {f"model.{name}": value for name, value in model_state.items()}
    rest: dict[str, Any] = {"state": {}, "param_groups": None}
    if optimizer_state is not None:
        for name, entries in optimizer_state["state"].items():
            for key, value in entries.items():
                if torch.is_tensor(value):
                    tensors[f"optimizer.{name}.{key}"] = value
                else:
                    rest["state"].setdefault(name, {})[key] = value
        rest["param_groups"] = optimizer_state["param_groups"]
    return tensors, rest


def save_sharded(folder: Path, model: nn.Module, optimizer: Optimizer | None) -> dict[str, Any]:
    """Write this rank's shards of ``model`` and ``optimizer`` into ``folder`` (collective);
    return the optimizer's non-tensor state (``{"state": ..., "param_groups": ...}``)."""
    from torch.distributed.checkpoint.hf_storage import HuggingFaceStorageWriter
    from torch.distributed.checkpoint.state_dict_saver import save

    tensors, rest = _flat(*_state(model, optimizer))
    save(tensors, storage_writer=HuggingFaceStorageWriter(str(folder), save_distributed=True))
    return rest


def load_sharded(
    folder: Path, model: nn.Module, optimizer: Optimizer | None, rest: dict[str, Any] | None
) -> None:
    """Restore ``model`` (and ``optimizer``, with ``rest`` from :func:`save_sharded`) from the
    shards in ``folder`` (collective)."""
    from torch.distributed.checkpoint.hf_storage import HuggingFaceStorageReader
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_state_dict
    from torch.distributed.checkpoint.state_dict_loader import load

    model_state, optimizer_state = _state(model, optimizer)
    tensors, _ = _flat(model_state, optimizer_state)
    load(tensors, storage_reader=HuggingFaceStorageReader(str(folder)))
    model_state = {name: tensors[f"model.{name}"] for name in model_state}
    if optimizer is None or optimizer_state is None or rest is None:
        set_model_state_dict(model, model_state)
        return
    for name, entries in optimizer_state["state"].items():
        for key in list(entries):
            if torch.is_tensor(entries[key]):
                entries[key] = tensors[f"optimizer.{name}.{key}"]
            else:
                entries[key] = rest["state"][name][key]
    optimizer_state["param_groups"] = rest["param_groups"]
    set_state_dict(
        model,
        optimizer,
        model_state_dict=model_state,
        optim_state_dict=optimizer_state,
    )


def write_sharded(
    staging: Path,
    rank: int,
    model: nn.Module,
    optimizer: Optimizer | None,
    chain: Strategy | None,
    tensors: dict[str, Tensor] | None,
) -> None:
    """Every rank's part of a sharded model's checkpoint (module docstring); collective."""
    rest = save_sharded(staging / "shards", model, optimizer)
    if rank == 0 and optimizer is not None:
        write_tree(staging / "optimizer.json", rest, "optimizer")
    if chain is not None:
        with per_rank_state():
            save_strategy_state(chain, staging / f"strategies.{rank}.safetensors")
    if tensors:
        mine = {k: local_tensor(v).detach().contiguous() for k, v in tensors.items()}
        write_tree(staging / f"tensors.{rank}.safetensors", mine, "tensors")


def check_sharding(
    path: Path, manifest: dict[str, Any], sharded: bool, model: nn.Module | None, world: int
) -> None:
    """Refuse, with one line, a sharded checkpoint for an unsharded model or another world size,
    and a whole one for a sharded model."""
    if model is None:
        return
    if sharded and (not is_sharded(model) or manifest["world_size"] != world):
        raise RetainError(
            f"checkpoint {str(path)!r} holds FSDP2 shards of {manifest['world_size']} process(es); "
            f"this run has {world} process(es) and the model is "
            f"{'sharded' if is_sharded(model) else 'not sharded'}; resume it with as many "
            "processes and the model sharded as when it was saved"
        )
    if not sharded and is_sharded(model):
        raise RetainError(
            f"checkpoint {str(path)!r} holds a whole (unsharded) model; resume it without FSDP2, "
            "or start the sharded run afresh"
        )


def load_sharded_checkpoint(
    path: Path,
    rank: int,
    model: nn.Module | None,
    optimizer: Optimizer | None,
    chain: Strategy | None,
    manifest: dict[str, Any],
) -> None:
    """Every rank's part of restoring a sharded checkpoint (strategies, then model and optimizer;
    collective when a model is given)."""
    if chain is not None and manifest["strategies"] is not None:
        with per_rank_state():
            load_strategy_state(chain, path / f"strategies.{rank}.safetensors")
    if model is None:
        return
    rest = None if optimizer is None else read_tree(path / "optimizer.json", "optimizer")
    load_sharded(path / "shards", model, optimizer, rest)
