"""Anchor terms on disk and in strategy state: safetensors with names and shapes, checked on load.

A file written by :func:`write_terms` holds, per term ``t``, the anchor ``θ*_t`` and optionally
the weight ``w_t`` (EWC's Fisher) of every protected parameter, plus a JSON header with the
parameter names and shapes and the model class, so that loading into another model fails with a
message naming the first parameter that does not match.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from retain.errors import RetainError
from retain.strategies.anchored import AnchorStore, AnchorTerm
from retain.tensor_files import read_safetensors, write_safetensors

__all__ = ["read_terms", "term_from_state", "term_state", "write_terms"]

_META_KEY = "retain.anchors"


def term_state(term: AnchorTerm, prefix: str, weight_key: str) -> dict[str, Tensor]:
    """``{prefix}anchor.<name>`` and ``{prefix}<weight_key>.<name>`` tensors of ``term``."""
    state = {f"{prefix}anchor.{n}": t for n, t in term.anchor.items()}
    if term.weight is not None:
        state.update({f"{prefix}{weight_key}.{n}": t for n, t in term.weight.items()})
    return state


def term_from_state(
    state: Mapping[str, Any], prefix: str, weight_key: str | None, store: AnchorStore
) -> AnchorTerm:
    """The term :func:`term_state` wrote under ``prefix`` (tensors converted to ``store``'s)."""
    anchor_prefix = f"{prefix}anchor."
    anchor = {k[len(anchor_prefix) :]: v for k, v in state.items() if k.startswith(anchor_prefix)}
    if not anchor:
        raise RetainError(
            f"{store.owner} state has no {anchor_prefix}* tensors; pass its own state"
        )
    weight = None
    if weight_key is not None:
        weight_prefix = f"{prefix}{weight_key}."
        weight = {
            k[len(weight_prefix) :]: v for k, v in state.items() if k.startswith(weight_prefix)
        }
        if set(weight) != set(anchor):
            missing = sorted(set(weight) ^ set(anchor))[0]
            raise RetainError(
                f"{store.owner} state under {prefix!r} has an anchor or a {weight_key} for "
                f"{missing!r} but not both; the file is damaged, save it again"
            )
        weight = {n: store.stored(weight[n]) for n in anchor}
    return AnchorTerm({n: store.stored(t) for n, t in anchor.items()}, weight)


def write_terms(
    path: str | Path, terms: list[AnchorTerm], weight_key: str, meta: Mapping[str, Any]
) -> Path:
    """Save ``terms`` as ``task<t>.anchor.<name>`` / ``task<t>.<weight_key>.<name>`` tensors, with
    the parameter names and shapes and ``meta`` in the header, atomically."""
    tensors: dict[str, Tensor] = {}
    shapes: dict[str, list[int]] = {}
    for t, term in enumerate(terms):
        for key, value in term_state(term, f"task{t}.", weight_key).items():
            tensors[key] = value
        shapes.update({n: list(a.shape) for n, a in term.anchor.items()})
    header = {"parameters": shapes, "num_tasks": len(terms), **meta}
    return write_safetensors(path, tensors, {_META_KEY: json.dumps(header)})


def read_terms(
    path: str | Path, model: nn.Module, weight_key: str, store: AnchorStore
) -> tuple[list[AnchorTerm], dict[str, Any]]:
    """The terms and header :func:`write_terms` saved, after checking they fit ``model``.

    Every saved parameter must exist in ``model`` with the same shape; otherwise a
    :class:`RetainError` names the first mismatching parameter.
    """
    tensors, metadata = read_safetensors(path, store.owner)
    raw = metadata.get(_META_KEY)
    if raw is None:
        raise RetainError(f"{str(path)!r} was not saved by {store.owner}; pass a file it saved")
    header: dict[str, Any] = json.loads(raw)
    named = dict(model.named_parameters())
    saved_class = header.get("model_class", "another model")
    for name, shape in header["parameters"].items():
        param = named.get(name)
        if param is None or list(param.shape) != list(shape):
            found = "is missing" if param is None else f"has shape {list(param.shape)}"
            raise RetainError(
                f"{str(path)!r} belongs to a different model: its parameter {name!r} (shape "
                f"{list(shape)}, from {saved_class}) {found} in {type(model).__name__}; "
                "estimate the Fisher on this model"
            )
    terms = [
        term_from_state(tensors, f"task{t}.", weight_key, store)
        for t in range(int(header["num_tasks"]))
    ]
    return terms, header
