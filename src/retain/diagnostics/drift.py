"""Parameter drift of a tuned model from its base, per parameter, module, layer and in total.

For a group ``G`` of parameters (one tensor, a module, a layer, or all of them) with base values
``θ*`` and tuned values ``θ`` (float32, ``n_G`` scalars):

* ``rms = sqrt(Σ_G (θ - θ*)² / n_G)``: the root-mean-square change per scalar, in the parameters'
  own units;
* ``relative = ||θ - θ*||₂ / ||θ*||₂`` over the whole group (``None`` when ``||θ*|| = 0``).

Both are computed from the same sums, so a layer's figure is over all its scalars together, not a
mean of its tensors' figures. Names are grouped into layers by :func:`layer_of` and into modules
by dropping the last component (``encoder.layer.3.attention.self.query.weight`` ->
``encoder.layer.3.attention.self.query``).

PEFT models are compared by their *effective* weights (:func:`effective_parameters`): a LoRA
layer's weight is ``W + ΔW`` with ``ΔW = B A · scaling`` of its active adapters (PEFT's own
``get_delta_weight``), and a ``modules_to_save`` copy replaces its original, so a LoRA fine-tune
shows where its low-rank update lands. Parameters of the tuned model that the base lacks (new task
heads) and tensors whose shape changed are excluded and listed, never silently compared.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from retain.errors import RetainError

__all__ = [
    "DriftReport",
    "GroupDrift",
    "effective_parameters",
    "layer_of",
    "module_of",
    "parameter_drift",
    "plain_name",
]

_PEFT_PREFIX = "base_model.model."
_SAVED_COPY = re.compile(r"\.modules_to_save\.([^.]+)\.")


def layer_of(name: str) -> str:
    """The layer a parameter belongs to: everything up to the first numeric component, else the
    module path.

    >>> layer_of("encoder.layer.3.attention.self.query.weight")
    'encoder.layer.3'
    >>> layer_of("embeddings.word_embeddings.weight")
    'embeddings.word_embeddings'
    >>> layer_of("head.bias")
    'head'
    """
    parts = name.split(".")
    for k, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[: k + 1])
    return ".".join(parts[:-1]) or name


def module_of(name: str) -> str:
    """The module that owns a parameter (its name without the last component).

    >>> module_of("model.layers.0.self_attn.q_proj.weight")
    'model.layers.0.self_attn.q_proj'
    """
    return name.rpartition(".")[0] or name


def _active(module: nn.Module) -> list[str]:
    names = getattr(module, "active_adapters", None)
    if names is None:
        return []
    return [names] if isinstance(names, str) else list(names)


def _adapters_off(module: nn.Module) -> bool:
    return bool(getattr(module, "disable_adapters", False))


def effective_parameters(model: nn.Module) -> dict[str, Tensor]:
    """``{plain name: detached tensor}``: the weights ``model`` computes with.

    Plain models give their ``named_parameters()`` (tied parameters once). Through PEFT,
    ``base_model.model.`` and ``.base_layer`` are dropped from names, LoRA factors are folded into
    their base weight (``W + get_delta_weight(adapter)`` for each active, unmerged adapter), and
    the active ``modules_to_save`` copy stands in for ``original_module``. Tensors are views of the
    live weights except where a delta was added (a new tensor).
    """
    deltas: dict[str, Tensor] = {}
    saved: dict[str, str] = {}  # prefix of a ModulesToSaveWrapper -> its active adapter
    for prefix, module in model.named_modules():
        if hasattr(module, "original_module") and hasattr(module, "modules_to_save"):
            active = _active(module)
            if active and not _adapters_off(module):
                saved[prefix] = active[0]
            continue
        delta_of = getattr(module, "get_delta_weight", None)
        if delta_of is None or not hasattr(module, "base_layer") or _adapters_off(module):
            continue
        merged = set(getattr(module, "merged_adapters", []) or [])
        for adapter in _active(module):
            if adapter in getattr(module, "lora_A", {}) and adapter not in merged:
                with torch.no_grad():
                    delta = delta_of(adapter).detach()
                key = f"{prefix}.base_layer.weight"
                deltas[key] = deltas[key] + delta if key in deltas else delta
    result: dict[str, Tensor] = {}
    for raw, param in model.named_parameters():
        if "lora_" in raw:
            continue
        name = raw
        for prefix, adapter in saved.items():
            if raw.startswith(f"{prefix}.original_module."):
                name = ""  # the trained copy stands in for it
            elif raw.startswith(f"{prefix}.modules_to_save."):
                own = f"{prefix}.modules_to_save.{adapter}."
                name = f"{prefix}.{raw[len(own) :]}" if raw.startswith(own) else ""
        if not name:
            continue
        value = param.detach()
        if raw in deltas:
            value = value + deltas[raw].to(value.dtype)
        result[plain_name(name)] = value
    return result


def plain_name(name: str) -> str:
    """A parameter name without PEFT's wrappers (``base_model.model.``, ``.base_layer``,
    ``.original_module``, ``.modules_to_save.<adapter>``).

    >>> plain_name("base_model.model.encoder.layer.0.attention.self.query.base_layer.weight")
    'encoder.layer.0.attention.self.query.weight'
    """
    name = name.removeprefix(_PEFT_PREFIX)
    name = name.replace(".base_layer", "").replace(".original_module", "")
    return _SAVED_COPY.sub(".", name)


@dataclass(frozen=True)
class GroupDrift:
    """Drift of one group of parameters (see the module docstring for the formulas).

    Attributes:
        name: the parameter, module or layer name (``"total"`` for everything).
        numel: number of scalars compared.
        rms: root-mean-square change per scalar.
        relative: ``||θ - θ*|| / ||θ*||`` (None when the base norm is 0).
        delta_norm: ``||θ - θ*||₂``.
        base_norm: ``||θ*||₂``.
    """

    name: str
    numel: int
    rms: float
    relative: float | None
    delta_norm: float
    base_norm: float


@dataclass
class _Sums:
    numel: int = 0
    delta_sq: float = 0.0
    base_sq: float = 0.0

    def add(self, other: _Sums) -> None:
        self.numel += other.numel
        self.delta_sq += other.delta_sq
        self.base_sq += other.base_sq

    def drift(self, name: str) -> GroupDrift:
        delta, base = math.sqrt(self.delta_sq), math.sqrt(self.base_sq)
        return GroupDrift(
            name=name,
            numel=self.numel,
            rms=math.sqrt(self.delta_sq / self.numel) if self.numel else 0.0,
            relative=delta / base if base > 0 else None,
            delta_norm=delta,
            base_norm=base,
        )


@dataclass(frozen=True)
class DriftReport:
    """Drift of a tuned model from its base.

    Attributes:
        parameters, modules, layers: one :class:`GroupDrift` each, in the model's order.
        total: every compared parameter together.
        excluded: ``{name: reason}`` for tensors not compared (new heads, changed shapes, and
            parameters matched by ``exclude``).
    """

    parameters: list[GroupDrift]
    modules: list[GroupDrift]
    layers: list[GroupDrift]
    total: GroupDrift
    excluded: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (per-parameter rows left out: modules and layers carry them)."""
        return {
            "total": asdict(self.total),
            "layers": [asdict(g) for g in self.layers],
            "modules": [asdict(g) for g in self.modules],
            "excluded": dict(self.excluded),
        }


def _values(source: nn.Module | Mapping[str, Tensor]) -> Mapping[str, Tensor]:
    """Effective parameters of a model; a mapping (a ``state_dict``) with tensors that share
    storage (tied weights) keeps the first name of each, as ``named_parameters()`` does."""
    if isinstance(source, nn.Module):
        return effective_parameters(source)
    seen: set[tuple[int, tuple[int, ...], tuple[int, ...]]] = set()
    values = {}
    for name, tensor in source.items():
        key = (tensor.data_ptr(), tuple(tensor.shape), tuple(tensor.stride()))
        if tensor.numel() and key in seen:
            continue
        seen.add(key)
        values[plain_name(name)] = tensor
    return values


def _pairs(
    base: Mapping[str, Tensor], tuned: Mapping[str, Tensor], exclude: re.Pattern[str] | None
) -> Iterator[tuple[str, Tensor | None, Tensor | None, str]]:
    for name, after in tuned.items():
        before = base.get(name)
        if before is None:
            yield name, None, None, "not in the base model (a new head or adapter)"
        elif tuple(before.shape) != tuple(after.shape):
            shapes = f"{tuple(before.shape)} -> {tuple(after.shape)}"
            yield name, None, None, f"shape changed {shapes}"
        elif exclude is not None and exclude.search(name):
            yield name, None, None, f"matches exclude {exclude.pattern!r}"
        else:
            yield name, before, after, ""


def parameter_drift(
    base: nn.Module | Mapping[str, Tensor],
    tuned: nn.Module | Mapping[str, Tensor],
    *,
    exclude: str | None = None,
) -> DriftReport:
    """Drift of ``tuned`` from ``base`` per parameter, module, layer and in total.

    Both may be models (compared by :func:`effective_parameters`) or ``{name: tensor}`` maps.
    ``exclude`` is a regular expression of parameter names to leave out (e.g. ``"^heads\\."``).
    Tensors are compared in float32 on the tuned tensor's device, one at a time.

    >>> from torch import nn
    >>> a = nn.Linear(2, 2)
    >>> parameter_drift(a, a).total.rms
    0.0
    """
    pattern = None
    if exclude is not None:
        try:
            pattern = re.compile(exclude)
        except re.error as exc:
            raise RetainError(
                f"drift exclude {exclude!r} is not a regular expression: {exc}"
            ) from None
    before_all, after_all = _values(base), _values(tuned)
    params: list[GroupDrift] = []
    modules: dict[str, _Sums] = {}
    layers: dict[str, _Sums] = {}
    total = _Sums()
    excluded: dict[str, str] = {}
    with torch.no_grad():
        for name, before, after, reason in _pairs(before_all, after_all, pattern):
            if before is None or after is None:
                excluded[name] = reason
                continue
            new = after.float()
            old = before.to(new.device, torch.float32)
            sums = _Sums(new.numel(), float((new - old).square().sum()), float(old.square().sum()))
            params.append(sums.drift(name))
            modules.setdefault(module_of(name), _Sums()).add(sums)
            layers.setdefault(layer_of(name), _Sums()).add(sums)
            total.add(sums)
    if not params:
        raise RetainError(
            "no parameter of the tuned model matches the base model by name and shape; "
            "compare a fine-tune with the model it started from"
        )
    return DriftReport(
        parameters=params,
        modules=[s.drift(n) for n, s in modules.items()],
        layers=[s.drift(n) for n, s in layers.items()],
        total=total.drift("total"),
        excluded=excluded,
    )
