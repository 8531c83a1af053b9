"""Parameter-efficient fine-tuning through PEFT: ``lora`` and any PEFT method as ``peft``.

LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models") freezes every base
weight ``W0 [out, in]`` and learns a low-rank update, so a targeted linear layer computes

    h = W0 x + (alpha / r) * B A x,     A [r, in] (random init),  B [out, r] (zeros at init),

with ``r`` the rank and ``alpha`` the scaling numerator. Other PEFT methods (IA3, LoHa, LoKr,
BOFT, VeRA, ...) differ in the update but share the same contract: base frozen, a small set of new
parameters trained. Forgetting is limited because most weights cannot move at all.

Everything goes through PEFT's own config classes and ``get_peft_model``; nothing here re-implements
an adapter. With ``task_type="auto"`` the PEFT task type comes from the model class:
``*ForSequenceClassification`` gives ``SEQ_CLS`` (PEFT then trains the classifier head too, via
``modules_to_save``), ``*ForTokenClassification`` gives ``TOKEN_CLS``, ``*ForCausalLM`` gives
``CAUSAL_LM``, another Hugging Face ``*Model`` gives ``FEATURE_EXTRACTION`` and a plain
``nn.Module`` gets no task type (PEFT then needs ``target_modules`` spelled out).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, get_args

from torch import nn

from retain.errors import RetainError
from retain.strategies.base import Strategy, register_strategy

if TYPE_CHECKING:
    from peft import PeftConfig, PeftModel

__all__ = [
    "LoRA",
    "PeftStrategy",
    "PeftTaskType",
    "add_peft_adapter",
    "build_peft_config",
    "check_config_keys",
    "check_task_type",
    "linear_module_names",
    "peft_config_class",
    "resolve_task_type",
    "unwrap_peft",
    "wrap_with_peft",
]

PeftTaskType = Literal["auto", "SEQ_CLS", "CAUSAL_LM", "TOKEN_CLS", "FEATURE_EXTRACTION"]

# PeftConfig fields that retain sets itself (or that describe a saved adapter, not a new one).
_RESERVED_FIELDS = frozenset(
    {"peft_type", "task_type", "auto_mapping", "peft_version", "base_model_name_or_path"}
)


def peft_config_class(method: str) -> type[PeftConfig]:
    """PEFT's config class for ``method`` (``"lora"``, ``"ia3"``, ...), case-insensitive.

    Unknown methods raise :class:`RetainError` with a did-you-mean and the available names.
    """
    from peft import PEFT_TYPE_TO_CONFIG_MAPPING

    by_name = {str(k.value).lower(): v for k, v in PEFT_TYPE_TO_CONFIG_MAPPING.items()}
    key = str(method).lower()
    if key not in by_name:
        close = difflib.get_close_matches(key, list(by_name), n=1, cutoff=0.5)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise RetainError(
            f"unknown PEFT method {method!r}; {hint}(available: {', '.join(sorted(by_name))})"
        )
    cls: type[PeftConfig] = by_name[key]
    return cls


def _config_fields(cls: type[PeftConfig]) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.name not in _RESERVED_FIELDS]


def check_config_keys(method: str, config: dict[str, Any]) -> None:
    """Refuse keys that ``method``'s PEFT config class does not have, listing the valid ones."""
    if not isinstance(config, dict):
        raise RetainError(
            f"PEFT config must be a dict of {method} settings, got {type(config).__name__}"
        )
    fields = _config_fields(peft_config_class(method))
    for key in config:
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1, cutoff=0.5)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise RetainError(
                f"PEFT {method} config has no field {key!r}; {hint}(valid: {', '.join(fields)})"
            )


def check_task_type(task_type: str) -> None:
    """Refuse a task type that is not ``"auto"`` or one of PEFT's task types retain supports."""
    if task_type not in get_args(PeftTaskType):
        raise RetainError(
            f"unknown task_type {task_type!r}; use one of {', '.join(get_args(PeftTaskType))}"
        )


def resolve_task_type(model: nn.Module, task_type: str) -> str | None:
    """The PEFT task type for ``model``: ``task_type`` itself unless it is ``"auto"``.

    ``auto``: ``*ForSequenceClassification`` -> ``SEQ_CLS``, ``*ForTokenClassification`` ->
    ``TOKEN_CLS``, ``*ForCausalLM`` -> ``CAUSAL_LM``, another Hugging Face model ->
    ``FEATURE_EXTRACTION``, a plain ``nn.Module`` -> ``None``.
    """
    check_task_type(task_type)
    if task_type != "auto":
        return task_type
    cls = type(model).__name__
    suffixes = {
        "ForSequenceClassification": "SEQ_CLS",
        "ForTokenClassification": "TOKEN_CLS",
        "ForCausalLM": "CAUSAL_LM",
    }
    for suffix, kind in suffixes.items():
        if cls.endswith(suffix):
            return kind
    from transformers import PreTrainedModel

    return "FEATURE_EXTRACTION" if isinstance(model, PreTrainedModel) else None


def linear_module_names(model: nn.Module, limit: int = 8) -> list[str]:
    """Distinct last name components of ``model``'s ``nn.Linear`` modules (``query``, ``dense``)."""
    names: list[str] = []
    for full, module in model.named_modules():
        short = full.rsplit(".", 1)[-1]
        if isinstance(module, nn.Linear) and full and short not in names:
            names.append(short)
    return names[:limit]


def task_heads_defaults(method: str, model: nn.Module, given: dict[str, Any]) -> dict[str, Any]:
    """Defaults for a :class:`~retain.data.task_heads.TaskHeads` model, which PEFT does not know:
    ``target_modules`` from PEFT's mapping for the encoder's ``model_type`` (BERT: ``query``,
    ``value``) and every task head in ``modules_to_save`` (a new head is trained in full)."""
    from retain.data.task_heads import TaskHeads

    if not isinstance(model, TaskHeads):
        return {}
    defaults: dict[str, Any] = {}
    model_type = getattr(getattr(model.encoder, "config", None), "model_type", None)
    if "target_modules" not in given and model_type is not None:
        from peft.utils import constants

        mapping = getattr(
            constants, f"TRANSFORMERS_MODELS_TO_{method.upper()}_TARGET_MODULES_MAPPING", {}
        )
        if model_type in mapping:
            defaults["target_modules"] = list(mapping[model_type])
    if "modules_to_save" not in given and method in ("lora", "loha", "lokr", "ia3", "adalora"):
        defaults["modules_to_save"] = [f"heads.{name}" for name in model.heads]
    return defaults


def build_peft_config(
    method: str, config: dict[str, Any], task_type: str, model: nn.Module
) -> PeftConfig:
    """PEFT's config object for ``method`` with ``config`` and the resolved task type."""
    cls = peft_config_class(method)
    check_config_keys(method, config)
    kwargs = {k: v for k, v in config.items() if v is not None}
    kind = resolve_task_type(model, task_type)
    if kind is not None:
        kwargs["task_type"] = kind
    kwargs = {**task_heads_defaults(method, model, kwargs), **kwargs}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise RetainError(
            f"invalid PEFT {method} config {config!r}: {str(exc).splitlines()[0]}; fix that setting"
        ) from exc


def unwrap_peft(model: nn.Module, what: str) -> PeftModel:
    """The ``PeftModel`` inside ``model`` (unwrapping ``DistributedDataParallel``/``DataParallel``).

    Raises :class:`RetainError` when ``model`` is not what ``prepare`` returned.
    """
    from peft import PeftModel

    inner = model
    while isinstance(inner, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        inner = inner.module
    if not isinstance(inner, PeftModel):
        raise RetainError(
            f"{what} expects the model its prepare() returned (a PeftModel), got "
            f"{type(inner).__name__}; pass model = strategy.prepare(model)"
        )
    return inner


def _peft_failure(
    exc: Exception, model: nn.Module, peft_config: PeftConfig, what: str
) -> RetainError:
    """A one-line RetainError for a PEFT ValueError about ``model``."""
    linears = ", ".join(linear_module_names(model)) or "none"
    model_name = type(model).__name__
    targets = getattr(peft_config, "target_modules", None)
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    no_match = ("not found in the base model", "No modules were targeted")
    if targets is not None and any(m in message for m in no_match):
        shown = sorted(targets) if isinstance(targets, (set, list, tuple)) else targets
        return RetainError(
            f"{what} target_modules {shown!r} match no module of {model_name}; its Linear "
            f"modules include {linears}: set target_modules to some of them"
        )
    if targets is None and "target_modules" in message:
        return RetainError(
            f"PEFT has no default target_modules for {model_name}; set {what} target_modules "
            f"(its Linear modules include {linears})"
        )
    return RetainError(f"cannot apply {what} to {model_name}: {message}")


def is_peft_model(model: nn.Module) -> bool:
    """Whether ``model``, or the model a DDP / Accelerate wrapper holds, is a PeftModel."""
    from peft import PeftModel

    return isinstance(getattr(model, "module", model), PeftModel)


def wrap_with_peft(
    model: nn.Module, peft_config: PeftConfig, what: str, adapter_name: str = "default"
) -> PeftModel:
    """``peft.get_peft_model(model, peft_config)`` with PEFT's errors turned into RetainErrors."""
    from peft import PeftModel, get_peft_model

    if isinstance(model, PeftModel):
        raise RetainError(
            f"{what}: the model is already a PeftModel; merge it first "
            "(model.merge_and_unload()) or use one PEFT strategy"
        )
    try:
        return get_peft_model(model, peft_config, adapter_name=adapter_name)
    except (ValueError, TypeError, KeyError) as exc:
        raise _peft_failure(exc, model, peft_config, what) from exc


def add_peft_adapter(
    peft_model: PeftModel, adapter_name: str, peft_config: PeftConfig, what: str
) -> None:
    """``peft_model.add_adapter(adapter_name, peft_config)``, PEFT errors as RetainErrors."""
    try:
        peft_model.add_adapter(adapter_name, copy.deepcopy(peft_config))
    except (ValueError, TypeError, KeyError) as exc:
        base = peft_model.get_base_model()
        raise _peft_failure(exc, base, peft_config, what) from exc


_ONE_PEFT = "both wrap the model in PEFT; configure one PEFT method"


@register_strategy("any PEFT method (ia3, loha, lokr, boft, vera, ...) over a frozen base model")
class PeftStrategy(Strategy):
    """Train a PEFT adapter of any method over the frozen model (``peft.get_peft_model``).

    Args:
        method: a name in ``peft.PEFT_TYPE_TO_CONFIG_MAPPING`` (``"lora"``, ``"ia3"``, ``"loha"``,
            ``"lokr"``, ``"boft"``, ``"vera"``, ...), case-insensitive.
        config: keyword arguments of that method's PEFT config class (``{"r": 4}``); a
            ``target_modules`` left out uses PEFT's default mapping for the architecture.
        task_type: the PEFT task type, or ``"auto"`` to take it from the model class.

    The adapter weights are model weights, so the engine's model checkpoint holds them and
    :meth:`state_dict` is empty. :meth:`merged` and :meth:`export` give the merged model.
    """

    name = "peft"
    unsharded_only = None  # prepare() before fully_shard: tests/training/test_fsdp.py
    conflicts: ClassVar[Mapping[str, str]] = {
        "lora": "both wrap the model in PEFT; configure one PEFT method"
    }

    def __init__(
        self,
        method: str = "lora",
        config: dict[str, Any] | None = None,
        task_type: PeftTaskType = "auto",
    ) -> None:
        self.method = str(method).lower()
        self.config = dict(config or {})
        self.task_type = task_type
        check_config_keys(self.method, self.config)
        check_task_type(task_type)

    @property
    def _what(self) -> str:
        return self.name if self.name == "lora" else f"peft {self.method}"

    def is_prepared(self, model: nn.Module) -> bool:
        """The model is a PeftModel (PEFT wrapped it)."""
        return is_peft_model(model)

    def prepare(self, model: nn.Module) -> nn.Module:
        """``peft.get_peft_model(model, config)``: base frozen, adapter (and head) trainable."""
        peft_config = build_peft_config(self.method, self.config, self.task_type, model)
        return wrap_with_peft(model, peft_config, self._what)

    def merged(self, model: nn.Module) -> nn.Module:
        """A merged copy (``merge_and_unload`` on a deep copy) for evaluation or export.

        The training model is left untouched (still a ``PeftModel`` with separate adapter weights).
        """
        peft_model = unwrap_peft(model, f"{self._what} merged()")
        duplicate = copy.deepcopy(peft_model)
        try:
            result: nn.Module = duplicate.merge_and_unload()
        except (AttributeError, ValueError, TypeError, NotImplementedError) as exc:
            raise RetainError(
                f"PEFT {self.method} adapters cannot be merged ({exc}); evaluate the PeftModel "
                "itself or pick a mergeable method such as lora"
            ) from exc
        return result

    def export(self, model: nn.Module, folder: str | Path, tokenizer: Any = None) -> Path:
        """Save the merged model to ``folder`` as safetensors and return the folder.

        A Hugging Face model is written with ``save_pretrained`` (reload it with
        ``from_pretrained``); a plain module as ``model.safetensors`` (its ``state_dict``).
        ``tokenizer`` is saved beside it: a text model folder without one is refused by
        ``retain audit`` and ``retain diagnose``.
        """
        from safetensors.torch import save_model
        from transformers import PreTrainedModel

        merged = self.merged(model)
        target = Path(folder)
        target.mkdir(parents=True, exist_ok=True)
        if isinstance(merged, PreTrainedModel):
            merged.save_pretrained(target)
        else:
            save_model(merged, str(target / "model.safetensors"))
        if tokenizer is not None:
            tokenizer.save_pretrained(target)
        return target


@register_strategy("LoRA low-rank adapters over a frozen base model (Hu et al. 2021)")
class LoRA(PeftStrategy):
    """LoRA (Hu et al. 2021): ``h = W0 x + (alpha / r) B A x`` with ``W0`` frozen.

    Args:
        r: rank of the update ``B A`` (``A [r, in]``, ``B [out, r]``), >= 1.
        alpha: scaling numerator; the update is scaled by ``alpha / r``.
        dropout: dropout probability on the LoRA branch input, in [0, 1).
        target_modules: module names (or a regex string) to adapt; None uses PEFT's default
            mapping for the architecture (BERT: ``query``, ``value``).
        modules_to_save: extra modules trained in full (a sequence-classification head is added
            by PEFT itself under ``task_type="SEQ_CLS"``).
        task_type: the PEFT task type, or ``"auto"`` to take it from the model class.
    """

    name = "lora"
    unsharded_only = None  # prepare() before fully_shard: tests/training/test_fsdp.py
    conflicts: ClassVar[Mapping[str, str]] = {
        "peft": "both wrap the model in PEFT; configure one PEFT method"
    }

    def __init__(
        self,
        r: int = 8,
        alpha: int = 16,
        dropout: float = 0.0,
        target_modules: list[str] | str | None = None,
        modules_to_save: list[str] | None = None,
        task_type: PeftTaskType = "auto",
    ) -> None:
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise RetainError(f"lora r must be an integer >= 1, got {r!r}")
        if not float(alpha) > 0:
            raise RetainError(f"lora alpha must be > 0, got {alpha!r}")
        if not 0.0 <= float(dropout) < 1.0:
            raise RetainError(f"lora dropout must be in [0, 1), got {dropout!r}")
        if target_modules is not None and not isinstance(target_modules, str):
            target_modules = list(target_modules)
            if not target_modules:
                raise RetainError("lora target_modules is empty; name some modules or pass None")
        self.r = r
        self.alpha = alpha
        self.dropout = float(dropout)
        self.target_modules = target_modules
        self.modules_to_save = list(modules_to_save) if modules_to_save is not None else None
        settings: dict[str, Any] = {
            "r": r,
            "lora_alpha": alpha,
            "lora_dropout": self.dropout,
            "target_modules": target_modules,
            "modules_to_save": self.modules_to_save,
        }
        super().__init__("lora", settings, task_type)
