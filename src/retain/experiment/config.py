"""Experiment configs: pydantic models over YAML, ``key=value`` overrides, one-line errors.

An experiment is a model, a sequence of tasks, an optional capability suite, strategies, training
settings, an optional forgetting monitor or budget, seeds and an output folder::

    name: minilm-sequence
    model: {name: minilm-l6, kind: task-heads}
    tasks:
      - {dataset: trec, train: 480, test: 200}
      - {dataset: sms_spam, train: 480, test: 200}
    strategies:
      - {name: ewc, strength: 1000}
    training: {lr: 1.0e-4, batch_size: 16, max_steps: 30}
    seeds: [0]

Every section forbids unknown keys (a typo is an error naming the key), and every error is one
line naming the setting and the fix (:class:`~retain.errors.RetainError`). ``key=value``
overrides address nested settings with dots and list items by index
(``training.lr=3e-4``, ``tasks.0.train=100``, ``strategies.0.alpha=0.1``); values are read as
YAML (``1e-4`` is a number, ``null`` is None, ``[0, 1]`` is a list).
"""

from __future__ import annotations

import difflib
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from retain.errors import RetainError
from retain.experiment.guard_config import BudgetSection, MonitorSection
from retain.experiment.overrides import apply_overrides, read_yaml
from retain.experiment.sections import Section, Seed
from retain.experiment.suite_config import ProbeSection, SuiteSection
from retain.experiment.sweep_config import SweepSection
from retain.experiment.task_config import TaskSection
from retain.experiment.tracking_config import TrackingSection
from retain.training.loop import TrainConfig

__all__ = [
    "BudgetSection",
    "CheckpointSection",
    "DiagnosticsSection",
    "ExperimentConfig",
    "ModelSection",
    "MonitorSection",
    "ProbeSection",
    "SuiteSection",
    "SweepSection",
    "TaskSection",
    "TrackingSection",
    "TrainingSection",
    "apply_overrides",
    "check_seeds",
    "config_from_dict",
    "config_to_yaml",
    "load_config",
]


ModelKind = Literal["task-heads", "classifier", "causal-lm", "mlp"]
#: ``auto``, ``cpu``, ``cuda``, ``cuda:<n>`` or ``mps``.
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?|mps")


#: The engine's dataclass is the one source of every training default.
_TRAIN = TrainConfig()


class ModelSection(Section):
    """The pretrained model to fine-tune.

    Attributes:
        name: a registry name (``retain ls``), a local folder or a hub id; for ``kind: mlp`` a
            label only (the network is built from ``hidden``).
        kind: ``task-heads`` (an encoder with one classification head per task), ``classifier``
            (one shared head for every task), ``causal-lm`` (language modelling on each task's
            text) or ``mlp`` (a multilayer perceptron on pixels, the permuted-MNIST network).
        hidden: hidden widths of the ``mlp`` (ignored otherwise).
        pooling: ``task-heads`` only: the heads read the first token (``cls``) or the
            attention-masked mean of the tokens (``mean``, as sentence-transformers models do).
        trust_remote_code: allow model code from the hub (off unless asked).
    """

    name: str
    kind: ModelKind = "task-heads"
    hidden: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [256])
    pooling: Literal["cls", "mean"] = "cls"
    trust_remote_code: bool = False


class TrainingSection(Section):
    """Settings of each task's training (:class:`retain.training.loop.TrainConfig`, whose
    defaults are these settings' defaults).

    Attributes: ``lr`` (base learning rate), ``batch_size`` (examples per optimizer step),
    ``max_steps`` (optimizer steps per task, as many epochs as that takes; None: whole epochs),
    ``epochs`` (passes over the data; None: 1 without ``max_steps``; with both set, whichever
    ends first), ``optimizer``
    (``adamw`` or ``sgd``), ``weight_decay``, ``momentum``, ``max_grad_norm``, ``shuffle``,
    ``grad_accum`` (micro-batches per step), ``precision`` (``fp32``, ``bf16``, ``fp16``),
    ``device`` (``auto``: CUDA when available, else CPU), ``divergence_factor`` (stop a task
    whose mean loss over the last 5 steps exceeds this many times its starting loss and 1 nat,
    :mod:`retain.training.divergence`; None: only non-finite losses and gradients stop it),
    ``optimizer_impl`` (``auto``: fused where the device allows, else foreach; ``fused``,
    ``foreach`` or ``for_loop``: :mod:`retain.training.optimizer_impl`), ``fsdp`` (under
    ``torchrun`` / ``accelerate launch``: shard the model over the processes with FSDP2,
    :func:`retain.distributed.shard_model`; false: every process holds the whole model and
    gradients are all-reduced, like DDP).
    """

    lr: float = Field(default=_TRAIN.lr, gt=0)
    batch_size: int = Field(default=_TRAIN.batch_size, ge=1)
    epochs: int | None = Field(default=None, ge=1)
    max_steps: int | None = Field(default=_TRAIN.max_steps, ge=1)
    optimizer: Literal["adamw", "sgd"] = _TRAIN.optimizer
    weight_decay: float = Field(default=_TRAIN.weight_decay, ge=0)
    momentum: float = Field(default=_TRAIN.momentum, ge=0)
    max_grad_norm: float | None = Field(default=_TRAIN.max_grad_norm, gt=0)
    shuffle: bool = _TRAIN.shuffle
    grad_accum: int = Field(default=_TRAIN.grad_accum, ge=1)
    precision: Literal["fp32", "bf16", "fp16"] = _TRAIN.precision
    device: str = "auto"
    divergence_factor: float | None = Field(default=_TRAIN.divergence_factor, gt=1)
    optimizer_impl: Literal["auto", "fused", "foreach", "for_loop"] = _TRAIN.optimizer_impl
    fsdp: bool = False

    @field_validator("lr")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not _DEVICE.fullmatch(value):
            raise ValueError(f"unknown device {value!r}; use auto, cpu, cuda, cuda:<n> or mps")
        return value


class CheckpointSection(Section):
    """Checkpoints under ``<run>/checkpoints``: after every task, and every ``every`` optimizer
    steps (0: task ends only). ``enabled: false`` saves none (a run then cannot resume)."""

    enabled: bool = True
    every: int = Field(default=0, ge=0)


class DiagnosticsSection(Section):
    """Diagnostics recorded during and after a run (:mod:`retain.diagnostics`).

    Attributes:
        interference_every: every this many optimizer steps, the cosine between the step's
            gradient and the prior capability's gradient (0: off). The prior capability is
            general text for a causal LM, else the earlier tasks of the sequence.
        interference_samples: examples of each prior capability the reference gradient uses.
        shift: after the run, compare the final model with a reference copy: linear CKA per
            layer and (causal LMs) next-token KL, on held-out general text for a causal LM, else
            on the first task's test text (keeps the copy in memory).
        shift_from: the reference: ``start`` (the model before training: everything the run
            changed) or ``first_task`` (the model right after the first task: how far the later
            tasks moved the representation the first task's head reads).
        shift_samples: texts (or token blocks) the shift uses.
    """

    interference_every: int = Field(default=0, ge=0)
    interference_samples: int = Field(default=16, ge=1)
    shift: bool = False
    shift_from: Literal["start", "first_task"] = "start"
    shift_samples: int = Field(default=32, ge=2)


class ExperimentConfig(Section):
    """A whole experiment (see the module docstring for an example).

    Attributes:
        name: the experiment's name (report titles, default output folder ``runs/<name>``).
        description: one line shown in reports.
        model, tasks, suite, strategies, training, monitor, budget, checkpoints, diagnostics,
            sweep: the
            sections above; ``strategies`` is a list of ``{name: ..., <parameter>: ...}`` entries
            (``retain ls`` lists names and parameters), composed in order.
        seeds: one run per seed (``retain run`` runs the first unless ``--seed``).
        reference: ``joint`` or ``single`` to train a reference baseline instead of the
            sequence (no strategies, budget or monitor; ``retain sweep`` sets it for
            ``sweep.references``; :mod:`retain.training.references`).
        out: output folder (default ``runs/<name>``; ``--out`` overrides it).
        variant: this run's label in comparisons (default: the strategies' names).
    """

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    description: str = ""
    model: ModelSection
    tasks: list[TaskSection] = Field(min_length=1)
    suite: SuiteSection | None = None
    strategies: list[dict[str, Any]] = Field(default_factory=list)
    training: TrainingSection = Field(default_factory=TrainingSection)
    monitor: MonitorSection | None = None
    budget: BudgetSection | None = None
    checkpoints: CheckpointSection = Field(default_factory=CheckpointSection)
    diagnostics: DiagnosticsSection = Field(default_factory=DiagnosticsSection)
    sweep: SweepSection = Field(default_factory=SweepSection)
    tracking: TrackingSection = Field(default_factory=TrackingSection)
    seeds: list[Seed] = Field(default_factory=lambda: [0], min_length=1)
    reference: Literal["joint", "single"] | None = None
    out: str | None = None
    variant: str | None = None

    @property
    def variant_label(self) -> str:
        """``variant``, or the reference (``joint``, ``single``), or the strategies' names
        joined by ``+`` (``naive`` without any)."""
        names = "+".join(e["name"] for e in self.strategies)
        return self.variant or self.reference or names or "naive"

    @field_validator("strategies")
    @classmethod
    def _named(cls, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for k, entry in enumerate(entries):
            if not isinstance(entry.get("name"), str):
                raise ValueError(f"entry {k} needs a 'name' (e.g. {{name: ewc, strength: 1000}})")
        return entries

    @model_validator(mode="after")
    def _consistent(self) -> ExperimentConfig:
        labels = [t.label for t in self.tasks]
        twice = sorted({n for n in labels if labels.count(n) > 1})
        if twice:
            raise ValueError(
                f"task name {twice[0]!r} appears twice; give each task its own `name:`"
            )
        if self.reference is not None:
            extra = [k for k in ("strategies", "budget", "monitor") if getattr(self, k)]
            if extra:
                raise ValueError(
                    f"reference: {self.reference} trains plainly, without {extra[0]}; drop "
                    f"{extra[0]} (the reference is what the strategies are measured against)"
                )
        lists = [self.strategies, *self.sweep.variants.values()]
        marked = [e for entries in lists for e in entries if e.get("budget")]
        if marked:
            from retain.strategies.base import STRATEGIES, tunable_strategies

            for entry in marked:
                name = entry["name"]
                if name not in STRATEGIES or STRATEGIES.get(name).tunable_strength is None:
                    tunable = " or ".join(tunable_strategies())
                    raise ValueError(f"budget: true works on {tunable} entries, not {name}")
        if self.budget is not None:
            if self.suite is None:
                raise ValueError("budget needs a suite (the capabilities it keeps within budget)")
            if not marked:
                raise ValueError(
                    "budget tunes the strategy entry marked `budget: true` (a penalty with a "
                    "strength, such as ewc); mark one"
                )
        elif marked:
            where = [
                label
                for label, entries in (
                    ("strategies", self.strategies),
                    *((f"sweep.variants.{v}", e) for v, e in self.sweep.variants.items()),
                )
                if any(entry.get("budget") for entry in entries)
            ]
            raise ValueError(
                f"{where[0]} marks a strategy `budget: true` but there is no budget section; add "
                "budget: {max_degradation: ...} or drop the mark"
            )
        return self

    def output_dir(self) -> Path:
        """``out`` or ``runs/<name>``."""
        return Path(self.out) if self.out else Path("runs") / self.name


def check_seeds(seeds: list[int], where: str) -> None:
    """Refuse a seed outside ``0 .. 2**32 - 1`` (what NumPy and torch accept), naming ``where``."""
    for seed in seeds:
        if not 0 <= seed <= 2**32 - 1:
            raise RetainError(f"{where}: seed {seed} is out of range; use 0 .. {2**32 - 1}")


def _location(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "config"


def config_from_dict(data: Any, source: str = "config") -> ExperimentConfig:
    """Validate ``data`` as an :class:`ExperimentConfig`; the first error becomes one line."""
    if not isinstance(data, dict):
        raise RetainError(f"{source} must be a YAML mapping (name:, model:, tasks:, ...)")
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        where, message = _location(first["loc"]), first["msg"]
        if first["type"] == "extra_forbidden":
            close = difflib.get_close_matches(
                str(first["loc"][-1]), _setting_names(first["loc"][:-1]), n=1, cutoff=0.6
            )
            hint = f"did you mean {close[0]!r}?" if close else "check its spelling"
            message = f"unknown setting; {hint} (config reference: docs/reference/config.md)"
        elif first["type"] == "missing":
            message = "missing; it is required"
        elif first["type"] == "literal_error":
            message = _unknown_choice(first.get("input"), str(first.get("ctx", {}).get("expected")))
        message = message.removeprefix("Value error, ")
        if first["type"] in ("float_parsing", "int_parsing", "bool_parsing"):
            message += f" (got {first.get('input')!r}); fix the value"
        more = len(error.errors()) - 1
        tail = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
        raise RetainError(f"{source}: {where}: {message}{tail}") from None


def _setting_names(loc: tuple[int | str, ...]) -> list[str]:
    """The settings the section at ``loc`` (a path into :class:`ExperimentConfig`) allows."""
    node: Any = ExperimentConfig
    for key in loc:
        if isinstance(key, int):
            continue  # an item of a list: its type is the list's
        fields = getattr(node, "model_fields", {})
        if key not in fields:
            return []
        node = _section_type(fields[key].annotation)
    return list(getattr(node, "model_fields", {}))


def _section_type(annotation: Any) -> Any:
    """The section class inside ``annotation`` (``list[TaskSection]``, ``X | None`` -> X)."""
    import typing

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _section_type(arg)
        if found is not None:
            return found
    return None


def _unknown_choice(value: Any, expected: str) -> str:
    """``unknown value 'fewshot'; did you mean 'few_shot'? (one of: ...)``."""
    choices = re.findall(r"'([^']*)'", expected)
    close = difflib.get_close_matches(str(value).lower(), choices, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown value {value!r}{hint} (one of: {', '.join(choices)})"


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read, override and validate the experiment in ``path`` (a file, or a shipped config's
    name such as ``demo``: :func:`retain.experiment.shipped.shipped_config`)."""
    from retain.experiment.shipped import resolve_config_path

    file = resolve_config_path(str(path))
    data = apply_overrides(read_yaml(file), overrides or [])
    source = f"{file} (with the command-line overrides)" if overrides else str(file)
    return config_from_dict(data, source=source)


def config_to_yaml(config: ExperimentConfig) -> str:
    """The resolved config (every default filled in) as YAML, the run directory's record."""
    data = config.model_dump(mode="json")
    text: str = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    return text
