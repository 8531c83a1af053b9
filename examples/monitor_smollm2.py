r"""The forgetting monitor on a real domain adaptation: SmolLM2-135M fine-tuned on SMS messages.

Capability watched: token perplexity of SmolLM2-135M-Instruct on general text (``general_text``:
news and Wikipedia prose, held out from every training set), measured by
:class:`retain.evaluation.perplexity.Perplexity` on a small fixed sample (``--general-passages``
passages cut to their first ``--general-tokens`` tokens) so that one evaluation takes seconds.
Relative degradation is ``(ppl_after - ppl_before) / ppl_before`` (lower perplexity is better).

New task: causal-LM fine-tuning on the ``--domain`` dataset's train split (default ``sms_spam``
messages), packed into ``--block-size``-token blocks (``eos`` between texts), AdamW at ``--lr``,
``--steps`` optimizer steps of ``--batch-size`` blocks, data order shuffled by the seed.
``task_score`` (picks the best within-budget checkpoint) is *minus* the token perplexity on
held-out domain text (the first ``--domain-eval-blocks`` packed blocks of the domain's test split):
``-exp(mean cross-entropy in nats per predicted token)``, higher is better.

Per seed, these runs from the same pretrained weights (the seed sets the data order; the model
has no dropout):

* ``naive``: :func:`retain.training.loop.train_task` without a monitor; general and domain
  perplexity before and after.
* ``monitored_every{k}`` for each ``k`` in ``--eval-every``: the same call with
  ``ForgettingMonitor(max_degradation=--budget, eval_every=k, patience=--patience)``: stop step
  and reason, restored step, the final general-text degradation (re-measured after the run),
  domain perplexity after.
* ``watch`` (only for ``--watch-seeds``): a monitor whose budget is never reached
  (``max_degradation=1e9``, no restore) evaluating every ``--watch-every`` steps, giving the
  degradation curve over the whole naive trajectory.

It also checks that monitoring does not change the trajectory: the monitored (and watch) run's
per-step losses must equal the naive run's losses bit for bit over the steps both took.

Run (40 minutes with ``--threads 1`` on 2 CPU cores shared with other jobs; on a busy machine one
thread is much faster than two)::

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python examples/monitor_smollm2.py --seeds 0 1 2 \
        --steps 40 --budget 0.10 --eval-every 5 1 --watch-seeds 0 --threads 1 \
        --out monitor_smollm2.json

Measured that way (seeds 0, 1, 2): naive training raises general-text perplexity from 24.83 by
40.3 / 45.0 / 54.4 % (SMS perplexity 345.7 -> 93.1 / 98.9 / 83.3); most of the rise comes in the
first 5 steps (+28-30 %). With ``eval_every=5`` the monitor stops at step 5 and, the start being
the only checkpoint within budget, restores the pretrained weights. With ``eval_every=1`` it stops
at step 2 / 3 / 3 and restores step 1 / 2 / 2: general text +3.2 / +7.0 / +7.4 %, SMS perplexity
203.7 / 169.7 / 165.6. Every monitored run's losses equal the naive run's, bit for bit.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch
from torch import nn

from retain.assets.datasets import load_dataset
from retain.assets.models import load_model
from retain.data.task import CausalLM, Example, Task, batch_loss
from retain.evaluation.base import eval_mode
from retain.evaluation.perplexity import Perplexity
from retain.evaluation.suite import EvalSuite
from retain.evaluation.suites import subset
from retain.training.loop import TaskLog, TrainConfig, train_task
from retain.training.monitor import ForgettingMonitor, MonitorConfig

WATCH_BUDGET = 1e9  # a "budget" no run reaches: the watch monitor only records


def packed_blocks(tokenizer: Any, texts: Sequence[str], block_size: int) -> list[list[int]]:
    """Token ids of every text followed by eos, concatenated and cut into full blocks.

    The same packing as ``retain.data.text.causal_lm_task`` (the remainder is dropped); used when
    the installed ``retain`` lacks that module.
    """
    eos = int(tokenizer.eos_token_id)
    stream: list[int] = []
    for ids in tokenizer(list(texts), verbose=False)["input_ids"]:
        stream.extend(int(i) for i in ids)
        if not ids or int(ids[-1]) != eos:
            stream.append(eos)
    n = len(stream) // block_size
    return [stream[i * block_size : (i + 1) * block_size] for i in range(n)]


def domain_task(name: str, tokenizer: Any, texts: Sequence[str], block_size: int) -> Task:
    """A causal-LM :class:`Task` over packed ``block_size``-token blocks of ``texts``.

    Uses ``retain.data.text.causal_lm_task`` when the package has it, else packs inline
    (:func:`packed_blocks`); the loss is the mean next-token cross-entropy of each batch.
    """
    try:
        from retain.data.text import causal_lm_task  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        examples: list[Example] = [
            {"input_ids": torch.tensor(b, dtype=torch.long)}
            for b in packed_blocks(tokenizer, texts, block_size)
        ]
        return Task(name, examples, CausalLM(), texts=list(texts))
    task: Task = causal_lm_task(name, tokenizer, list(texts), block_size=block_size)
    return task


def block_perplexity(model: nn.Module, blocks: torch.Tensor, batch_size: int = 16) -> float:
    """Token perplexity ``exp(sum CE / n predicted tokens)`` of ``model`` on packed ``blocks``.

    ``blocks`` is ``[N, T]`` token ids; each block predicts its tokens 2..T from the earlier ones
    (T - 1 targets a block), exactly the training objective. Runs in eval mode without gradients.
    """
    objective = CausalLM()
    nll, count = 0.0, 0
    with eval_mode(model):
        for start in range(0, blocks.shape[0], batch_size):
            chunk = blocks[start : start + batch_size]
            n = chunk.shape[0] * (chunk.shape[1] - 1)
            nll += float(batch_loss(objective, model, {"input_ids": chunk})) * n
            count += n
    return math.exp(nll / count)


def domain_score(blocks: torch.Tensor) -> Callable[[nn.Module], float]:
    """The monitor's ``task_score``: minus :func:`block_perplexity` on ``blocks`` (higher is
    better)."""

    def score(model: nn.Module) -> float:
        return -block_perplexity(model, blocks)

    return score


def general_texts(tokenizer: Any, passages: int, tokens: int) -> list[str]:
    """``passages`` fixed ``general_text`` passages, each cut to its first ``tokens`` tokens."""
    rows = subset(load_dataset("general_text")["test"], passages, seed=0)["text"]
    cut = [tokenizer(t, add_special_tokens=False)["input_ids"][:tokens] for t in rows]
    return [tokenizer.decode(ids) for ids in cut]


def capability_suite(texts: list[str], max_length: int) -> EvalSuite:
    """One probe: perplexity on ``texts`` (one window each: ``max_length`` >= their length)."""
    return EvalSuite("general", [Perplexity("general_text", texts, max_length=max_length)])


def general_ppl(model: nn.Module, tokenizer: Any, texts: list[str], max_length: int) -> float:
    """The watched capability's score, measured outside any monitor."""
    probe = Perplexity("general_text", texts, max_length=max_length)
    return float(probe.evaluate(model, tokenizer).score)


def fresh_model(seed: int) -> nn.Module:
    """The pretrained SmolLM2 (float32, CPU); torch seeded with ``seed``."""
    model = load_model("smollm2", kind="causal-lm").model
    torch.manual_seed(seed)
    return model


@dataclass(frozen=True)
class Setup:
    """Everything the runs share: tokenizer, task, evaluation data, the starting scores."""

    tokenizer: Any
    task: Task
    general: list[str]  # general-text passages (the capability)
    held: torch.Tensor  # held-out domain blocks [N, block_size] (the task score)
    max_length: int  # perplexity window: one window per general passage
    before: dict[str, float]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line settings (defaults: the issue's set-up)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--budget", type=float, default=0.10, help="max relative degradation")
    p.add_argument(
        "--eval-every", type=int, nargs="+", default=[5], help="one monitored run per value"
    )
    p.add_argument("--patience", type=int, default=1)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--block-size", type=int, default=64)
    p.add_argument("--domain", default="sms_spam", help="registry text dataset to adapt to")
    p.add_argument("--domain-eval-blocks", type=int, default=32)
    p.add_argument("--general-passages", type=int, default=16)
    p.add_argument("--general-tokens", type=int, default=128)
    p.add_argument("--watch-seeds", type=int, nargs="*", default=[0])
    p.add_argument("--watch-every", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("monitor_smollm2.json"))
    return p.parse_args(argv)


def make_monitor(setup: Setup, budget: float, every: int, patience: int) -> ForgettingMonitor:
    """A monitor of general-text perplexity at relative ``budget``, scored by the domain."""
    suite = EvalSuite(
        "general", [Perplexity("general_text", setup.general, max_length=setup.max_length)]
    )
    config = MonitorConfig(
        max_degradation=budget,
        eval_every=every,
        patience=patience,
        restore_best=budget != WATCH_BUDGET,
    )
    return ForgettingMonitor(
        suite, config, tokenizer=setup.tokenizer, task_score=domain_score(setup.held)
    )


def run_arm(
    setup: Setup, config: TrainConfig, monitor: ForgettingMonitor | None
) -> tuple[TaskLog, dict[str, Any]]:
    """Train a fresh pretrained model on the domain (with ``monitor``) and measure it after."""
    model = fresh_model(config.seed)
    start = time.perf_counter()
    log = train_task(model, setup.task, None, config, monitor=monitor)
    seconds = time.perf_counter() - start
    ppl = general_ppl(model, setup.tokenizer, setup.general, setup.max_length)
    g0 = setup.before["general_ppl"]
    rec: dict[str, Any] = {
        "steps": log.steps,
        "seconds": round(seconds, 1),
        "losses": log.losses,
        "general_ppl_after": ppl,
        "general_degradation": (ppl - g0) / g0,
        "domain_ppl_after": block_perplexity(model, setup.held),
    }
    if log.monitor is not None:
        result = log.monitor
        rec.update(
            stopped=log.stopped,
            stop_reason=result.reason,
            stop_step=log.steps if log.stopped else None,
            restored=result.restored,
            restored_step=result.best_step,
            monitor_final_worst_degradation=result.to_json()["final_worst_degradation"],
            evaluations=len(result.history),
            history=[entry.to_json() for entry in result.history],
        )
    return log, rec


def run_seed(args: argparse.Namespace, setup: Setup, seed: int) -> dict[str, Any]:
    """The naive, monitored (and watch) runs of one seed; see the module docstring."""
    config = TrainConfig(lr=args.lr, batch_size=args.batch_size, max_steps=args.steps, seed=seed)
    arms: list[tuple[str, ForgettingMonitor | None]] = [("naive", None)]
    for every in args.eval_every:
        arms.append(
            (f"monitored_every{every}", make_monitor(setup, args.budget, every, args.patience))
        )
    if seed in args.watch_seeds:
        arms.append(("watch", make_monitor(setup, WATCH_BUDGET, args.watch_every, 1)))
    out: dict[str, Any] = {"seed": seed}
    logs: dict[str, TaskLog] = {}
    for arm, monitor in arms:
        logs[arm], rec = run_arm(setup, config, monitor)
        out[arm] = rec
        b = setup.before
        line = (
            f"seed {seed} {arm}: {rec['steps']} steps in {rec['seconds']:.0f} s, general ppl "
            f"{b['general_ppl']:.3f} -> {rec['general_ppl_after']:.3f} "
            f"({rec['general_degradation']:+.1%}), domain ppl {b['domain_ppl']:.2f} -> "
            f"{rec['domain_ppl_after']:.2f}"
        )
        if monitor is not None:
            line += f"; {rec['stop_reason']}; restored step {rec['restored_step']}"
        print(line, flush=True)
    naive = logs["naive"].losses
    out["losses_identical"] = {
        arm: log.losses == naive[: log.steps] for arm, log in logs.items() if arm != "naive"
    }
    print(f"seed {seed} losses identical to naive: {out['losses_identical']}", flush=True)
    return out


def build_setup(args: argparse.Namespace) -> tuple[Setup, float]:
    """Tokenise the data, score the pretrained model; also returns the evaluation's seconds."""
    loaded = load_model("smollm2", kind="causal-lm")
    tok = loaded.tokenizer
    general = general_texts(tok, args.general_passages, args.general_tokens)
    data = load_dataset(args.domain)
    test_task = domain_task("held_out", tok, data["test"]["text"], args.block_size)
    blocks = test_task.examples[: args.domain_eval_blocks]
    held = torch.stack([ex["input_ids"] for ex in blocks])
    max_length = args.general_tokens + 8  # decode/encode may add a token or two
    start = time.perf_counter()
    before = {
        "general_ppl": general_ppl(loaded.model, tok, general, max_length),
        "domain_ppl": block_perplexity(loaded.model, held),
    }
    seconds = time.perf_counter() - start
    task = domain_task(args.domain, tok, data["train"]["text"], args.block_size)
    return Setup(tok, task, general, held, max_length, before), seconds


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run every seed, print one line per run, write the JSON report to ``--out``."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    setup, eval_seconds = build_setup(args)
    report: dict[str, Any] = {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "task_score": "minus token perplexity on held-out domain blocks (higher is better)",
        "train_blocks": len(setup.task.examples),
        "packing": "retain.data.text.causal_lm_task"
        if importlib.util.find_spec("retain.data.text")
        else "inline packed_blocks",
        "before": setup.before,
        "seconds_one_evaluation": round(eval_seconds, 2),
        "seeds": [],
    }
    print(
        f"before: general ppl {setup.before['general_ppl']:.3f}, {args.domain} ppl "
        f"{setup.before['domain_ppl']:.2f} ({len(setup.task.examples)} training blocks; "
        f"general + domain evaluation {eval_seconds:.1f} s)",
        flush=True,
    )
    total = time.perf_counter()
    for seed in args.seeds:
        report["seeds"].append(run_seed(args, setup, seed))
        report["seconds_total"] = round(time.perf_counter() - total, 1)
        args.out.write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
