"""The forgetting monitor on a causal LM: a perplexity budget stops training and restores weights.

A tiny random Llama first learns "general" text (sentences over one word list), then is trained at
a high learning rate on a "domain" (sentences over a disjoint word list), which raises its
perplexity on held-out general sentences. The monitor watches that perplexity with a small budget.
Perplexity is re-computed independently from the model's own loss (Hugging Face's ``labels=``
path), not through the probe.
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from retain.data.text import causal_lm_task
from retain.evaluation.perplexity import Perplexity
from retain.evaluation.suite import EvalSuite
from retain.training.loop import TrainConfig, train_task
from retain.training.monitor import ForgettingMonitor, MonitorConfig
from tiny_models import tiny_llama_config

BUDGET = 0.10
_GENERAL = "the cat sat on a mat while his dog ran to our park near old trees"
_DOMAIN = "call free prize now text win cash reply stop claim urgent mobile"
GENERAL_WORDS = _GENERAL.split()
DOMAIN_WORDS = _DOMAIN.split()
MAX_STEPS = 30
DOMAIN = TrainConfig(lr=3e-3, batch_size=8, max_steps=MAX_STEPS, seed=0)


def _word_tokenizer() -> PreTrainedTokenizerFast:
    """A real (Rust) word-level tokenizer over both word lists: a 32-token vocabulary keeps the
    model's output layer, hence every step, tiny."""
    specials = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]
    vocab = {w: i for i, w in enumerate(specials + GENERAL_WORDS + DOMAIN_WORDS)}
    core = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = Whitespace()
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=core,
        pad_token="[PAD]",
        unk_token="[UNK]",
        bos_token="[BOS]",
        eos_token="[EOS]",
    )


def _sentences(words: list[str], n: int, seed: int) -> list[str]:
    """``n`` 12-word sentences of a bigram language: word ``i`` is followed by word ``i + 1`` or
    ``i + 3`` (mod the list), so a model that learned it has a perplexity near 2."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        i = rng.randrange(len(words))
        sentence = []
        for _ in range(12):
            sentence.append(words[i])
            i = (i + rng.choice((1, 3))) % len(words)
        out.append(" ".join(sentence))
    return out


def _reference_perplexity(model: torch.nn.Module, tokenizer: Any, texts: list[str]) -> float:
    """``exp(sum NLL / tokens)`` from the model's own loss, each text after the bos token.

    HF's loss is the mean over the ``len - 1`` predicted tokens, so ``loss * (len - 1)`` is the sum.
    """
    nll, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for text in texts:
            ids = [tokenizer.bos_token_id, *tokenizer(text, add_special_tokens=False)["input_ids"]]
            x = torch.tensor([ids])
            nll += float(model(input_ids=x, labels=x).loss) * (len(ids) - 1)
            count += len(ids) - 1
    return math.exp(nll / count)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread: this model is too small to gain from more, and on a busy machine two
    spinning threads make each step about ten times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def setup(one_thread: None) -> dict[str, Any]:
    """A tiny Llama that has learned the general text, the domain task and held-out texts."""
    tok = _word_tokenizer()
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(len(tok)))
    general = causal_lm_task("general", tok, _sentences(GENERAL_WORDS, 96, seed=1), block_size=16)
    train_task(model, general, None, TrainConfig(lr=1e-2, batch_size=8, epochs=3, seed=0))
    domain = causal_lm_task("domain", tok, _sentences(DOMAIN_WORDS, 96, seed=2), block_size=16)
    held = _sentences(GENERAL_WORDS, 8, seed=3)
    return {"tok": tok, "model": model, "domain": domain, "held": held}


def _monitor(setup: dict[str, Any]) -> ForgettingMonitor:
    suite = EvalSuite("general", [Perplexity("general", setup["held"], max_length=64)])
    return ForgettingMonitor(
        suite, MonitorConfig(max_degradation=BUDGET, eval_every=1), tokenizer=setup["tok"]
    )


def test_perplexity_budget_stops_and_restores_within_budget(setup: dict[str, Any]) -> None:
    tok, held = setup["tok"], setup["held"]
    before = _reference_perplexity(setup["model"], tok, held)
    assert before < 4  # it learned the general text (a random model is near the vocabulary, 32)

    model = copy.deepcopy(setup["model"])
    log = train_task(model, setup["domain"], None, DOMAIN, monitor=_monitor(setup))
    result = log.monitor
    assert result is not None
    assert log.stopped
    assert 2 <= log.steps < MAX_STEPS  # it trained within budget for a while, then stopped
    history = result.history
    # patience 1: every evaluation before the last was within budget, the last was not
    assert all(h.within_budget for h in history[:-1])
    assert history[-1].worst_degradation > BUDGET
    assert history[-1].step == log.steps
    # the restored weights are the latest within budget (no task score), re-measured independently
    assert result.restored
    assert result.best_step == log.steps - 1
    after = _reference_perplexity(model, tok, held)
    assert (after - before) / before <= BUDGET
    assert after == pytest.approx(history[-2].scores["general"], rel=1e-4)

    # monitoring changed no step: an unmonitored run takes the same losses up to the stop, and
    # one stopped at the restored step ends with exactly the restored weights
    naive = copy.deepcopy(setup["model"])
    naive_log = train_task(naive, setup["domain"], None, replace(DOMAIN, max_steps=log.steps))
    assert naive_log.losses == log.losses
    naive = copy.deepcopy(setup["model"])
    train_task(naive, setup["domain"], None, replace(DOMAIN, max_steps=result.best_step))
    for (name, a), b in zip(naive.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
