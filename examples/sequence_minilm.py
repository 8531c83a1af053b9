"""MiniLM on a real 3-task sequence (TREC -> Rotten Tomatoes -> SMS spam), one head per task.

Naive fine-tuning against the same run under the forgetting monitor, over several seeds:
``fit_sequence`` fills the accuracy matrix R (every task after every task), and the monitor
watches the earlier tasks' held-out accuracy during each new task, stopping and rolling back to
the best within-budget weights when a relative drop exceeds the budget.

    HF_HUB_OFFLINE=1 python examples/sequence_minilm.py --seeds 0 1 2 --out minilm-sequence.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer

from retain.assets.datasets import load_dataset
from retain.assets.models import model_folder
from retain.data.permuted import TaskSplit
from retain.data.task_heads import TaskHeads
from retain.data.text import text_classification_task
from retain.training.loop import TrainConfig
from retain.training.monitor import MonitorConfig
from retain.training.sequence import RunResult, fit_sequence

TASKS = ("trec", "rotten_tomatoes", "sms_spam")


def labelled_task(data: Any, split: str, name: str, n: int, tokenizer: Any) -> Any:
    """The first ``n`` rows of ``data[split]`` as a tokenised classification task."""
    rows = data[split].select(range(min(n, len(data[split]))))
    classes = data["train"].features["label"].num_classes
    return text_classification_task(
        name, tokenizer, rows["text"], rows["label"], max_length=64, num_labels=classes
    )


def splits(tokenizer: Any, train: int, test: int) -> list[TaskSplit]:
    """Each task's first ``train`` training and ``test`` test examples, as tokenised tasks."""
    out = []
    for name in TASKS:
        data = load_dataset(name)
        out.append(
            TaskSplit(
                labelled_task(data, "train", name, train, tokenizer),
                labelled_task(data, "test", name, test, tokenizer),
            )
        )
    return out


def run(seed: int, data: list[TaskSplit], config: TrainConfig, budget: float | None) -> RunResult:
    folder, _ = model_folder("minilm")
    heads = {s.train.name: s.train.num_labels for s in data}  # type: ignore[attr-defined]
    model = TaskHeads.from_encoder_folder(folder, heads)
    monitor = None if budget is None else MonitorConfig(budget, eval_every=10)
    return fit_sequence(
        model,
        data,
        None,
        TrainConfig(**{**config.__dict__, "seed": seed}),
        monitor=monitor,
        progress=False,
    )[1]


def summary(results: list[RunResult]) -> dict[str, Any]:
    def spread(values: list[float]) -> str:
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):+.3f} ± {sd:.3f}"

    return {
        "bwt": spread([r.metrics.backward_transfer for r in results]),
        "acc": spread([r.metrics.average_accuracy for r in results]),
        "forgetting": spread([r.metrics.average_forgetting for r in results]),
        "final_row": [[round(x, 3) for x in r.matrix[-1]] for r in results],
        "stops": [[log.stop_reason or "completed" for log in r.logs] for r in results],
        "best_steps": [
            [None if log.monitor is None else log.monitor.best_step for log in r.logs]
            for r in results
        ],
        "steps": [[log.steps for log in r.logs] for r in results],
        "seconds": [round(sum(r.seconds.values()), 1) for r in results],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--train", type=int, default=640)
    parser.add_argument("--test", type=int, default=300)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--budget", type=float, default=0.05)
    parser.add_argument("--arms", nargs="+", default=["naive", "monitored"])
    parser.add_argument("--out", type=Path, default=Path("minilm-sequence.json"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    folder, _ = model_folder("minilm")
    data = splits(AutoTokenizer.from_pretrained(folder), args.train, args.test)
    config = TrainConfig(lr=args.lr, batch_size=16, epochs=1)
    report: dict[str, Any] = {"config": {**vars(args), "out": str(args.out)}}
    results: dict[str, list[RunResult]] = {arm: [] for arm in args.arms}
    for seed in args.seeds:  # seeds outside, arms inside: every finished seed is a fair pair
        for arm in args.arms:
            start = time.perf_counter()
            r = run(seed, data, config, None if arm == "naive" else args.budget)
            results[arm].append(r)
            print(
                f"{arm} seed {seed}: BWT {r.metrics.backward_transfer:+.3f} "
                f"R={[[round(x, 3) for x in row] for row in r.matrix]} "
                f"stops={[log.stop_reason or 'completed' for log in r.logs]} "
                f"({time.perf_counter() - start:.0f} s)",
                flush=True,
            )
            report[arm] = summary(results[arm])
            report[arm + "_runs"] = [x.to_json() for x in results[arm]]
            args.out.write_text(json.dumps(report, indent=1, allow_nan=True))
    for arm in args.arms:
        print(arm, {k: v for k, v in report[arm].items() if k != "final_row"})


if __name__ == "__main__":
    main()
