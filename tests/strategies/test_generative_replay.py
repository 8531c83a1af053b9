"""Generative replay on a tiny random Llama: seeded sampling that leaves the model and RNG alone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import BertModel, LlamaForCausalLM

from retain.data.task import CausalLM, Task, batch_loss, pad_collate
from retain.errors import RetainError
from retain.strategies.generative_replay import GenerativeReplay
from retain.strategies.state import load_strategy_state, save_strategy_state
from tiny_models import tiny_bert_config, tiny_llama_config

BOS, EOS = 1, 2


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = tiny_llama_config(100, bos_token_id=BOS, eos_token_id=EOS)
    return LlamaForCausalLM(config)


def lm_task(name: str = "lm", n: int = 8, length: int = 6, labels: bool = True) -> Task:
    ids = torch.randint(3, 100, (n, length), generator=torch.Generator().manual_seed(n))
    examples = [{"input_ids": row, **({"labels": row.clone()} if labels else {})} for row in ids]
    return Task(name, examples, CausalLM(), pad_collate(0))


def tokens(strategy: GenerativeReplay) -> list[list[int]]:
    return [s["input_ids"].tolist() for s in strategy.samples]


def test_samples_are_generated_once_deterministically_from_the_prompt() -> None:
    model = tiny_llama().train()
    model.model.layers[0].train(False)  # a submodule in another mode keeps its own mode
    rng = torch.get_rng_state()
    strategy = GenerativeReplay(num_samples=5, max_new_tokens=8, batch_size=2, seed=3)
    strategy.on_task_start(model, lm_task())
    assert torch.equal(torch.get_rng_state(), rng)  # the global RNG is untouched
    assert model.training
    assert model.model.layers[1].training
    assert not model.model.layers[0].training
    assert len(strategy.samples) == 5
    assert strategy.generations == 1
    for sample in tokens(strategy):
        assert sample[0] == BOS
        assert 2 <= len(sample) <= 1 + 8
        assert EOS not in sample[1:-1]  # cut right after the first eos: no padding kept
    again = GenerativeReplay(num_samples=5, max_new_tokens=8, batch_size=2, seed=3)
    again.on_task_start(tiny_llama().train(False), lm_task())
    assert tokens(again) == tokens(strategy)
    other = GenerativeReplay(num_samples=5, max_new_tokens=8, batch_size=2, seed=4)
    other.on_task_start(tiny_llama(), lm_task())
    assert tokens(other) != tokens(strategy)
    strategy.on_task_start(model, lm_task())  # no refresh: kept
    assert strategy.generations == 1


def test_samples_end_at_the_first_end_of_sequence_token() -> None:
    torch.manual_seed(0)
    stops = list(range(2, 22))  # a fifth of the tokens end a sequence: rows end at varied steps
    model = LlamaForCausalLM(tiny_llama_config(100, bos_token_id=BOS, eos_token_id=stops))
    strategy = GenerativeReplay(num_samples=8, max_new_tokens=10, batch_size=8)
    strategy.on_task_start(model, lm_task())
    lengths = []
    for sample in tokens(strategy):
        ended = [i for i, t in enumerate(sample[1:], start=1) if t in stops]
        assert ended == [len(sample) - 1] or (not ended and len(sample) == 11), sample
        lengths.append(len(sample))
    assert len(set(lengths)) > 1  # padding after the end token was dropped


def test_refresh_regenerates_from_the_current_model() -> None:
    model = tiny_llama()
    strategy = GenerativeReplay(num_samples=4, max_new_tokens=6, refresh=True, prompt_ids=[5, 6])
    strategy.on_task_start(model, lm_task())
    first = tokens(strategy)
    assert all(s[:2] == [5, 6] for s in first)
    strategy.on_task_start(model, lm_task())  # the same task again (a resume): samples kept
    assert strategy.generations == 1
    strategy.on_task_end(model, lm_task())
    strategy.on_task_start(model, lm_task())
    assert strategy.generations == 2
    assert tokens(strategy) != first


def test_train_data_mixes_samples_shaped_like_the_task() -> None:
    model = tiny_llama()
    strategy = GenerativeReplay(ratio=0.5, num_samples=6, max_new_tokens=5)
    task = lm_task(n=8)
    strategy.on_task_start(model, task)
    data = strategy.train_data(task, model)
    assert len(data.examples) == 8 + 8
    generated = {tuple(s) for s in tokens(strategy)}
    for example in list(data.examples)[8:]:
        assert tuple(example["input_ids"].tolist()) in generated
        assert torch.equal(example["labels"], example["input_ids"])
    loss = batch_loss(data.objective, model, data.collate(list(data.examples)))
    assert torch.isfinite(loss)
    bare = strategy.train_data(lm_task(n=4, labels=False), model)  # no labels key: none added
    assert sorted(bare.examples[-1]) == ["input_ids"]
    odd = Task("odd", [{"input_ids": torch.arange(3), "pixel_values": torch.zeros(2)}])
    with pytest.raises(RetainError, match="keys"):
        strategy.train_data(odd, model)


def test_ratio_zero_generates_nothing_and_returns_the_task() -> None:
    strategy = GenerativeReplay(ratio=0.0, num_samples=4)
    task = lm_task()
    strategy.on_task_start(nn.Linear(2, 2), task)  # not even a generative model is needed
    assert strategy.samples == []
    assert strategy.train_data(task, nn.Linear(2, 2)) is task


def test_models_that_cannot_generate_are_refused() -> None:
    with pytest.raises(RetainError, match="causal LM"):
        GenerativeReplay(num_samples=2).on_task_start(nn.Linear(2, 2), lm_task())
    with pytest.raises(RetainError, match="causal LM"):
        GenerativeReplay(num_samples=2).on_task_start(BertModel(tiny_bert_config(100)), lm_task())
    torch.manual_seed(0)
    no_bos = LlamaForCausalLM(tiny_llama_config(100, bos_token_id=None, eos_token_id=EOS))
    with pytest.raises(RetainError, match="prompt_ids"):
        GenerativeReplay(num_samples=2).on_task_start(no_bos, lm_task())


def test_state_round_trip_keeps_samples_and_continues_the_same_mix(tmp_path: Path) -> None:
    model = tiny_llama()
    first = GenerativeReplay(num_samples=5, max_new_tokens=7, seed=1)
    first.on_task_start(model, lm_task())
    path = save_strategy_state(first, tmp_path / "g.safetensors")
    second = GenerativeReplay(num_samples=5, max_new_tokens=7, seed=1)
    load_strategy_state(second, path)
    assert tokens(second) == tokens(first)
    for strategy in (first, second):
        # no regeneration after loading: a model without generate() is never asked
        strategy.on_task_start(nn.Linear(2, 2), lm_task())
    task = lm_task(n=10)
    a, b = (s.train_data(task, model).examples for s in (first, second))
    assert [e["input_ids"].tolist() for e in a] == [e["input_ids"].tolist() for e in b]


def test_bad_parameters_are_refused() -> None:
    bad: list[dict[str, object]] = [
        {"ratio": 1.0},
        {"ratio": -0.1},
        {"num_samples": 0},
        {"max_new_tokens": 0},
        {"temperature": 0.0},
        {"top_k": 0},
        {"prompt_ids": []},
        {"prompt_ids": [-1]},
        {"batch_size": 0},
    ]
    for params in bad:
        with pytest.raises(RetainError):
            GenerativeReplay(**params)  # type: ignore[arg-type]
