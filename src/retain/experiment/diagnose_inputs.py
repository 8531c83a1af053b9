"""Inputs of ``retain diagnose``, checked before any model loads: the kinds of the two models,
a warning for an adapter recorded on another base, and the texts of a dataset."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from retain.assets.datasets import DATASETS, load_dataset
from retain.assets.models import ModelKind, default_kind, is_adapter_folder, model_folder
from retain.errors import RetainError

__all__ = ["adapter_warning", "dataset_texts", "model_kinds"]


def dataset_texts(name: str, column: str | None, splits: Sequence[str], option: str) -> list[str]:
    """The non-empty texts of ``name``'s first split among ``splits``, from ``column`` (default:
    a registry dataset's own text column, else ``text``); ``option`` names the command-line
    option of the column in errors. Non-text registry datasets are refused."""
    registry = name in DATASETS
    if registry and DATASETS.get(name).kind not in ("text", "text-classification"):
        raise RetainError(
            f"dataset {name!r} holds {DATASETS.get(name).kind} data, not text; diagnose reads "
            "text (see: retain ls)"
        )
    # Files and hub datasets come back with their text column renamed to "text".
    try:
        dataset = load_dataset(name, text_column=None if registry else column)
    except RetainError as err:  # name the command-line option, not the Python argument
        raise RetainError(str(err).replace("text_column=", option)) from None
    split = next((s for s in splits if s in dataset), None)
    if split is None:
        raise RetainError(f"dataset {name!r} has none of the splits {list(splits)}")
    rows = dataset[split]
    wanted = (column or DATASETS.get(name).text_column) if registry else "text"
    if wanted not in rows.column_names:
        raise RetainError(
            f"dataset {name!r} has no text column {wanted!r} (columns: "
            f"{', '.join(rows.column_names)}); pass {option}"
        )
    return [str(t) for t in rows[wanted] if str(t).strip()]


_ENCODERS = ("encoder", "sequence-classification", "masked-lm")


def model_kinds(base: str, tuned: str) -> tuple[ModelKind, list[str]]:
    """The kind both models load as, and warnings; models of different kinds are refused."""
    base_kind = default_kind(base)
    tuned_kind = default_kind(tuned)
    if base_kind == tuned_kind:
        return base_kind, []
    if base_kind in _ENCODERS and tuned_kind in _ENCODERS:
        return "encoder", [
            f"base is {_a(base_kind)} model and tuned {_a(tuned_kind)} model: both are compared "
            "as encoders, so a head only one of them has is left out"
        ]
    raise RetainError(
        f"base {base!r} is {_a(base_kind)} model and tuned {tuned!r} "
        f"{_a(tuned_kind)} model; diagnose compares a fine-tune with the model it started from "
        "(one architecture)"
    )


def _a(word: str) -> str:
    """``word`` with its indefinite article: ``an encoder``, ``a causal-lm``."""
    return f"{'an' if word[:1] in 'aeiou' else 'a'} {word}"


def adapter_warning(base: str, tuned: str, adapter_base: str | None) -> list[str]:
    """A warning when ``tuned`` is an adapter recorded on another base than ``base``."""
    if adapter_base is not None or not is_adapter_folder(tuned):
        return []
    try:
        recorded = json.loads((Path(tuned).expanduser() / "adapter_config.json").read_text()).get(
            "base_model_name_or_path"
        )
    except (OSError, ValueError):
        return []
    if not recorded or recorded == base:
        return []
    try:
        same = model_folder(str(recorded))[0] == model_folder(base)[0]
    except RetainError:
        same = False
    if same:
        return []
    return [
        f"the adapter {tuned!r} records base {recorded!r}, not --base {base!r}: "
        f"tuned is {recorded!r} + adapter (pass --adapter-base to load it on another base)"
    ]
