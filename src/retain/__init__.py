"""retain: know and bound what a model forgets when you fine-tune it.

The public API is listed in ``__all__``; everything else lives in private-by-convention modules
whose layout may change.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from retain.assets.datasets import DATASETS, load_dataset
    from retain.assets.models import MODELS, LoadedModel, load_model
    from retain.data.permuted import TaskSplit
    from retain.data.task import CausalLM, Classification, Task
    from retain.data.task_heads import TaskHeads
    from retain.data.text import causal_lm_task, text_classification_task
    from retain.diagnostics.drift import parameter_drift
    from retain.diagnostics.fisher import estimate_fisher
    from retain.diagnostics.importance import fisher_overlap
    from retain.diagnostics.interference import InterferenceTracker, gradient_interference
    from retain.diagnostics.output_shift import output_shift
    from retain.diagnostics.similarity import linear_cka, representation_shift
    from retain.errors import MissingAssetError, RetainError, UnknownNameError
    from retain.evaluation.accuracy import ClassificationAccuracy
    from retain.evaluation.base import Probe, ProbeResult
    from retain.evaluation.perplexity import Perplexity, strided_log_likelihood
    from retain.evaluation.pseudo_perplexity import PseudoPerplexity
    from retain.evaluation.representation import KNNProbe, LinearProbe, pooled_embeddings
    from retain.evaluation.suite import CapabilityChange, EvalSuite, SuiteResult
    from retain.evaluation.suites import PROBES, SUITES
    from retain.evaluation.task_accuracy import negative_loss, task_accuracy
    from retain.evaluation.task_probe import TaskAccuracyProbe
    from retain.evaluation.zero_shot import ZeroShotClassification
    from retain.experiment.audit import AuditConfig, run_audit
    from retain.experiment.diagnose import DiagnoseConfig, run_diagnose
    from retain.metrics import (
        Degradation,
        average_accuracy,
        average_forgetting,
        average_forgetting_first_last,
        backward_transfer,
        degradation,
        forgetting,
        forgetting_first_last,
        forward_transfer,
        perplexity_ratio,
    )
    from retain.records.audit import AuditRecord
    from retain.records.comparison import ComparisonRecord
    from retain.records.diagnose import DiagnoseRecord
    from retain.records.run import RunRecord
    from retain.report.write import write_report
    from retain.strategies.base import STRATEGIES, Strategy, build_strategy
    from retain.strategies.chain import Chain, chain
    from retain.strategies.state import load_strategy_state, save_strategy_state
    from retain.training.budget import ForgettingBudget
    from retain.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
    from retain.training.hf import RetainCallback
    from retain.training.loop import TaskHooks, TrainConfig, make_optimizer, train_task
    from retain.training.monitor import ForgettingMonitor, MonitorConfig
    from retain.training.sequence import RunResult, fit_sequence

from retain.version import __version__

__all__ = [
    "DATASETS",
    "MODELS",
    "PROBES",
    "STRATEGIES",
    "SUITES",
    "AuditConfig",
    "AuditRecord",
    "CapabilityChange",
    "CausalLM",
    "Chain",
    "Classification",
    "ClassificationAccuracy",
    "ComparisonRecord",
    "Degradation",
    "DiagnoseConfig",
    "DiagnoseRecord",
    "EvalSuite",
    "ForgettingBudget",
    "ForgettingMonitor",
    "InterferenceTracker",
    "KNNProbe",
    "LinearProbe",
    "LoadedModel",
    "MissingAssetError",
    "MonitorConfig",
    "Perplexity",
    "Probe",
    "ProbeResult",
    "PseudoPerplexity",
    "RetainCallback",
    "RetainError",
    "RunRecord",
    "RunResult",
    "Strategy",
    "SuiteResult",
    "Task",
    "TaskAccuracyProbe",
    "TaskHeads",
    "TaskHooks",
    "TaskSplit",
    "TrainConfig",
    "UnknownNameError",
    "ZeroShotClassification",
    "__version__",
    "average_accuracy",
    "average_forgetting",
    "average_forgetting_first_last",
    "backward_transfer",
    "build_strategy",
    "causal_lm_task",
    "chain",
    "degradation",
    "estimate_fisher",
    "fisher_overlap",
    "fit_sequence",
    "forgetting",
    "forgetting_first_last",
    "forward_transfer",
    "gradient_interference",
    "latest_checkpoint",
    "linear_cka",
    "load_checkpoint",
    "load_dataset",
    "load_model",
    "load_strategy_state",
    "make_optimizer",
    "negative_loss",
    "output_shift",
    "parameter_drift",
    "perplexity_ratio",
    "pooled_embeddings",
    "representation_shift",
    "run_audit",
    "run_diagnose",
    "save_checkpoint",
    "save_strategy_state",
    "strided_log_likelihood",
    "task_accuracy",
    "text_classification_task",
    "train_task",
    "write_report",
]

# Heavy libraries (torch, transformers, datasets) load on first use: `retain --version` is instant.
_LAZY = {
    "ForgettingBudget": "retain.training.budget",
    "TaskHooks": "retain.training.loop",
    "latest_checkpoint": "retain.training.checkpoint",
    "load_checkpoint": "retain.training.checkpoint",
    "save_checkpoint": "retain.training.checkpoint",
    "negative_loss": "retain.evaluation.task_accuracy",
    "task_accuracy": "retain.evaluation.task_accuracy",
    "TaskSplit": "retain.data.permuted",
    "causal_lm_task": "retain.data.text",
    "text_classification_task": "retain.data.text",
    "TaskHeads": "retain.data.task_heads",
    "fit_sequence": "retain.training.sequence",
    "RunResult": "retain.training.sequence",
    "RunRecord": "retain.records.run",
    "ComparisonRecord": "retain.records.comparison",
    "AuditRecord": "retain.records.audit",
    "DiagnoseRecord": "retain.records.diagnose",
    "ForgettingMonitor": "retain.training.monitor",
    "MonitorConfig": "retain.training.monitor",
    "TaskAccuracyProbe": "retain.evaluation.task_probe",
    "Task": "retain.data.task",
    "Classification": "retain.data.task",
    "CausalLM": "retain.data.task",
    "Strategy": "retain.strategies.base",
    "STRATEGIES": "retain.strategies.base",
    "build_strategy": "retain.strategies.base",
    "Chain": "retain.strategies.chain",
    "chain": "retain.strategies.chain",
    "save_strategy_state": "retain.strategies.state",
    "load_strategy_state": "retain.strategies.state",
    "TrainConfig": "retain.training.loop",
    "train_task": "retain.training.loop",
    "make_optimizer": "retain.training.loop",
    "RetainCallback": "retain.training.hf",
    "estimate_fisher": "retain.diagnostics.fisher",
    "DiagnoseConfig": "retain.experiment.diagnose",
    "InterferenceTracker": "retain.diagnostics.interference",
    "fisher_overlap": "retain.diagnostics.importance",
    "gradient_interference": "retain.diagnostics.interference",
    "linear_cka": "retain.diagnostics.similarity",
    "output_shift": "retain.diagnostics.output_shift",
    "parameter_drift": "retain.diagnostics.drift",
    "representation_shift": "retain.diagnostics.similarity",
    "run_diagnose": "retain.experiment.diagnose",
    "write_report": "retain.report.write",
    "Degradation": "retain.metrics",
    "average_accuracy": "retain.metrics",
    "average_forgetting": "retain.metrics",
    "average_forgetting_first_last": "retain.metrics",
    "backward_transfer": "retain.metrics",
    "degradation": "retain.metrics",
    "forgetting": "retain.metrics",
    "forgetting_first_last": "retain.metrics",
    "forward_transfer": "retain.metrics",
    "perplexity_ratio": "retain.metrics",
    "AuditConfig": "retain.experiment.audit",
    "CapabilityChange": "retain.evaluation.suite",
    "ClassificationAccuracy": "retain.evaluation.accuracy",
    "DATASETS": "retain.assets.datasets",
    "EvalSuite": "retain.evaluation.suite",
    "KNNProbe": "retain.evaluation.representation",
    "LinearProbe": "retain.evaluation.representation",
    "LoadedModel": "retain.assets.models",
    "MODELS": "retain.assets.models",
    "MissingAssetError": "retain.errors",
    "PROBES": "retain.evaluation.suites",
    "Perplexity": "retain.evaluation.perplexity",
    "Probe": "retain.evaluation.base",
    "ProbeResult": "retain.evaluation.base",
    "PseudoPerplexity": "retain.evaluation.pseudo_perplexity",
    "RetainError": "retain.errors",
    "SUITES": "retain.evaluation.suites",
    "SuiteResult": "retain.evaluation.suite",
    "UnknownNameError": "retain.errors",
    "ZeroShotClassification": "retain.evaluation.zero_shot",
    "load_dataset": "retain.assets.datasets",
    "load_model": "retain.assets.models",
    "pooled_embeddings": "retain.evaluation.representation",
    "run_audit": "retain.experiment.audit",
    "strided_log_likelihood": "retain.evaluation.perplexity",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'retain' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
