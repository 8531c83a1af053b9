"""Turn a validated :class:`~retain.experiment.config.ExperimentConfig` into live objects.

:func:`build_experiment` loads the model and tokenizer, the task splits (with the columns and
sizes the config names), the capability suite and the strategies (a budget wraps its ``ewc`` or
``l2sp`` entry), and the :class:`~retain.training.loop.TrainConfig` of one seed.
:func:`validate_experiment` does all of it except training, and also checks that every
parameter regex of a strategy matches parameters of the model, so ``retain validate`` catches
what would otherwise fail minutes into a run.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from retain.data.permuted import TaskSplit
from retain.data.task import Task
from retain.data.text import causal_lm_task, text_classification_task
from retain.errors import RetainError
from retain.evaluation.suite import EvalSuite
from retain.evaluation.task_accuracy import negative_loss, task_accuracy
from retain.experiment.config import (
    ExperimentConfig,
    TaskSection,
    apply_overrides,
    config_from_dict,
)
from retain.experiment.dataset_rows import require_columns, rows_of
from retain.experiment.suite_build import build_suite
from retain.experiment.training_settings import check_training
from retain.strategies.base import Strategy, build_strategy
from retain.strategies.params import select_parameters
from retain.training.monitor import MonitorConfig

__all__ = [
    "Experiment",
    "build_experiment",
    "build_strategies",
    "validate_experiment",
]

Score = Callable[[nn.Module, Task], float]
#: Strategy parameters that hold a parameter-name regex, checked against the model by validation.
_REGEX_KEYS = ("params", "pattern")


@dataclass
class Experiment:
    """Everything one run needs, built from the config.

    Attributes:
        model, tokenizer: the model to fine-tune (None tokenizer for pixel models).
        splits: the task sequence (train and test task each).
        suite: the capability suite, or None.
        score: ``R[t][i]``'s scoring function; score_name, higher_is_better: what it measures.
        monitor: the monitor's settings, or None.
    """

    model: nn.Module
    tokenizer: Any
    splits: list[TaskSplit]
    suite: EvalSuite | None
    score: Score
    score_name: str
    higher_is_better: bool
    monitor: MonitorConfig | None


@dataclass
class _Loaded:
    """A task's dataset and the names its text and label columns have in it."""

    data: Any
    text: str
    label: str


def _load(task: TaskSection, k: int, images: bool) -> _Loaded:
    """The dataset of ``tasks.<k>``: a registry dataset keeps its columns and split; a local
    text file or hub name is read with the task's columns (renamed ``text``/``label``) and, with
    ``images``, local image data (:mod:`retain.assets.image_files`); either holds out
    ``test_size`` of its rows as the test split, which the console is told. ``classes`` keeps
    only those classes' rows."""
    from retain.assets.datasets import DATASETS, load_dataset
    from retain.assets.image_files import load_image_files

    where = f"tasks.{k} ({task.label})"
    if task.dataset in DATASETS:
        label = task.label_column or "label"
        loaded = _Loaded(load_dataset(task.dataset), task.text_column, label)
    else:
        if images:  # a pixel model: every source is read as images
            data = load_image_files(
                task.dataset,
                image_column=task.image_column,
                label_column=task.label_column,
                test_size=task.test_size,
                where=f"{where}: {task.dataset}",
            )
        else:
            local = task.dataset.endswith((".csv", ".tsv", ".json", ".jsonl", ".txt"))
            data = load_dataset(
                task.dataset,
                text_column=task.text_column if local else None,
                label_column=task.label_column if local else None,
                test_size=task.test_size,
            )
            _say_held_out(data, where, k)
        loaded = _Loaded(data, "text", "label")
    if task.classes is not None:
        loaded.data = _only_classes(loaded.data, loaded.label, task.classes, where)
    return loaded


def _say_held_out(data: Any, where: str, k: int) -> None:
    held, total = len(data["test"]), len(data["train"]) + len(data["test"])
    warnings.warn(
        f"{where}: held out {held} of {total} rows ({held / max(total, 1):.0%}, seeded) as the "
        f"test split; set tasks.{k}.test_size to change it",
        UserWarning,
        stacklevel=3,
    )


def _only_classes(data: Any, label: str, classes: list[int], where: str) -> Any:
    import datasets

    if label not in data["train"].column_names:
        raise RetainError(f"{where}: classes needs a label column; set label_column")
    present = set(data["train"][label])
    missing = [c for c in classes if c not in present]
    if missing:
        raise RetainError(
            f"{where}: no training rows of class {missing[0]} (it has {sorted(present)}); fix "
            "classes"
        )
    keep = set(classes)
    return datasets.DatasetDict(
        {split: rows.filter(lambda r: r[label] in keep) for split, rows in data.items()}
    )


def _text_task(task: TaskSection, k: int, config: ExperimentConfig, tokenizer: Any) -> TaskSplit:
    where = f"tasks.{k} ({task.label})"
    loaded = _load(task, k, images=False)
    data, text, label = loaded.data, loaded.text, loaded.label
    parts = []
    for split, n in (("train", task.train), ("test", task.test)):
        rows = rows_of(data, split, n, where)
        if config.model.kind == "causal-lm":
            require_columns(rows, [text], where, task.dataset)
            built = causal_lm_task(
                task.label,
                tokenizer,
                rows[text],
                block_size=task.max_length,
                pack=False,
            )
        else:
            require_columns(rows, [text, label], where, task.dataset)
            feature = data["train"].features.get(label)
            classes = getattr(feature, "num_classes", None)
            built = text_classification_task(
                task.label,
                tokenizer,
                rows[text],
                rows[label],
                max_length=task.max_length,
                num_labels=classes,
            )
        parts.append(built)
    return TaskSplit(parts[0], parts[1])


def _pixel_task(task: TaskSection, k: int) -> TaskSplit:
    where = f"tasks.{k} ({task.label})"
    loaded = _load(task, k, images=True)
    parts = []
    for split, n in (("train", task.train), ("test", task.test)):
        rows = rows_of(loaded.data, split, n, where)
        require_columns(rows, ["pixels", loaded.label], where, task.dataset)
        pixels = torch.tensor(list(rows["pixels"]), dtype=torch.float32)
        labels = torch.tensor(list(rows[loaded.label]), dtype=torch.long)
        if task.permutation is not None:
            g = torch.Generator().manual_seed(task.permutation)
            pixels = pixels[:, torch.randperm(pixels.shape[1], generator=g)]
        examples = [{"pixel_values": pixels[i], "labels": labels[i]} for i in range(len(labels))]
        parts.append(Task(task.label, examples))
    return TaskSplit(parts[0], parts[1])


def _num_labels(split: TaskSplit) -> int:
    labels = [int(e["labels"]) for e in split.train.examples]
    return int(getattr(split.train, "num_labels", 0) or max(labels) + 1)


def _model(config: ExperimentConfig, splits: list[TaskSplit] | None) -> tuple[nn.Module, Any]:
    """The model (before the tasks when ``splits`` is None: only the tokenizer matters then)."""
    from retain.assets.models import load_model, load_tokenizer, model_folder
    from retain.assets.tokenizer_loading import check_vocab_fits

    spec = config.model
    if spec.kind == "mlp":
        if splits is None:
            return nn.Identity(), None
        width = int(splits[0].train.examples[0]["pixel_values"].numel())
        classes = max(_num_labels(s) for s in splits)
        from retain.assets.mlp import MLP

        return MLP(width, spec.hidden, classes), None
    folder, _ = model_folder(spec.name)
    if splits is None:
        return nn.Identity(), load_tokenizer(folder, trust_remote_code=spec.trust_remote_code)
    if spec.kind == "task-heads":
        from retain.data.task_heads import TaskHeads

        heads = {s.train.name: _num_labels(s) for s in splits}
        model = TaskHeads.from_encoder_folder(
            folder, heads, pooling=spec.pooling, trust_remote_code=spec.trust_remote_code
        )
        tokenizer = load_tokenizer(folder, trust_remote_code=spec.trust_remote_code)
        check_vocab_fits(model.encoder, tokenizer, spec.name)
        return model, tokenizer
    remote = spec.trust_remote_code
    if spec.kind == "causal-lm":
        loaded = load_model(spec.name, kind="causal-lm", trust_remote_code=remote)
    else:
        classes = max(_num_labels(s) for s in splits)
        loaded = load_model(
            spec.name,
            kind="sequence-classification",
            trust_remote_code=remote,
            num_labels=classes,
        )
    return loaded.model, loaded.tokenizer


def build_strategies(
    entries: list[dict[str, Any]],
    config: ExperimentConfig,
    suite: EvalSuite | None,
    tokenizer: Any,
) -> list[Strategy]:
    """One strategy per entry (``{name, **params}``); an entry marked ``budget: true`` is wrapped
    in a :class:`~retain.training.budget.ForgettingBudget` with the config's budget."""
    built: list[Strategy] = []
    for k, entry in enumerate(entries):
        params = {key: value for key, value in entry.items() if key not in ("name", "budget")}
        if isinstance(params.get("source"), dict):  # replay of text given in YAML
            from retain.experiment.replay_source import build_replay_source

            where = f"strategies.{k}"
            params["source"] = build_replay_source(
                params["source"], config, suite, tokenizer, where
            )
            if params["source"] is not None:
                params.setdefault("exclude_texts", _suite_texts(suite))
        try:
            strategy = build_strategy(entry["name"], **params)
        except RetainError as error:
            raise RetainError(f"strategies.{k}: {error}") from None
        except (TypeError, ValueError) as error:
            raise RetainError(
                f"strategies.{k} ({entry['name']}): {error}; fix that parameter's value"
            ) from None
        if config.training.fsdp and strategy.unsharded_only is not None:
            raise RetainError(
                f"strategies.{k} ({strategy.name}) cannot train an FSDP-sharded model: "
                f"{strategy.unsharded_only}; set training.fsdp: false or drop it"
            )
        budget = config.budget
        if entry.get("budget") and budget is not None and suite is not None:
            from retain.training.budget import ForgettingBudget

            strategy = ForgettingBudget(
                strategy,
                suite,
                budget.max_degradation,
                every=budget.every,
                tokenizer=tokenizer,
                controller=budget.controller,
            )
        built.append(strategy)
    return built


def _suite_texts(suite: EvalSuite | None) -> list[str] | None:
    """The texts the suite's probes score (None when none keep texts)."""
    from retain.experiment.replay_source import evaluation_texts

    texts = evaluation_texts(suite)
    return texts or None


def build_experiment(config: ExperimentConfig, seed: int | None = None) -> Experiment:
    """Load the model, tasks and suite of ``config`` (strategies: :func:`build_strategies`).

    ``seed`` (default: the config's first) seeds Python, NumPy and torch before the model is
    built, so freshly initialised weights (an ``mlp``, a ``classifier`` head) are reproducible.
    """
    from accelerate.utils import set_seed

    set_seed(config.seeds[0] if seed is None else seed)
    _, tokenizer = _model(config, None)
    splits = [
        _pixel_task(task, k)
        if config.model.kind == "mlp"
        else _text_task(task, k, config, tokenizer)
        for k, task in enumerate(config.tasks)
    ]
    model, tokenizer = _model(config, splits)
    causal = config.model.kind == "causal-lm"
    monitor = None
    if config.monitor is not None:
        m = config.monitor
        monitor = MonitorConfig(m.max_degradation, m.patience, m.eval_every, m.restore_best)
    return Experiment(
        model=model,
        tokenizer=tokenizer,
        splits=splits,
        suite=build_suite(config),
        score=negative_loss if causal else task_accuracy,
        score_name="negative loss (nats/token)" if causal else "accuracy",
        higher_is_better=True,
        monitor=monitor,
    )


def validate_experiment(config: ExperimentConfig) -> list[str]:
    """Build everything a run needs except training; returns one line per thing checked.

    Checks: the model loads, every task's dataset has its splits and columns, the suite builds,
    every strategy (of the config and of every sweep variant) builds with its parameters, and
    every parameter regex (``params``, ``pattern``) matches parameters of the model.
    """
    built = build_experiment(config)
    device = check_training(config)
    lines = [
        f"model {config.model.name} ({config.model.kind}): "
        f"{sum(p.numel() for p in built.model.parameters()):,} parameters",
        f"training on {device} ({config.training.precision})",
    ]
    for split in built.splits:
        lines.append(
            f"task {split.train.name}: {len(split.train.examples)} train, "
            f"{len(split.test.examples)} test examples"
        )
    if built.suite is not None:
        lines.append(f"suite {built.suite.name}: {', '.join(p.name for p in built.suite.probes)}")
    variants = {
        "strategies": config.strategies,
        **{f"sweep.variants.{name}": entries for name, entries in config.sweep.variants.items()},
    }
    for label, entries in variants.items():
        build_strategies(entries, config, built.suite, built.tokenizer)
        for k, entry in enumerate(entries):
            for key in _REGEX_KEYS:
                if isinstance(entry.get(key), str):
                    select_parameters(
                        built.model,
                        entry[key],
                        trainable_only=False,
                        what=f"{label}.{k}.{key}",
                    )
        shown = ", ".join(e["name"] for e in entries) or "naive"
        lines.append(f"{label}: {shown}")
    for name, overrides in config.sweep.settings.items():
        data = apply_overrides(config.model_dump(mode="json"), overrides)
        config_from_dict(data, source=f"sweep.settings.{name}")
        lines.append(f"sweep.settings.{name}: {' '.join(overrides)}")
    return lines
