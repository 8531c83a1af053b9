"""Settings that are valid but most likely a mistake, said before any work starts.

``retain validate`` prints each as ``warning: ...``; ``retain run`` and ``retain sweep`` print
them before training. They never stop a run: a warned setting may still be what was meant.

* ``l2sp`` anchored at the ``pretrained`` weights of a model built from scratch (``kind: mlp``):
  the anchor is a random initialisation, so the penalty pulls every task back toward noise and
  the run forgets more than naive fine-tuning (the shipped permuted-MNIST sweep did: BWT -0.59
  against naive's -0.09). ``anchor: task_start`` (the weights each task starts from) is what
  L2 regularisation means on a model without pretraining.
"""

from __future__ import annotations

from typing import Any

from retain.experiment.config import ExperimentConfig

__all__ = ["config_warnings"]

#: Model kinds whose weights start from a random initialisation, not from pretraining.
FROM_SCRATCH = ("mlp",)


def config_warnings(config: ExperimentConfig) -> list[str]:
    """One line per likely mistake in ``config`` (see the module docstring); empty when none."""
    from retain.strategies.base import STRATEGIES

    lists: dict[str, list[dict[str, Any]]] = {"strategies": config.strategies}
    lists.update({f"sweep.variants.{n}": e for n, e in config.sweep.variants.items()})
    lines = []
    for label, entries in lists.items():
        for k, entry in enumerate(entries):
            name = entry["name"]
            canonical = STRATEGIES.entry(name).name if name in STRATEGIES else name
            if canonical != "l2sp" or entry.get("anchor", "pretrained") != "pretrained":
                continue
            if config.model.kind in FROM_SCRATCH:
                lines.append(
                    f"{label}.{k}: l2sp anchors at the pretrained weights, but model "
                    f"{config.model.name!r} (kind {config.model.kind}) is built from scratch, so "
                    "the anchor is a random initialisation that pulls every task toward noise; "
                    "use anchor: task_start"
                )
    return lines
