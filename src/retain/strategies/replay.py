"""Experience replay: train each task on its data mixed with examples kept from earlier tasks.

David Rolnick, Arun Ahuja, Jonathan Schwarz, Timothy Lillicrap, Greg Wayne, "Experience Replay
for Continual Learning", NeurIPS 2019; Arslan Chaudhry, Marcus Rohrbach, Mohamed Elhoseiny,
Thalaiyasingam Ajanthan, Puneet K. Dokania, Philip H. S. Torr, Marc'Aurelio Ranzato, "On Tiny
Episodic Memories in Continual Learning", 2019.

After each task its examples are offered to a :class:`~retain.strategies.replay_buffer.ReplayBuffer`
(reservoir or class-balanced). A task's training data is its ``n`` examples followed by
``k = round(n · ratio / (1 − ratio))`` buffer examples, so ``ratio`` of the mixed data is replayed
and a shuffling loader gives every batch that fraction in expectation. An external ``source``
(general text for a language model, say) counts as a task before the first one.

Distributed training: each rank keeps its own buffer, filled from the examples its
``on_task_end`` is given; nothing is communicated. When every rank is given the whole task (the
usual case: the sampler shards batches, not the :class:`~retain.data.task.Task`), the seeded
buffers are identical on all ranks, so one checkpoint restores every rank; a host that gives each
rank its own shard gets per-rank samples. The mixed data has ``n + k`` examples on every rank, as
distributed samplers require.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from retain.data.task import Task
from retain.data.task_heads import tag_with_head
from retain.errors import RetainError
from retain.strategies.base import StateDict, Strategy, register_strategy
from retain.strategies.replay_buffer import (
    ReplayBuffer,
    Selection,
    check_count,
    check_ratio,
    check_selection,
    derive_seed,
    mix,
)

__all__ = ["Replay", "check_no_overlap"]


def _normalise(text: str) -> str:
    return " ".join(text.split()).casefold()


def check_no_overlap(source: Task, exclude_texts: Sequence[str]) -> None:
    """Refuse a replay source whose ``texts`` share any text with ``exclude_texts`` (evaluation
    text), comparing case-folded text with whitespace runs collapsed to one space."""
    if source.texts is None:
        raise RetainError(
            f"replay source {source.name!r} has no texts, which exclude_texts needs for the "
            "overlap check; build the source Task with texts=[...] or drop exclude_texts"
        )
    excluded = {_normalise(t) for t in exclude_texts}
    shared = [t for t in source.texts if _normalise(t) in excluded]
    if shared:
        example = shared[0] if len(shared[0]) <= 60 else shared[0][:57] + "..."
        raise RetainError(
            f"replay source {source.name!r} shares {len(shared)} text(s) with the evaluation texts "
            f"(e.g. {example!r}); remove them from the source so evaluation stays unseen"
        )


@register_strategy("experience replay: mix a reservoir or class-balanced buffer into each task")
class Replay(Strategy):
    """Experience replay (Rolnick et al. 2019; Chaudhry et al. 2019).

    Args:
        ratio: fraction of replayed examples in the mix, in ``[0, 1)``; ``k = round(n · ratio /
            (1 − ratio))`` buffer examples join a task's ``n``. 0 switches replay off (the task is
            returned unchanged).
        buffer_size: the most examples kept (>= 1).
        selection: ``"reservoir"`` (algorithm R: uniform over every example seen) or
            ``"class_balanced"`` (equal share per class of ``label_key``, evicting from the
            largest class).
        seed: seeds buffer selection and, per task, the draw of replayed examples.
        label_key: the example key with the class label (``"class_balanced"``).
        source: an external replay source counted as a task before the first; its examples enter
            the buffer at the first ``on_task_start``.
        exclude_texts: evaluation texts the source must not contain (checked at construction,
            case- and whitespace-insensitively, against ``source.texts``).

    Replayed examples are drawn without replacement when ``k <= len(buffer)``, else with
    replacement. They must have the task's keys; shapes may differ when the task's collate pads.
    """

    name = "replay"
    unsharded_only = None  # every rank mixes the same seeded buffer: tests/training/test_fsdp.py

    def __init__(
        self,
        ratio: float = 0.5,
        buffer_size: int = 1000,
        selection: Selection = "reservoir",
        seed: int = 0,
        label_key: str = "labels",
        source: Task | None = None,
        exclude_texts: Sequence[str] | None = None,
    ) -> None:
        self.ratio = check_ratio("replay", ratio)
        self.buffer_size = check_count(
            "replay", "buffer_size", buffer_size, 1, "; use ratio=0 to switch replay off"
        )
        self.selection = check_selection("replay", selection)
        self.seed = int(seed)
        self.label_key = label_key
        if source is not None and not isinstance(source, Task):
            raise RetainError(f"replay source must be a Task, got {type(source).__name__}")
        if exclude_texts is not None:
            if isinstance(exclude_texts, str):
                raise RetainError("replay exclude_texts must be a list of texts, not one string")
            if source is None:
                raise RetainError(
                    "replay exclude_texts is checked against a source, but source is None; "
                    "pass source=Task(..., texts=[...]) or drop exclude_texts"
                )
            check_no_overlap(source, exclude_texts)
        self.source = source
        self.exclude_texts = exclude_texts
        self.buffer = ReplayBuffer(self.buffer_size, self.selection, self.seed, label_key, "replay")
        self.source_added = False

    def on_task_start(self, model: nn.Module, task: Task) -> None:
        """Put the source's examples into the buffer (at the first task start only)."""
        if self.source is not None and not self.source_added:
            self.buffer.add(self.source.examples)
            self.source_added = True

    def train_data(self, task: Task, model: nn.Module) -> Task:
        """The task's examples followed by ``k`` replayed ones (see :func:`mix`).

        The draw is seeded by ``seed``, the task's name and size and the number of examples the
        buffer has seen, so calling it again for the same task (a resumed run) gives the same mix.
        """
        seed = derive_seed(self.seed, "replay-mix", task.name, len(task.examples), self.buffer.seen)
        tagged = tag_with_head(model, task.name, task.examples) if self.ratio > 0 else None
        if tagged is not None and tagged is not task.examples and len(self.buffer.examples):
            task = task.with_examples(tagged)
        return mix(task, self.buffer.examples, self.ratio, seed, "replay")

    def on_task_end(self, model: nn.Module, task: Task) -> None:
        """Offer the task's own examples to the buffer (tagged with their head's index when the
        model has one head per task, so replayed examples are scored by their own head)."""
        self.buffer.add(tag_with_head(model, task.name, task.examples))

    def state_dict(self) -> StateDict:
        """The buffer (examples, ``seen``, RNG state) and whether the source was added."""
        state = self.buffer.state_dict()
        state["source_added"] = self.source_added
        return state

    def load_state_dict(self, state: StateDict) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.buffer.load_state_dict(state)
        self.source_added = bool(state["source_added"])

    def describe(self) -> str:
        """``replay(ratio=..., ...)`` with the source shown by name and the texts by count."""
        source = None if self.source is None else f"<task {self.source.name!r}>"
        texts = None if self.exclude_texts is None else f"<{len(self.exclude_texts)} texts>"
        return (
            f"{self.name}(ratio={self.ratio!r}, buffer_size={self.buffer_size!r}, "
            f"selection={self.selection!r}, seed={self.seed!r}, label_key={self.label_key!r}, "
            f"source={source}, exclude_texts={texts})"
        )
