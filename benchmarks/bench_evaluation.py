"""Evaluation speed, measured side by side in one run (ratios, not absolute times).

Run: ``HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_evaluation.py`` (about 3 minutes on 2
cores). Compares, on the real SmolLM2-135M and MiniLM:

1. batched strided perplexity (retain) against a plain per-text ``model(labels=...)`` loop;
2. the zero-shot single-token fast path (one forward per prompt) against one forward per
   (prompt, label word);
3. a kNN + a linear probe on the same split with and without the shared embedding cache.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch

from retain.assets.datasets import load_dataset
from retain.assets.models import load_model
from retain.evaluation import representation
from retain.evaluation.perplexity import strided_log_likelihood
from retain.evaluation.representation import KNNProbe, LinearProbe
from retain.evaluation.suites import subset
from retain.evaluation.zero_shot import candidate_log_likelihoods, encode_candidates


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def naive_perplexity(model: torch.nn.Module, tokenizer: Any, texts: list[str]) -> float:
    """The usual hand-written loop: one text at a time, HF loss times token count."""
    nll, count = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = [tokenizer.bos_token_id, *tokenizer(text, add_special_tokens=False).input_ids]
            ids_t = torch.tensor([ids[:512]])
            loss = model(input_ids=ids_t, labels=ids_t).loss
            nll += float(loss) * (ids_t.shape[1] - 1)
            count += ids_t.shape[1] - 1
    return math.exp(nll / count)


def bench_causal_lm() -> None:
    """Perplexity and zero-shot on SmolLM2-135M."""
    lm = load_model("smollm2-135m")
    texts = list(subset(load_dataset("general_text")["test"], 24)["text"])
    t_naive, ppl_naive = timed(lambda: naive_perplexity(lm.model, lm.tokenizer, texts))
    t_ours, ll = timed(lambda: strided_log_likelihood(lm.model, lm.tokenizer, texts, batch_size=4))
    print(
        f"perplexity, {ll.n_tokens} tokens: retain {t_ours:.1f} s (ppl {ll.perplexity:.3f}), "
        f"per-text loop {t_naive:.1f} s (ppl {ppl_naive:.3f}); speed ratio "
        f"{t_naive / t_ours:.2f}x"
    )

    movies = subset(load_dataset("movie_snippets")["test"], 100)
    words = [" negative", " positive"]
    enc = [
        encode_candidates(lm.tokenizer, f"Review: {t}\nSentiment:", words) for t in movies["text"]
    ]
    prompts, cands = [e[0] for e in enc], [e[1] for e in enc]
    t_fast, fast = timed(lambda: candidate_log_likelihoods(lm.model, prompts, cands))
    t_slow, slow = timed(
        lambda: candidate_log_likelihoods(lm.model, prompts, cands, fast_path=False)
    )
    diff = float(abs(fast - slow).max())
    print(
        f"zero-shot, {len(prompts)} prompts x 2 words: fast path {t_fast:.1f} s, general path "
        f"{t_slow:.1f} s; speed ratio {t_slow / t_fast:.2f}x (max |diff| {diff:.1e} nats)"
    )


def bench_encoder() -> None:
    """kNN + linear probes on MiniLM, with and without the shared embedding cache."""
    enc_model = load_model("minilm-l6", kind="encoder")
    data = load_dataset("news_sources")
    train, test = subset(data["train"], 600), subset(data["test"], 300)
    args = (train["text"], train["label"], test["text"], test["label"])
    probes = [KNNProbe("knn", *args), LinearProbe("linear", *args)]

    def run_both(clear_between: bool) -> None:
        representation._EMBEDDINGS.clear()
        for probe in probes:
            if clear_between:
                representation._EMBEDDINGS.clear()
            probe.evaluate(enc_model.model, enc_model.tokenizer)

    t_nocache, _ = timed(lambda: run_both(True))
    t_cache, _ = timed(lambda: run_both(False))
    print(
        f"kNN + linear probe on news_sources (600 fit / 300 scored): shared embeddings "
        f"{t_cache:.1f} s, embedded twice {t_nocache:.1f} s; speed ratio "
        f"{t_nocache / t_cache:.2f}x"
    )


def main() -> None:
    torch.manual_seed(0)
    bench_causal_lm()
    bench_encoder()


if __name__ == "__main__":
    main()
