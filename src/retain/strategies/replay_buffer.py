"""The replay buffer and the replay mix shared by ``replay``, ``generative_replay`` and ``agem``.

Selection over the stream of every example the buffer has been offered, in order:

* ``"reservoir"``: Vitter's algorithm R (J. S. Vitter, "Random sampling with a reservoir", ACM TOMS
  1985), the buffer of Rolnick et al. 2019 and Chaudhry et al. 2019. The first ``capacity``
  examples fill the buffer; the t-th example (t > capacity, counted over all tasks) then replaces
  slot ``j ~ U{0..t-1}`` when ``j < capacity``, so after t examples each one is held with
  probability ``capacity / t``.
* ``"class_balanced"``: class-balanced reservoir sampling (after CBRS, Chrysakis & Moens, "Online
  Continual Learning from Imbalanced Data", ICML 2020). When the buffer is full, an example of a
  class that is not (one of) the largest in the buffer evicts a random example of a largest class
  (ties broken at random); an example of a largest class ``c`` replaces a random example of ``c``
  with probability ``m_c / n_c`` (``m_c`` held, ``n_c`` seen), which keeps a uniform sample within
  the class. Class counts then differ by at most one whenever the stream holds enough of each.

The replay mix (:func:`mix`) appends ``k = round(n · ratio / (1 − ratio))`` buffer examples to a
task's ``n`` examples, so replayed examples make up ``ratio`` of the mixed data set; a shuffling
loader then gives every batch the ratio in expectation. Mixing at the data-set level leaves the
host's own data loader (the plain loop's or a ``Trainer``'s) untouched.

Randomness comes from seeded ``torch.Generator`` objects, never the global RNG; the buffer's
generator state is part of its ``state_dict`` so a resumed run selects exactly as an unbroken one.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterator, Sequence
from typing import Literal, overload

import torch
from torch import Tensor

from retain.data.task import Example, Task
from retain.errors import RetainError
from retain.strategies.base import StateDict

__all__ = [
    "MixedExamples",
    "ReplayBuffer",
    "Selection",
    "check_count",
    "check_ratio",
    "derive_seed",
    "draw",
    "examples_from_state",
    "examples_state",
    "mix",
    "replay_count",
]

Selection = Literal["reservoir", "class_balanced"]


def derive_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed from ``seed`` and ``parts`` (BLAKE2b of their repr: stable across runs)."""
    digest = hashlib.blake2b(repr((int(seed), *parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def check_ratio(strategy: str, ratio: float) -> float:
    """``ratio`` as a float in ``[0, 1)``: the fraction of replayed examples in the mix."""
    value = float(ratio)
    if not 0.0 <= value < 1.0:
        raise RetainError(
            f"{strategy} ratio must be in [0, 1) (the fraction of replayed examples), got {ratio}; "
            "use 0 to switch replay off"
        )
    return value


def check_count(strategy: str, parameter: str, value: int, minimum: int, hint: str = "") -> int:
    """``value`` as an int ``>= minimum`` (booleans and fractions are refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise RetainError(
            f"{strategy} {parameter} must be an integer >= {minimum}, got {value!r}{hint}"
        )
    return value


def check_selection(strategy: str, selection: str) -> Selection:
    """``selection`` if it names a buffer policy."""
    if selection == "reservoir":
        return "reservoir"
    if selection == "class_balanced":
        return "class_balanced"
    raise RetainError(
        f"{strategy} selection must be 'reservoir' or 'class_balanced', got {selection!r}"
    )


def replay_count(n: int, ratio: float) -> int:
    """Replayed examples added to ``n`` task examples: ``k = round(n · ratio / (1 − ratio))``."""
    return round(n * ratio / (1.0 - ratio))


def _own(example: Example, where: str) -> Example:
    """A detached CPU copy of ``example`` (so the buffer holds no views of task storage)."""
    if not isinstance(example, dict):
        raise RetainError(
            f"{where}: an example is a {type(example).__name__}, not a dict of tensors"
        )
    owned: Example = {}
    for key, value in example.items():
        if not isinstance(value, Tensor):
            raise RetainError(
                f"{where}: example key {key!r} holds a {type(value).__name__}, not a tensor; "
                "give the task tensors (for a datasets.Dataset: set_format('torch'))"
            )
        owned[key] = value.detach().to("cpu", copy=True)
    return owned


class ReplayBuffer:
    """At most ``capacity`` examples chosen from a stream by ``selection`` (see the module text).

    Args:
        capacity: the most examples held (>= 1).
        selection: ``"reservoir"`` (uniform over the stream) or ``"class_balanced"``.
        seed: seeds the buffer's own ``torch.Generator``.
        label_key: the example key holding one integer class label (``"class_balanced"``).
        owner: the strategy name used in error messages.
    """

    def __init__(
        self,
        capacity: int,
        selection: Selection = "reservoir",
        seed: int = 0,
        label_key: str = "labels",
        owner: str = "replay",
    ) -> None:
        self.capacity = check_count(owner, "buffer size", capacity, 1)
        self.selection = check_selection(owner, selection)
        self.label_key = label_key
        self.owner = owner
        self.examples: list[Example] = []
        #: examples offered so far, over all calls of :meth:`add`
        self.seen = 0
        self.generator = torch.Generator().manual_seed(int(seed))
        self._labels: list[int] = []  # class of each slot (class_balanced)
        self._slots: dict[int, list[int]] = {}  # sorted slots of each class (class_balanced)
        self._class_seen: dict[int, int] = {}  # n_c: examples of class c offered

    def __len__(self) -> int:
        return len(self.examples)

    def add(self, examples: Sequence[Example]) -> None:
        """Offer every example of ``examples`` to the buffer, in order."""
        if self.selection == "reservoir":
            self._add_reservoir(examples)
        else:
            for example in examples:
                self._add_balanced(example)

    def counts(self) -> dict[int, int]:
        """Examples held per class (``"class_balanced"`` only; empty for reservoir)."""
        return {c: len(s) for c, s in sorted(self._slots.items())}

    def _add_reservoir(self, examples: Sequence[Example]) -> None:
        n = len(examples)
        held = len(self.examples)
        fill = min(n, self.capacity - held)
        writer = {held + i: i for i in range(fill)}  # slot -> stream index; the last write wins
        if n > fill:
            t = torch.arange(self.seen + fill + 1, self.seen + n + 1, dtype=torch.float64)
            u = torch.rand(n - fill, generator=self.generator, dtype=torch.float64)
            slot = (u * t).floor().long()  # j ~ U{0..t-1} for the t-th example
            for i in torch.nonzero(slot < self.capacity).flatten().tolist():
                writer[int(slot[i])] = fill + i
        # Only the examples that end up held are read (a lazy dataset is not read in full).
        for s in sorted(writer):
            example = _own(examples[writer[s]], f"{self.owner} buffer")
            if s < len(self.examples):
                self.examples[s] = example
            else:
                self.examples.append(example)
        self.seen += n

    def _label(self, example: Example) -> int:
        value = example.get(self.label_key) if isinstance(example, dict) else None
        if not isinstance(value, Tensor):
            keys = sorted(example) if isinstance(example, dict) else []
            raise RetainError(
                f"{self.owner} class_balanced selection needs a {self.label_key!r} tensor in every "
                f"example (got keys {keys}); set label_key or use selection='reservoir'"
            )
        if value.numel() != 1 or value.dtype.is_floating_point or value.is_complex():
            raise RetainError(
                f"{self.owner} class_balanced selection needs one integer class per example, but "
                f"{self.label_key!r} has shape {list(value.shape)} and dtype {value.dtype}; "
                "use selection='reservoir' for sequence data"
            )
        return int(value.item())

    def _randint(self, high: int) -> int:
        return int(torch.randint(high, (1,), generator=self.generator).item())

    def _add_balanced(self, example: Example) -> None:
        label = self._label(example)
        self.seen += 1
        self._class_seen[label] = seen_c = self._class_seen.get(label, 0) + 1
        if len(self.examples) < self.capacity:
            self._put(len(self.examples), example, label)
            return
        largest = max(len(s) for s in self._slots.values())
        held_c = len(self._slots.get(label, ()))
        if held_c < largest:  # not a largest class: evict from a largest one
            victims = [c for c, s in sorted(self._slots.items()) if len(s) == largest]
            victim = victims[self._randint(len(victims))] if len(victims) > 1 else victims[0]
            slots = self._slots[victim]
            self._put(slots[self._randint(len(slots))], example, label)
        else:  # reservoir within the class: replace with probability m_c / n_c
            r = self._randint(seen_c)
            if r < held_c:
                self._put(self._slots[label][r], example, label)

    def _put(self, slot: int, example: Example, label: int) -> None:
        owned = _own(example, f"{self.owner} buffer")
        if slot == len(self.examples):
            self.examples.append(owned)
            self._labels.append(label)
        else:
            old = self._labels[slot]
            slots = self._slots[old]
            del slots[bisect.bisect_left(slots, slot)]
            if not slots:
                del self._slots[old]
            self.examples[slot] = owned
            self._labels[slot] = label
        bisect.insort(self._slots.setdefault(label, []), slot)

    def state_dict(self) -> StateDict:
        """Examples (see :func:`examples_state`), ``seen``, per-class counts and the RNG state."""
        state = examples_state(self.examples, "buffer")
        state["buffer_config"] = {"capacity": self.capacity, "selection": self.selection}
        state["seen"] = self.seen
        state["class_seen"] = [[c, n] for c, n in sorted(self._class_seen.items())]
        state["rng"] = self.generator.get_state()
        return state

    def load_state_dict(self, state: StateDict) -> None:
        """Restore what :meth:`state_dict` returned (into a buffer built with the same settings)."""
        saved = state.get("buffer_config")
        if not isinstance(saved, dict):
            raise RetainError(f"{self.owner} state has no buffer; load a state this strategy saved")
        mine = {"capacity": self.capacity, "selection": self.selection}
        if saved != mine:
            raise RetainError(
                f"{self.owner} state was saved with buffer {saved}, but this strategy has {mine}; "
                "build the strategy with the parameters it was saved with"
            )
        self.examples = examples_from_state(state, "buffer")
        self.seen = int(state["seen"])
        self._class_seen = {int(c): int(n) for c, n in state["class_seen"]}
        self.generator.set_state(state["rng"])
        self._labels, self._slots = [], {}
        if self.selection == "class_balanced":
            for slot, example in enumerate(self.examples):
                label = self._label(example)
                self._labels.append(label)
                self._slots.setdefault(label, []).append(slot)


def examples_state(examples: Sequence[Example], prefix: str) -> StateDict:
    """Examples as flat state: ``"<prefix>.<key>"`` stacks a key shared by every example with
    one shape and dtype (``[N, ...]``); other keys are stored per example as
    ``"<prefix>.<i>.<key>"``; ``"<prefix>_layout"`` (JSON) says which is which."""
    keys = sorted({k for ex in examples for k in ex})
    stacked = []
    state: StateDict = {}
    for key in keys:
        values = [ex.get(key) for ex in examples]
        first = values[0]
        if all(
            v is not None
            and first is not None
            and v.shape == first.shape
            and v.dtype == first.dtype
            for v in values
        ):
            state[f"{prefix}.{key}"] = torch.stack([v for v in values if v is not None])
            stacked.append(key)
        else:
            for i, v in enumerate(values):
                if v is not None:
                    state[f"{prefix}.{i}.{key}"] = v
    state[f"{prefix}_layout"] = {"size": len(examples), "keys": keys, "stacked": stacked}
    return state


def examples_from_state(state: StateDict, prefix: str) -> list[Example]:
    """The examples :func:`examples_state` stored under ``prefix``."""
    layout = state.get(f"{prefix}_layout")
    if not isinstance(layout, dict):
        raise RetainError(f"strategy state has no {prefix!r} examples; load a state it saved")
    stacked = set(layout["stacked"])
    examples: list[Example] = []
    for i in range(int(layout["size"])):
        example: Example = {}
        for key in layout["keys"]:
            if key in stacked:
                example[key] = state[f"{prefix}.{key}"][i]
            elif f"{prefix}.{i}.{key}" in state:
                example[key] = state[f"{prefix}.{i}.{key}"]
        examples.append(example)
    return examples


def draw(pool: Sequence[Example], k: int, generator: torch.Generator) -> list[Example]:
    """``k`` examples of ``pool``: uniformly without replacement when ``k <= len(pool)``, else
    uniformly with replacement."""
    if k <= len(pool):
        index = torch.randperm(len(pool), generator=generator)[:k]
    else:
        index = torch.randint(len(pool), (k,), generator=generator)
    return [pool[i] for i in index.tolist()]


class MixedExamples(Sequence[Example]):
    """The task's examples followed by replayed ones, without copying the task's examples."""

    def __init__(self, head: Sequence[Example], tail: Sequence[Example]) -> None:
        self.head = head
        self.tail = list(tail)

    def __len__(self) -> int:
        return len(self.head) + len(self.tail)

    @overload
    def __getitem__(self, index: int) -> Example: ...

    @overload
    def __getitem__(self, index: slice) -> list[Example]: ...

    def __getitem__(self, index: int | slice) -> Example | list[Example]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        i = int(index)
        n, total = len(self.head), len(self)
        if i < 0:
            i += total
        if not 0 <= i < total:
            raise IndexError(f"index {index} out of range for {total} examples")
        return self.head[i] if i < n else self.tail[i - n]

    def __iter__(self) -> Iterator[Example]:
        for i in range(len(self)):
            yield self[i]


def mix(task: Task, pool: Sequence[Example], ratio: float, seed: int, owner: str) -> Task:
    """``task`` over its ``n`` examples followed by ``k = round(n · ratio / (1 − ratio))`` drawn
    from ``pool`` (see :func:`draw`, seeded by ``seed``); ``task`` itself when ``ratio`` is 0, the
    pool is empty or ``k`` is 0.

    Every pool example must have the task's keys; the task's ``collate`` must batch both kinds
    (shapes may differ: :func:`retain.data.task.pad_collate` pads token sequences).
    """
    if ratio <= 0 or not pool:
        return task
    k = replay_count(len(task.examples), ratio)
    if k == 0:
        return task
    own = task.examples[0]
    want = sorted(own)
    for example in pool:
        if sorted(example) != want:
            raise RetainError(
                f"{owner}: task {task.name!r} examples have keys {want} but replayed examples have "
                f"{sorted(example)}; replay only between tasks whose examples share their keys"
            )
    replayed = draw(pool, k, torch.Generator().manual_seed(seed))
    try:
        task.collate([own, replayed[0]])
    except RetainError:
        raise
    except (RuntimeError, ValueError, TypeError, KeyError, IndexError) as exc:
        raise RetainError(
            f"{owner}: task {task.name!r}'s collate cannot batch its examples with replayed ones "
            f"({type(exc).__name__}: {exc}); give the task a collate that pads (pad_collate)"
        ) from exc
    return task.with_examples(MixedExamples(task.examples, replayed))
