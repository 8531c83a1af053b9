"""The ``training`` section of a config, turned into what a run trains with.

:func:`run_device` picks the device, :func:`check_training` refuses settings that would fail at
the first step (before anything is written), and :func:`train_config` builds the
:class:`~retain.training.loop.TrainConfig` of one seed.
"""

from __future__ import annotations

from dataclasses import fields

import torch

from retain.distributed import rank_and_world, resolve_device
from retain.errors import RetainError
from retain.experiment.config import ExperimentConfig
from retain.training.loop import TrainConfig

__all__ = ["check_training", "run_device", "train_config"]


def run_device(config: ExperimentConfig) -> torch.device:
    """The device a run trains on: ``training.device`` (:func:`~retain.distributed.resolve_device`;
    ``auto``: this process's CUDA device when there is one, else the CPU)."""
    return resolve_device(config.training.device, "training.device")


def check_training(config: ExperimentConfig) -> torch.device:
    """Refuse training settings that would fail at the first step, before anything is written
    (a missing device, ``fp16`` off CUDA, more micro-batches than examples in a step); returns
    the device (:func:`run_device`)."""
    device = run_device(config)
    t = config.training
    if t.precision == "fp16" and device.type != "cuda":
        raise RetainError(
            f"training.precision=fp16 needs a CUDA device (this run trains on {device}); use "
            "bf16 or fp32"
        )
    processes = rank_and_world()[1]
    parts = processes * t.grad_accum
    if t.batch_size < parts:
        raise RetainError(
            f"training.batch_size={t.batch_size} is smaller than {processes} process(es) x "
            f"training.grad_accum={t.grad_accum}; raise batch_size to at least {parts} or lower "
            "grad_accum"
        )
    return device


def train_config(config: ExperimentConfig, seed: int) -> TrainConfig:
    """The :class:`TrainConfig` of one seed: every setting the two share, by name (the
    section's defaults are TrainConfig's own), with ``epochs`` resolved."""
    t = config.training
    shared = {f.name: getattr(t, f.name) for f in fields(TrainConfig) if f.name in t.model_fields}
    # max_steps alone runs as many epochs as it takes (each epoch has at least one step)
    shared["epochs"] = t.epochs if t.epochs is not None else (t.max_steps or 1)
    return TrainConfig(**shared, seed=seed)
