"""Named capability suites (``general`` for causal LMs, ``encoder`` for encoders) and probes.

Every suite is built from the offline datasets in :mod:`retain.assets` and evaluates capabilities
the audited fine-tune was (normally) not trained on. ``size="quick"`` uses smaller subsets of the
same data for smoke tests; reported numbers come from ``size="full"``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import datasets

from retain.assets.datasets import load_dataset
from retain.assets.models import ModelKind
from retain.evaluation.accuracy import ClassificationAccuracy
from retain.evaluation.base import Probe
from retain.evaluation.few_shot import FewShotClassification
from retain.evaluation.generation import GenerationQuality
from retain.evaluation.lm_eval_tasks import LmEvalTask
from retain.evaluation.perplexity import Perplexity
from retain.evaluation.pseudo_perplexity import PseudoPerplexity
from retain.evaluation.representation import KNNProbe, LinearProbe
from retain.evaluation.suite import EvalSuite
from retain.evaluation.zero_shot import ZeroShotClassification
from retain.registry import Registry

__all__ = ["PROBES", "SUITES", "SuiteFactory", "SuiteSize", "subset"]

SuiteSize = Literal["full", "quick"]

PROBES: Registry[type] = Registry("probe")
PROBES.register(
    "perplexity", Perplexity, "causal-LM token perplexity and bits/byte on held-out text (strided)"
)
PROBES.register(
    "pseudo_perplexity", PseudoPerplexity, "masked-LM pseudo-perplexity, each token masked in turn"
)
PROBES.register("accuracy", ClassificationAccuracy, "classification accuracy through a task head")
PROBES.register("knn", KNNProbe, "kNN accuracy on frozen pooled representations (scikit-learn)")
PROBES.register(
    "linear", LinearProbe, "logistic-regression probe accuracy on frozen pooled representations"
)
PROBES.register(
    "few_shot",
    FewShotClassification,
    "few-shot in-context classification of a causal LM: k seeded class-balanced demonstrations",
)
PROBES.register(
    "generation",
    GenerationQuality,
    "greedy continuations: repetition, length and fluency (perplexity under the first model)",
)
PROBES.register(
    "lm_eval",
    LmEvalTask,
    "an lm-evaluation-harness task run on the loaded model, its main metric (retain[lm-eval])",
)
PROBES.register(
    "zero_shot",
    ZeroShotClassification,
    "zero-shot classification of a causal LM by label-word log-likelihood",
)


@dataclass(frozen=True)
class SuiteFactory:
    """Builds a named suite; ``model_kind`` says how audited models must be loaded."""

    name: str
    description: str
    model_kind: ModelKind
    build_fn: Callable[[SuiteSize], EvalSuite]

    def build(self, size: SuiteSize = "full") -> EvalSuite:
        """The suite with its data loaded (``quick``: small subsets for smoke tests)."""
        return self.build_fn(size)


def subset(split: datasets.Dataset, n: int, seed: int = 0) -> datasets.Dataset:
    """A fixed, seeded sample of ``n`` rows (all rows if the split is smaller)."""
    if n >= len(split):
        return split
    return split.shuffle(seed=seed).select(range(n))


# ChatML, the format of instruction-tuned small LMs (SmolLM2, Qwen); base models read it as text.
_SENTIMENT_PROMPT = (
    "<|im_start|>user\nIs the sentiment of this movie review positive or negative?\n\n"
    "{text}<|im_end|>\n<|im_start|>assistant\nThe sentiment is"
)


def _general(size: SuiteSize) -> EvalSuite:
    quick = size == "quick"
    general = subset(load_dataset("general_text")["test"], 8 if quick else 64)
    movies = subset(load_dataset("movie_snippets")["test"], 40 if quick else 400)
    names = movies.features["label"].names
    probes: list[Probe] = [
        Perplexity("general_text", general["text"], max_length=512),
        *_corpora(quick),
        ZeroShotClassification(
            "sentiment_zero_shot",
            movies["text"],
            movies["label"],
            label_words=[f" {n}" for n in names],
            template=_SENTIMENT_PROMPT,
            label_names=names,
            calibrate=True,
        ),
        _critic_few_shot(quick),
        _continuations(quick),
    ]
    return EvalSuite("general", probes, _SUITE_TEXT["general"])


def _continuations(quick: bool) -> Probe:
    """Greedy continuations of the first 16 words of held-out passages, scored for repetition
    and for fluency under the first model evaluated (the base, in an audit)."""
    rows = subset(load_dataset("general_text")["test"], 4 if quick else 32, seed=3)
    prompts = [" ".join(text.split()[:16]) for text in rows["text"]]
    return GenerationQuality("continuation", prompts, max_new_tokens=16 if quick else 48)


def _critic_few_shot(quick: bool) -> Probe:
    """4-shot in-context classification of critic snippets (``rotten_tomatoes``, a dataset no
    other probe of the suite reads): rotten or fresh, as negative or positive."""
    data = load_dataset("rotten_tomatoes")
    train = subset(data["train"], 200, seed=2)
    test = subset(data["test"], 24 if quick else 300, seed=2)
    return FewShotClassification(
        "critics_few_shot",
        train["text"],
        train["label"],
        test["text"],
        test["label"],
        [" negative", " positive"],
        k=4,
        template="Review: {text}\nSentiment:",
        label_names=data["train"].features["label"].names,
    )


def _corpora(quick: bool) -> list[Probe]:
    """Perplexity per kind of held-out text: encyclopedic (Wikipedia passages), news (ABC
    news documents) and short social-media text (health-news tweets), each a capability."""
    general = load_dataset("general_text")["test"]
    tweets = subset(load_dataset("health_tweets")["test"], 24 if quick else 300, seed=1)
    probes: list[Probe] = []
    for source, name in (("wikipedia", "wikipedia_text"), ("news", "news_text")):
        rows = general.select([k for k, s in enumerate(general["source"]) if s == source])
        probes.append(Perplexity(name, subset(rows, 4 if quick else 48, seed=1)["text"]))
    probes.append(Perplexity("tweets_text", tweets["text"], max_length=128))
    return probes


def _probe_pair(name: str, size: SuiteSize, n_train: int, n_test: int) -> list[Probe]:
    data = load_dataset(name)
    scale = 5 if size == "quick" else 1
    train = subset(data["train"], n_train // scale)
    test = subset(data["test"], n_test // scale)
    args = (train["text"], train["label"], test["text"], test["label"])
    return [KNNProbe(f"{name}_knn", *args, k=10), LinearProbe(f"{name}_linear", *args)]


def _encoder(size: SuiteSize) -> EvalSuite:
    probes = [
        *_probe_pair("news_sources", size, 1500, 600),
        *_probe_pair("trec", size, 1500, 500),
        *_probe_pair("rotten_tomatoes", size, 1500, 500),
    ]
    return EvalSuite("encoder", probes, _SUITE_TEXT["encoder"])


_SUITE_TEXT = {
    "general": "causal LM: perplexity on held-out news + Wikipedia text (general_text, pooled), "
    "per corpus (wikipedia_text, news_text, tweets_text from health_tweets) and calibrated "
    "zero-shot movie-review sentiment by label-word log-likelihood (movie_snippets), 4-shot "
    "in-context critic sentiment (rotten_tomatoes) and the fluency of greedy continuations",
    "encoder": "encoder: kNN and logistic-regression probes on frozen mean-pooled representations "
    "for news source (news_sources), question type (trec) and critic sentiment "
    "(rotten_tomatoes)",
}

SUITES: Registry[SuiteFactory] = Registry("suite")
SUITES.register(
    "general",
    SuiteFactory("general", _SUITE_TEXT["general"], "causal-lm", _general),
    _SUITE_TEXT["general"],
)
SUITES.register(
    "encoder",
    SuiteFactory("encoder", _SUITE_TEXT["encoder"], "encoder", _encoder),
    _SUITE_TEXT["encoder"],
)
