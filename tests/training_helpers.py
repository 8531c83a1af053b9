"""Shared training helpers for tests: a tiny classifier, random tasks, the Trainer recipe."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import BertForSequenceClassification, Trainer, TrainingArguments

from retain.data.task import Task
from retain.strategies.chain import Chain
from retain.training.hf import RetainCallback
from retain.training.loop import TrainConfig, make_optimizer
from tiny_models import tiny_bert_config


def tiny_classifier(seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = tiny_bert_config(
        100, num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    )
    return BertForSequenceClassification(config)


def random_task(name: str, n: int = 24, seed: int = 1) -> Task:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 100, (n, 10), generator=g)
    labels = torch.randint(0, 3, (n,), generator=g)
    examples = [
        {
            "input_ids": ids[i],
            "attention_mask": torch.ones(10, dtype=torch.long),
            "labels": labels[i],
        }
        for i in range(n)
    ]
    return Task(name, examples)


def trainer_settings(tmp_path: Path, config: TrainConfig) -> dict[str, Any]:
    """Trainer settings equal to ``config`` (sequential order, no clipping, constant lr)."""
    return {
        "output_dir": str(tmp_path),
        "per_device_train_batch_size": config.batch_size,
        "num_train_epochs": config.epochs,
        "learning_rate": config.lr,
        "lr_scheduler_type": "constant",
        "max_grad_norm": 0.0,
        "train_sampling_strategy": "sequential",
        "report_to": [],
        "save_strategy": "no",
        "logging_strategy": "no",
        "use_cpu": True,
        "disable_tqdm": True,
    }


def trainer_args(tmp_path: Path, config: TrainConfig) -> TrainingArguments:
    """:func:`trainer_settings` as ``TrainingArguments``."""
    return TrainingArguments(**trainer_settings(tmp_path, config))


def train_with_trainer(
    model: nn.Module, task: Task, strategies: Chain, config: TrainConfig, tmp_path: Path
) -> None:
    """The documented recipe: begin_task, make_optimizer, RetainCallback."""
    data = strategies.begin_task(model, task)
    optimizer = make_optimizer(model, strategies, config)
    steps = -(-len(data.examples) // config.batch_size) * config.epochs
    scheduler = strategies.lr_scheduler(optimizer, steps)
    trainer = Trainer(
        model=model,
        args=trainer_args(tmp_path, config),
        train_dataset=data.examples,  # type: ignore[arg-type]
        data_collator=data.collate,
        optimizers=(optimizer, scheduler),
        callbacks=[RetainCallback(strategies, task)],
    )
    trainer.train()
