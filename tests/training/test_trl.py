"""RetainCallback in TRL's SFTTrainer: the plain loop's weights; hooks and the monitor run."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from datasets import Dataset
from transformers import LlamaForCausalLM

from retain.data.text import causal_lm_task
from retain.evaluation.perplexity import Perplexity
from retain.evaluation.suite import EvalSuite
from retain.strategies.chain import chain
from retain.strategies.ewc import EWC
from retain.training.hf import RetainCallback
from retain.training.loop import TrainConfig, make_optimizer, train_task
from retain.training.monitor import ForgettingMonitor, MonitorConfig
from tiny_models import bert_tokenizer, tiny_llama_config
from training_helpers import trainer_settings

trl = pytest.importorskip("trl")

TEXTS = [
    "the harbor bridge opened to traffic in the spring",
    "a market by the tower sells bread and cheese",
    "the coach said the team played a strong season",
    "fresh soup and salad were served after the match",
] * 3


def sft(
    model: Any,
    tok: Any,
    task: Any,
    strategies: Any,
    config: TrainConfig,
    out: Path,
    monitor: ForgettingMonitor | None = None,
) -> Any:
    data = strategies.begin_task(model, task)
    optimizer = make_optimizer(model, strategies, config)
    rows = {"input_ids": [ex["input_ids"].tolist() for ex in data.examples]}
    settings = trainer_settings(out, config)
    args = trl.SFTConfig(**{**settings, "logging_strategy": "steps", "logging_steps": 1})
    trainer = trl.SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_dict(rows),
        processing_class=tok,
        optimizers=(optimizer, None),
        callbacks=[RetainCallback(strategies, task, monitor)],
    )
    trainer.train()
    return trainer


def test_sft_trainer_matches_the_plain_loop_and_runs_the_hooks(tmp_path: Path) -> None:
    tok = bert_tokenizer()
    torch.manual_seed(0)
    start = LlamaForCausalLM(tiny_llama_config(tok.vocab_size))
    task = causal_lm_task("news", tok, TEXTS, block_size=8)
    config = TrainConfig(lr=0.1, batch_size=4, epochs=1, shuffle=False, optimizer="sgd")

    plain = copy.deepcopy(start)
    train_task(plain, task, chain(EWC(strength=10.0, fisher_samples=8)), config)

    ewc = EWC(strength=10.0, fisher_samples=8)
    model = copy.deepcopy(start)
    sft(model, tok, task, chain(ewc), config, tmp_path)
    # SFTTrainer computes its own loss (a fused LM head and its own token normalisation), so it
    # agrees with the plain loop only to ~1e-4 here, where the Trainer proper agrees exactly.
    for (name, a), b in zip(plain.named_parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-3, msg=name)
    assert len(ewc.terms) == 1  # on_task_end ran through the callback, at the final weights
    for name, param in model.named_parameters():
        assert torch.equal(ewc.terms[0].anchor[name], param.detach())


def test_sft_trainer_stops_when_the_monitor_says_so(tmp_path: Path) -> None:
    tok = bert_tokenizer()
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(tok.vocab_size))
    task = causal_lm_task("new", tok, ["zebra quartz " * 3] * 8, block_size=8)
    steps = 3 * len(task.examples) // 2
    suite = EvalSuite("held", [Perplexity("held", TEXTS[:4], max_length=16)])
    # Perplexity on unrelated text rises within a few steps of lr 0.05 on one repeated phrase.
    monitor = ForgettingMonitor(suite, MonitorConfig(max_degradation=0.05, eval_every=1), tok)
    config = TrainConfig(lr=0.05, batch_size=2, epochs=3, shuffle=False)
    trainer = sft(model, tok, task, chain(), config, tmp_path, monitor)
    history = monitor.history
    assert trainer.state.global_step < steps  # stopped before the 3 epochs ended
    assert trainer.state.global_step == history[-1]["step"]
    assert not history[-1]["within_budget"]
    logged = [h for h in trainer.state.log_history if "monitor/worst_degradation" in h]
    assert logged  # the monitor's figures reached the Trainer's logs
