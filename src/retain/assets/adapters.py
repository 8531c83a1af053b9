"""PEFT adapter folders: check them before any work, load them on their base, merge, verify.

An adapter folder holds ``adapter_config.json`` and ``adapter_model.safetensors``. Its base is
``--adapter-base`` or the ``base_model_name_or_path`` it records; its ``task_type`` says which head
it was trained with (``CAUSAL_LM``, ``SEQ_CLS``, ``FEATURE_EXTRACTION``), and the base is loaded
with that head so the adapter's weight names match. After loading, every saved adapter tensor must
have found its place in the model: a silently unapplied adapter would audit as "nothing forgotten".
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from retain.assets.weight_files import (
    check_weight_files,
    corrupt_weights_error,
    is_corrupt_weights_error,
)
from retain.errors import RetainError

__all__ = ["adapter_kind", "check_adapter", "load_adapter"]

_TASK_KINDS = {
    "CAUSAL_LM": "causal-lm",
    "SEQ_CLS": "sequence-classification",
    "FEATURE_EXTRACTION": "encoder",
}
_WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")


def _config(folder: str) -> dict[str, Any]:
    path = Path(folder).expanduser() / "adapter_config.json"
    try:
        config: dict[str, Any] = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RetainError(
            f"{str(path)!r} is not valid JSON ({exc.msg}); re-save the adapter"
        ) from None
    return config


def adapter_kind(folder: str) -> Any:
    """The model kind the adapter was trained as, from its ``task_type`` (``None`` if unknown)."""
    return _TASK_KINDS.get(str(_config(folder).get("task_type")))


def _base_name(folder: str, adapter_base: str | None) -> str:
    base = adapter_base or _config(folder).get("base_model_name_or_path")
    if not base:
        raise RetainError(
            f"adapter {folder!r} does not record its base model; pass it (--adapter-base NAME)"
        )
    return str(base)


def check_adapter(
    folder: str,
    adapter_base: str | None,
    check_base: Callable[..., Any],
    *,
    kind: Any = None,
    reach_hub: bool = False,
) -> None:
    """Refuse, before any work, an adapter without weights, with a truncated or corrupt weights
    file, without a base, or of the wrong kind. ``check_base(name, reach_hub=, kind=)`` checks
    the base model reference (:func:`retain.assets.models.check_model_reference`)."""
    if not any((Path(folder).expanduser() / f).exists() for f in _WEIGHT_FILES):
        raise RetainError(
            f"adapter folder {folder!r} has no adapter_model.safetensors; save it with "
            "model.save_pretrained(folder)"
        )
    trained_as = adapter_kind(folder)
    if kind == "causal-lm" and trained_as not in (None, "causal-lm"):
        raise RetainError(
            f"adapter {folder!r} was trained as {trained_as}, not a causal LM; for an encoder "
            "use --suite encoder"
        )
    base = _base_name(folder, adapter_base)
    if kind == "causal-lm":
        check_base(base, reach_hub=reach_hub, kind="causal-lm")
    else:
        check_base(base, reach_hub=reach_hub)
    check_weight_files(folder, what="adapter")


def _num_labels(weights: dict[str, torch.Tensor]) -> int | None:
    """Rows of a saved classifier head (``modules_to_save``), if the adapter carries one."""
    for key, tensor in weights.items():
        if key.endswith("weight") and tensor.ndim == 2 and ("classifier" in key or "score" in key):
            return int(tensor.shape[0])
    return None


def load_adapter(
    folder: str,
    name: str,
    kind: Any,
    adapter_base: str | None,
    trust_remote_code: bool,
    dtype: torch.dtype,
    load_base: Callable[..., Any],
) -> tuple[torch.nn.Module, Any]:
    """``(merged model, base tokenizer)``: the adapter applied to its base and merged.
    ``load_base(name, kind=, trust_remote_code=, dtype=, **kwargs)`` loads the base
    (:func:`retain.assets.models.load_model`).

    Raises:
        RetainError: when the adapter cannot be applied, or some of its saved tensors match no
            parameter of the base (a different architecture or head).
    """
    from peft import PeftModel
    from peft.utils import get_peft_model_state_dict, load_peft_weights

    base_name = _base_name(folder, adapter_base)
    try:
        saved = load_peft_weights(folder, device="cpu")
    except Exception as exc:
        if not is_corrupt_weights_error(exc):
            raise
        raise corrupt_weights_error(name, folder, exc, what="adapter") from exc
    base_kind = adapter_kind(folder) or kind
    extra: dict[str, Any] = {}
    if base_kind == "sequence-classification" and (n := _num_labels(saved)) is not None:
        extra["num_labels"] = n
    base = load_base(
        base_name, kind=base_kind, trust_remote_code=trust_remote_code, dtype=dtype, **extra
    )
    try:
        with warnings.catch_warnings():  # PEFT warns on unplaced keys; we raise a clearer error
            warnings.filterwarnings("ignore", message="Found missing adapter keys")
            peft_model = PeftModel.from_pretrained(base.model, folder)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise RetainError(
            f"cannot apply adapter {name!r} to base {base_name!r}: {str(exc).splitlines()[0]} "
            "(is --adapter-base the model it was trained on?)"
        ) from exc
    live = set(get_peft_model_state_dict(peft_model).keys())
    unplaced = sorted(set(saved) - live)
    if unplaced:
        raise RetainError(
            f"adapter {name!r} does not fit base {base_name!r}: {len(unplaced)} of {len(saved)} "
            f"saved tensors match no parameter (e.g. {unplaced[0]!r}); pass the model it was "
            "trained on (--adapter-base)"
        )
    return peft_model.merge_and_unload(), base.tokenizer
