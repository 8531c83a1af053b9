"""Progressive adapters: one new PEFT adapter per task over a frozen base, routed by task at test.

Progressive Neural Networks (Rusu et al. 2016, "Progressive Neural Networks") add a new column of
capacity for every task and freeze every earlier column, so earlier tasks cannot be forgotten.
For pretrained transformers the column is a parameter-efficient adapter (as in adapter-per-task
and "Progressive Prompts" approaches, without lateral connections): task ``t`` trains only its own
adapter ``phi_t`` (and, for sequence classification, its own copy of the head, which PEFT keeps per
adapter through ``modules_to_save``), while the base ``theta`` and ``phi_1 .. phi_{t-1}`` stay
frozen. Evaluating task ``k`` routes through ``theta`` and ``phi_k`` alone
(:meth:`Progressive.use_task`), so

    f_k after task T  ==  f_k after task k    (bitwise),   hence backward transfer is exactly 0,

at the price of needing the task identity at evaluation time and ``T`` adapters of memory.
"""

from __future__ import annotations

import copy
import re
import zlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from retain.data.task import Task
from retain.errors import RetainError
from retain.strategies.base import StateDict, Strategy, register_strategy
from retain.strategies.peft_adapters import (
    PeftTaskType,
    add_peft_adapter,
    build_peft_config,
    check_config_keys,
    check_task_type,
    is_peft_model,
    peft_config_class,
    unwrap_peft,
    wrap_with_peft,
)

if TYPE_CHECKING:
    from peft import PeftConfig, PeftModel

__all__ = ["Progressive", "adapter_name", "adapter_parameters"]

# The adapter PEFT needs at prepare(), before the first task is known; deleted at the first task.
# The "-" keeps it apart from every sanitised task name.
_PLACEHOLDER = "retain-pending"


def adapter_name(task_name: str) -> str:
    """The PEFT adapter name for a task: runs of characters outside ``[0-9A-Za-z_]`` become ``_``.

    >>> adapter_name("sst2 / v1.0")
    'sst2_v1_0'
    """
    cleaned = re.sub(r"[^0-9A-Za-z_]+", "_", str(task_name)).strip("_")
    if not cleaned:
        raise RetainError(
            f"task name {task_name!r} has no letter or digit; name the task to name its adapter"
        )
    return cleaned


@register_strategy("one new PEFT adapter per task over a frozen base, routed by task (Rusu 2016)")
class Progressive(Strategy):
    """One PEFT adapter per task; earlier adapters and the base are frozen (Rusu et al. 2016).

    Args:
        method: the PEFT method of every adapter (``"lora"``, ``"ia3"``, ...).
        config: keyword arguments of that method's PEFT config class (``{"r": 4}``).
        task_type: the PEFT task type, or ``"auto"`` to take it from the model class (a
            ``*ForSequenceClassification`` model then gets one classifier head per task).
        seed: the adapter of task ``name`` is initialised from ``seed + crc32(adapter name)``
            on a forked CPU random generator, so its initial weights do not depend on the global
            random state (a resumed run and both training hosts create identical adapters).

    ``prepare`` wraps the model in PEFT (every weight frozen); ``on_task_start`` adds the task's
    adapter, makes it the active one and its parameters the only trainable ones. Call
    :meth:`use_task` before evaluating a task, and ``use_task`` of the task in training before
    training continues. ``tasks`` lists the task names in order; :meth:`state_dict` holds that list
    (the adapter weights are model weights, saved with the model).
    """

    name = "progressive"
    unsharded_only = "it adds columns to the model"
    conflicts: ClassVar[Mapping[str, str]] = {
        "lora": "progressive already trains one PEFT adapter per task",
        "peft": "progressive already trains one PEFT adapter per task",
        "ewc": "progressive freezes all earlier capacity, so EWC has nothing left to protect",
        "l2sp": "progressive freezes all earlier capacity, so L2-SP has nothing left to protect",
        "freeze": (
            "progressive resets which parameters train at every task; choose the adapter's "
            "target_modules / layers_to_transform in its PEFT config instead"
        ),
        "gradual_unfreezing": (
            "unfreezing base weights would break progressive's zero-forgetting guarantee"
        ),
    }

    def __init__(
        self,
        method: str = "lora",
        config: dict[str, Any] | None = None,
        task_type: PeftTaskType = "auto",
        seed: int = 0,
    ) -> None:
        self.method = str(method).lower()
        peft_config_class(self.method)
        self.config = dict(config or {})
        check_config_keys(self.method, self.config)
        self.task_type = task_type
        check_task_type(task_type)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise RetainError(f"progressive seed must be an integer, got {seed!r}")
        self.seed = seed
        self.tasks: list[str] = []
        self._model: PeftModel | None = None
        self._peft_config: PeftConfig | None = None
        self._pending: list[str] | None = None  # tasks loaded from a state, not yet on a model

    @property
    def _what(self) -> str:
        return f"progressive {self.method}"

    def is_prepared(self, model: nn.Module) -> bool:
        """The model is a PeftModel (the per-task adapters live in it)."""
        return is_peft_model(model)

    def prepare(self, model: nn.Module) -> nn.Module:
        """Wrap ``model`` in PEFT with every parameter frozen; adapters come with the tasks."""
        if self.tasks:
            raise RetainError(
                "progressive already holds adapters for tasks "
                f"{self.tasks}; build a fresh strategy for another model"
            )
        peft_config = build_peft_config(self.method, self.config, self.task_type, model)
        peft_model = wrap_with_peft(model, peft_config, self._what, adapter_name=_PLACEHOLDER)
        for p in peft_model.parameters():
            p.requires_grad_(False)
        self._model, self._peft_config = peft_model, peft_config
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self._restore(peft_model, pending)
        return peft_model

    def _bind(self, model: nn.Module) -> PeftModel:
        """The PeftModel to act on: the prepared one, or a copy of it holding exactly our tasks'
        adapters (a deep copy, or a checkpoint loaded by a resumed run)."""
        peft_model = unwrap_peft(model, "progressive")
        if peft_model is self._model:
            return peft_model
        expected = self._pending if self._pending is not None else self.tasks
        found = sorted(set(peft_model.peft_config) - {_PLACEHOLDER})
        if found != sorted(adapter_name(t) for t in expected) or not found:
            raise RetainError(
                f"progressive got a model with adapters {found} but knows tasks {expected}; "
                "pass the model its prepare() returned"
            )
        self._model = peft_model
        self._peft_config = copy.deepcopy(peft_model.peft_config[adapter_name(expected[-1])])
        if self._pending is not None:
            self.tasks, self._pending = list(self._pending), None
            self._activate(peft_model, self.tasks[-1])
        return peft_model

    def _add(self, peft_model: PeftModel, task_name: str) -> None:
        """Add the adapter of ``task_name``, initialised from its own seed."""
        if self._peft_config is None:
            raise RetainError("progressive: call prepare(model) before the first task")
        name = adapter_name(task_name)
        for known in self.tasks:
            if known == task_name or adapter_name(known) == name:
                raise RetainError(
                    f"progressive already has an adapter for task {known!r}, so task "
                    f"{task_name!r} cannot get one; give every task a distinct name"
                )
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed((self.seed + zlib.crc32(name.encode())) % 2**63)
            add_peft_adapter(peft_model, name, self._peft_config, self._what)
        if not adapter_parameters(peft_model, name):
            raise RetainError(
                f"{self._what} adapter for task {task_name!r} has no parameters; "
                "use a PEFT method that adds weights (lora, ia3, loha, ...)"
            )
        if _PLACEHOLDER in peft_model.peft_config:
            peft_model.set_adapter(name)
            peft_model.delete_adapter(_PLACEHOLDER)
        self.tasks.append(task_name)

    def _activate(self, peft_model: PeftModel, task_name: str) -> None:
        """Route through ``task_name``'s adapter; only the newest task's adapter is trainable."""
        name = adapter_name(task_name)
        peft_model.set_adapter(name)  # PEFT also toggles requires_grad: overridden below
        newest = task_name == self.tasks[-1]
        trainable = adapter_parameters(peft_model, name) if newest else set()
        for n, p in peft_model.named_parameters():
            p.requires_grad_(n in trainable)

    def _restore(self, peft_model: PeftModel, tasks: list[str]) -> None:
        for task_name in tasks:
            self._add(peft_model, task_name)
        if tasks:
            self._activate(peft_model, tasks[-1])

    def on_task_start(self, model: nn.Module, task: Task) -> None:
        """Add ``task``'s adapter; make it the active one and the only trainable parameters.

        Starting the newest task again (a restart, or a resumed run) continues its adapter; the
        name of any earlier task raises :class:`~retain.errors.RetainError`.
        """
        peft_model = self._bind(model)
        if not self.tasks or task.name != self.tasks[-1]:
            self._add(peft_model, task.name)
        self._activate(peft_model, task.name)

    def use_task(self, model: nn.Module, task_name: str) -> None:
        """Route the model through ``task_name``'s adapter (for evaluating that task).

        Earlier tasks' adapters stay frozen; the newest task's adapter stays trainable, so
        ``use_task(model, newest)`` also restores training after an evaluation.
        """
        peft_model = self._bind(model)
        if task_name not in self.tasks:
            known = ", ".join(repr(t) for t in self.tasks) or "none yet"
            raise RetainError(
                f"progressive has no adapter for task {task_name!r} (tasks: {known}); "
                "pass the name of a task trained so far"
            )
        self._activate(peft_model, task_name)

    def route(self, model: nn.Module, task_name: str) -> None:
        """:meth:`use_task` for a task that has an adapter; other tasks are left alone."""
        if task_name in self.tasks:
            self.use_task(model, task_name)

    def after_backward(self, model: nn.Module) -> None:
        """Refuse a training step taken through another task's adapter (left by an evaluation)."""
        peft_model = self._bind(model)
        if self.tasks and peft_model.active_adapter != adapter_name(self.tasks[-1]):
            raise RetainError(
                f"progressive is training task {self.tasks[-1]!r} but adapter "
                f"{peft_model.active_adapter!r} is active; call use_task(model, "
                f"{self.tasks[-1]!r}) after evaluating other tasks"
            )

    def state_dict(self) -> StateDict:
        """``{"tasks": [names in order]}``; the adapters' weights are in the model checkpoint."""
        return {"tasks": list(self.tasks if self._pending is None else self._pending)}

    def load_state_dict(self, state: StateDict) -> None:
        """Take the saved task list. On a prepared model the adapters are re-created now (so the
        model checkpoint loads into them); before ``prepare`` they are created there; a model that
        already holds them (a copy) is adopted at the next hook. The last task may start again."""
        tasks = state.get("tasks")
        if set(state) != {"tasks"} or not isinstance(tasks, list):
            raise RetainError(
                f"progressive state must be {{'tasks': [names]}}, got keys {sorted(state)}; "
                "load the state this strategy saved"
            )
        if self.tasks:
            raise RetainError(
                "progressive already has adapters; load its state into a fresh strategy"
            )
        names = [str(t) for t in tasks]
        if self._model is not None:
            self._restore(self._model, names)
        else:
            self._pending = names


def adapter_parameters(peft_model: nn.Module, adapter: str) -> set[str]:
    """Names of the parameters that belong to ``adapter``: PEFT keeps every adapter's weights in
    a ``ModuleDict``/``ParameterDict`` keyed by the adapter name (``lora_A.<adapter>.weight``,
    ``classifier.modules_to_save.<adapter>.bias``, ``ia3_l.<adapter>``)."""
    modules = dict(peft_model.named_modules())
    owned = set()
    for full, _ in peft_model.named_parameters():
        parts = full.split(".")
        for i in range(1, len(parts)):
            parent = modules.get(".".join(parts[:i]))
            if parts[i] == adapter and isinstance(parent, (nn.ModuleDict, nn.ParameterDict)):
                owned.add(full)
                break
    return owned
