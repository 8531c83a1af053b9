"""The named suites on the real offline models, pinned to measured values (slow)."""

from __future__ import annotations

import pytest

from retain.assets.models import load_model
from retain.evaluation.suites import SUITES

pytestmark = pytest.mark.slow


def test_general_suite_on_smollm2_is_pinned() -> None:
    lm = load_model("smollm2-135m")
    suite = SUITES.get("general").build("quick")
    result = suite.evaluate(lm.model, lm.tokenizer)
    ppl = result.scores["general_text"]
    assert ppl.higher_is_better is False
    assert ppl.score == pytest.approx(PINNED["general_text"], rel=0.01)
    assert ppl.details["bits_per_byte"] == pytest.approx(PINNED["bits_per_byte"], rel=0.01)
    sentiment = result.scores["sentiment_zero_shot"]
    assert sentiment.score == pytest.approx(PINNED["sentiment_zero_shot"], abs=0.051)
    assert sentiment.details["calibrated"] is True
    for name in ("wikipedia_text", "news_text", "tweets_text"):
        assert result.scores[name].metric == "perplexity"
        assert result.scores[name].score == pytest.approx(PINNED[name], rel=0.01), name
    few = result.scores["critics_few_shot"]
    assert few.score == pytest.approx(PINNED["critics_few_shot"], abs=0.051)
    assert few.details["k"] == 4
    continuation = result.scores["continuation"]  # SmolLM2's own greedy text, under itself
    assert continuation.score == pytest.approx(PINNED["continuation"], rel=0.02)
    assert 0 < continuation.details["distinct_2"] <= 1


def test_encoder_suite_on_minilm_is_pinned() -> None:
    enc = load_model("minilm-l6", kind="encoder")
    suite = SUITES.get("encoder").build("quick")
    result = suite.evaluate(enc.model, enc.tokenizer)
    names = ["news_sources_knn", "news_sources_linear", "trec_knn", "trec_linear"]
    for name in [*names, "rotten_tomatoes_knn", "rotten_tomatoes_linear"]:
        assert result.scores[name].score == pytest.approx(PINNED[name], abs=0.021), name
    # The representation must carry the held-out capability far above chance (1/9, 1/6).
    assert result.scores["news_sources_knn"].score > 0.3
    assert result.scores["trec_linear"].score > 0.5


# Measured on 2026-11-30 (torch 2.13.0 CPU, transformers 5.24) with size="quick".
PINNED = {
    "general_text": 15.4303,
    "bits_per_byte": 0.85986,
    "sentiment_zero_shot": 0.75,
    "news_sources_knn": 0.5,
    "news_sources_linear": 0.5417,
    "trec_knn": 0.65,
    "trec_linear": 0.77,
    # Added 2026-12-07 (same setup): per-corpus perplexity, few-shot and encoder sentiment.
    "wikipedia_text": 32.69626,
    "news_text": 32.93037,
    "tweets_text": 650.01631,
    "critics_few_shot": 0.66667,
    "continuation": 3.06923,
    "rotten_tomatoes_knn": 0.66,
    "rotten_tomatoes_linear": 0.77,
}
