"""retain's strided perplexity against lm-evaluation-harness on the same texts, and the cost of
the paired bootstrap.

1. The ``general`` suite's 64 held-out passages scored by SmolLM2-135M two ways, interleaved
   ``--repeats`` times: retain's :func:`~retain.evaluation.perplexity.strided_log_likelihood`
   (windows of 512 tokens, batched, right-padded) and lm-eval's ``loglikelihood_rolling`` (a
   local task over the same texts, ``HFLM`` on the same loaded model, ``max_length`` 512). Prints
   the relative difference of the summed log-likelihoods, each side's wall time, the ratio, and
   the share of padding tokens retain feeds.
2. :func:`~retain.paired_statistics.paired_change` on 10,000 paired examples with 1,000
   resamples: wall time (target under 1 s), for correctness (McNemar) and for perplexity
   (permutation test).

Run: ``HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python benchmarks/bench_suites.py``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from retain.assets.datasets import load_dataset
from retain.assets.models import load_model
from retain.evaluation.perplexity import strided_log_likelihood
from retain.evaluation.suites import subset
from retain.paired_statistics import ExampleScores, paired_change

MAX_LENGTH = 512
TASK = """task: bench_general_ppl
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
    aggregation: weighted_perplexity
    higher_is_better: false
"""


def _lm_eval_loglikelihood(model: torch.nn.Module, tokenizer: object, folder: Path) -> float:
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(
        pretrained=model, tokenizer=tokenizer, batch_size=8, max_length=MAX_LENGTH, device="cpu"
    )
    out = lm_eval.simple_evaluate(
        model=lm,
        tasks=["bench_general_ppl"],
        task_manager=TaskManager(include_path=str(folder)),
        log_samples=True,
        bootstrap_iters=0,
    )
    return float(sum(s["word_perplexity"][0] for s in out["samples"]["bench_general_ppl"]))


def _padding_share(tokenizer: object, texts: list[str], batch_size: int = 8) -> float:
    """Padding positions / all positions retain feeds (windows sorted by length, batched)."""
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]  # type: ignore[operator]
    lengths = sorted((min(len(x) + 1, MAX_LENGTH) for x in ids), reverse=True)
    fed = real = 0
    for start in range(0, len(lengths), batch_size):
        chunk = lengths[start : start + batch_size]
        fed += max(chunk) * len(chunk)
        real += sum(chunk)
    return 1 - real / fed


def bench_perplexity(repeats: int) -> None:
    loaded = load_model("smollm2-135m")
    model, tokenizer = loaded.model.eval(), loaded.tokenizer
    texts = list(subset(load_dataset("general_text")["test"], 64)["text"])
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        data = folder / "texts.jsonl"
        data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
        (folder / "task.yaml").write_text(TASK.format(data=data), encoding="utf-8")
        ours, theirs, ll_ours, ll_theirs = [], [], 0.0, 0.0
        for _ in range(repeats):
            start = time.perf_counter()
            ll_ours = -strided_log_likelihood(
                model, tokenizer, texts, max_length=MAX_LENGTH
            ).nll_sum
            ours.append(time.perf_counter() - start)
            start = time.perf_counter()
            ll_theirs = _lm_eval_loglikelihood(model, tokenizer, folder)
            theirs.append(time.perf_counter() - start)
    diff = abs(ll_ours - ll_theirs) / abs(ll_theirs)
    a, b = statistics.median(ours), statistics.median(theirs)
    print(
        f"log-likelihood: retain {ll_ours:.6f}, lm-eval {ll_theirs:.6f}, "
        f"relative difference {diff:.2e}"
    )
    print(
        f"wall time (median of {repeats}): retain {a:.2f} s, lm-eval {b:.2f} s, "
        f"lm-eval / retain {b / a:.2f}x"
    )
    print(f"padding retain feeds: {_padding_share(tokenizer, texts):.1%} of positions")


def bench_bootstrap() -> None:
    rng = np.random.default_rng(0)
    n = 10_000
    right = (rng.random(n) < 0.8).astype(float)
    after = right * (rng.random(n) >= 0.03)
    tokens = rng.integers(20, 200, n).astype(float)
    nll = rng.normal(2.5, 0.4, n) * tokens
    pairs = {
        "accuracy (McNemar)": (ExampleScores(right), ExampleScores(after), True),
        "perplexity (permutation)": (
            ExampleScores(nll, tokens, "perplexity"),
            ExampleScores(nll * 1.01, tokens, "perplexity"),
            False,
        ),
    }
    paired_change(*pairs["accuracy (McNemar)"][:2], higher_is_better=True)  # warm up (imports)
    for label, (b, a, hib) in pairs.items():
        times = []
        for _ in range(5):
            start = time.perf_counter()
            paired_change(b, a, higher_is_better=hib, resamples=1000)
            times.append(time.perf_counter() - start)
        print(f"paired bootstrap, 10,000 examples x 1,000 resamples, {label}: {min(times):.3f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-perplexity", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    bench_bootstrap()
    if not args.skip_perplexity:
        bench_perplexity(args.repeats)


if __name__ == "__main__":
    main()
