"""The forgetting budget on a real pretrained model: SmolLM2-135M adapted to SMS messages.

Question (from the issue): does :class:`retain.training.budget.ForgettingBudget` land within a
stated forgetting budget ``D`` where a fixed penalty strength misses it one way or the other?

Set-up. SmolLM2-135M-Instruct (``load_model("smollm2")``, float32, CPU) is fine-tuned with the
causal-LM loss on the ``--domain`` dataset's train split (default ``sms_spam``), one example per
message cut to its first ``--block-size`` tokens (``--pack``: packed blocks instead;
:func:`retain.data.text.causal_lm_task`), AdamW at ``--lr``, ``--steps`` optimizer steps of
``--batch-size`` examples (:func:`retain.training.loop.train_task`; the seed fixes the data
order), the fine-tune of the shipped ``smollm2_domain`` config. Every arm starts from the same
pretrained weights.

Capability: token perplexity on general text (``general_text``: news and Wikipedia prose, held out
from every training set), each passage cut to its first ``--general-tokens`` tokens. Two disjoint
fixed sets of passages are used: the *control* set (``--control-passages``) is the only thing
the budget's controller sees; the *report* set (``--report-passages``), never seen by any
controller, gives the figures in the table. Relative degradation is
``(ppl_after − ppl_before) / ppl_before`` (positive = worse).

New-task score: token perplexity on held-out domain text (the first ``--domain-eval-blocks``
packed ``--block-size``-token blocks of the domain's test split), before and after.

Arms:

* ``naive``: plain fine-tuning (per seed in ``--seeds``);
* ``l2sp a=<alpha>``: L2-SP (Li, Grandvalet & Davoine 2018) anchored at the pretrained weights
  with a fixed ``alpha`` (``--alphas``, seeds ``--scan-seeds``): the scan that shows a fixed
  strength forgetting beyond the budget (small alpha) or barely adapting (large alpha);
* ``budget <controller>``: ``ForgettingBudget(L2SP(alpha=--start-alpha), control suite, D)``
  with the ``--controllers`` laws, updating the strength every ``--every`` steps.

Every arm also records the report-set degradation every ``--watch-every`` steps (evaluated in
forked RNG state, so it does not change training). One arm takes about 2 minutes on 2 idle CPU
cores (10-25 minutes when other jobs share them). The figures reported for the issue come from
these two runs (every arm is independent and seeded, so they can also run in pieces)::

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python examples/budget_smollm2.py \\
        --seeds 0 1 2 --scan-seeds 0 1 2 --alphas 1 10 --out budget_smollm2.json
    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python examples/budget_smollm2.py \\
        --seeds 0 --no-naive --alphas 0.1 100 --controllers --out budget_smollm2_scan.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch
from torch import nn

from retain.assets.datasets import load_dataset
from retain.assets.models import load_model
from retain.data.task import Task, batch_loss
from retain.data.text import causal_lm_task
from retain.evaluation.base import eval_mode, undisturbed
from retain.evaluation.perplexity import Perplexity
from retain.evaluation.suite import EvalSuite
from retain.evaluation.suites import subset
from retain.strategies.base import Strategy
from retain.strategies.l2sp import L2SP
from retain.training.budget import Controller, ForgettingBudget
from retain.training.loop import TrainConfig, train_task


class Watch(Strategy):
    """Records the report-set perplexity every ``every`` steps; changes nothing in training."""

    name = "watch"

    def __init__(self, probe: Perplexity, tokenizer: Any, before: float, every: int) -> None:
        self.probe, self.tokenizer, self.before, self.every = probe, tokenizer, before, every
        self.history: list[dict[str, float]] = []
        self.seconds = 0.0

    def on_step(self, step: int, model: nn.Module) -> None:
        """Every ``every`` steps: evaluate in forked RNG state and record the degradation."""
        if step % self.every:
            return
        start = time.perf_counter()
        with undisturbed(model):
            ppl = float(self.probe.evaluate(model, self.tokenizer).score)
        self.seconds += time.perf_counter() - start
        self.history.append(
            {"step": step, "ppl": ppl, "degradation": (ppl - self.before) / self.before}
        )


def general_sets(args: argparse.Namespace, tokenizer: Any) -> tuple[list[str], list[str]]:
    """Two disjoint fixed sets (control, report) of ``general_text`` passages, each passage cut to
    its first ``--general-tokens`` tokens."""
    passages, tokens = args.control_passages, args.general_tokens
    total = passages + args.report_passages
    rows = subset(load_dataset("general_text")["test"], total, seed=0)["text"]
    cut = [
        tokenizer.decode(tokenizer(t, add_special_tokens=False)["input_ids"][:tokens]) for t in rows
    ]
    return cut[:passages], cut[passages:]


def block_perplexity(model: nn.Module, task: Task, blocks: int, batch_size: int = 16) -> float:
    """``exp(mean next-token cross-entropy)`` over the first ``blocks`` full blocks of ``task``."""
    batches = task.batches(batch_size, limit=blocks)
    nll, count = 0.0, 0
    with eval_mode(model), torch.no_grad():
        for batch in batches:
            n = int((batch["labels"][:, 1:] != -100).sum())
            nll += float(batch_loss(task.objective, model, batch)) * n
            count += n
    return math.exp(nll / count)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line settings (defaults: the issue's set-up)."""
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="naive and budget arms")
    p.add_argument("--scan-seeds", type=int, nargs="*", default=[0], help="fixed-alpha arms")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--budget", type=float, default=0.10, help="D: accepted relative degradation")
    p.add_argument("--alphas", type=float, nargs="*", default=[0.1, 10.0])
    p.add_argument("--start-alpha", type=float, default=0.1, help="the budget's first alpha")
    p.add_argument(
        "--controllers",
        nargs="*",
        default=["multiplicative", "pi"],
        choices=["multiplicative", "pi"],
    )
    p.add_argument("--no-naive", action="store_true", help="skip the naive arm")
    p.add_argument("--every", type=int, default=4, help="steps between controller updates")
    p.add_argument("--proportional-gain", type=float, help="PI k_p (default: the library's)")
    p.add_argument("--integral-gain", type=float, help="PI k_i (default: the library's)")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--block-size", type=int, default=64, help="max tokens per example")
    p.add_argument("--pack", action="store_true", help="train on packed blocks, not messages")
    p.add_argument("--watch-every", type=int, default=8, help="steps between report evaluations")
    p.add_argument("--domain", default="sms_spam", help="registry text dataset to adapt to")
    p.add_argument("--domain-eval-blocks", type=int, default=32)
    p.add_argument("--control-passages", type=int, default=8, help="seen by the controller")
    p.add_argument("--report-passages", type=int, default=16, help="reported, never controlled")
    p.add_argument("--general-tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("budget_smollm2.json"))
    return p.parse_args(argv)


def run_arm(
    args: argparse.Namespace, arm: str, seed: int, before: dict[str, float]
) -> dict[str, Any]:
    """Train one arm from the pretrained weights and measure it; see the module docstring."""
    loaded = load_model("smollm2", kind="causal-lm")
    model, tok = loaded.model, loaded.tokenizer
    torch.manual_seed(seed)
    control, report = general_sets(args, tok)
    max_len = args.general_tokens + 8  # one window per passage (decode/encode may add a token)
    data = load_dataset(args.domain)
    train = data["train"]["text"]
    task = causal_lm_task(args.domain, tok, train, block_size=args.block_size, pack=args.pack)
    held = causal_lm_task("held", tok, data["test"]["text"], block_size=args.block_size)
    watch = Watch(
        Perplexity("report", report, max_length=max_len),
        tok,
        before["report_ppl"],
        args.watch_every,
    )
    strategies: list[Strategy] = []
    budget: ForgettingBudget | None = None
    if arm.startswith("l2sp"):
        strategies.append(L2SP(alpha=float(arm.split("=")[1])))
    elif arm.startswith("budget"):
        controller: Controller = "pi" if arm.startswith("budget pi") else "multiplicative"
        gains = (
            {"proportional_gain": args.proportional_gain, "integral_gain": args.integral_gain}
            if controller == "pi"
            else {}
        )
        suite = EvalSuite("control", [Perplexity("control", control, max_length=max_len)])
        budget = ForgettingBudget(
            L2SP(alpha=args.start_alpha),
            suite,
            args.budget,
            every=args.every,
            tokenizer=tok,
            controller=controller,
            **gains,
        )
        strategies.append(budget)
    config = TrainConfig(lr=args.lr, batch_size=args.batch_size, max_steps=args.steps, seed=seed)
    start = time.perf_counter()
    log = train_task(model, task, [*strategies, watch], config)
    seconds = time.perf_counter() - start - watch.seconds
    control_ppl = float(Perplexity("c", control, max_length=max_len).evaluate(model, tok).score)
    report_ppl = float(Perplexity("r", report, max_length=max_len).evaluate(model, tok).score)
    rec: dict[str, Any] = {
        "arm": arm,
        "seed": seed,
        "steps": log.steps,
        "seconds": round(seconds, 1),
        "report_ppl": report_ppl,
        "report_degradation": (report_ppl - before["report_ppl"]) / before["report_ppl"],
        "control_degradation": (control_ppl - before["control_ppl"]) / before["control_ppl"],
        "domain_ppl_before": before["domain_ppl"],
        "domain_ppl_after": block_perplexity(model, held, args.domain_eval_blocks),
        "report_trajectory": watch.history,
        "final_loss": log.losses[-1],
    }
    if budget is not None:
        rec["strength_trajectory"] = budget.history
        rec["final_strength"] = budget.strength
    return rec


def table(before: dict[str, float], runs: list[dict[str, Any]], budget: float) -> str:
    """A markdown table of every run."""
    lines = [
        f"general ppl before: report {before['report_ppl']:.3f}, control "
        f"{before['control_ppl']:.3f}; domain ppl before {before['domain_ppl']:.2f}; D = {budget}",
        "",
        "| arm | seed | general ppl (report) | degradation report | degradation control "
        "| within D | domain ppl after | alpha trajectory | s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        traj = r.get("strength_trajectory")
        alphas = " ".join(f"{h['strength']:.3g}" for h in traj) if traj else "-"
        lines.append(
            f"| {r['arm']} | {r['seed']} | {r['report_ppl']:.3f} | {r['report_degradation']:+.1%} "
            f"| {r['control_degradation']:+.1%} | "
            f"{'yes' if r['report_degradation'] <= budget else 'no'} | "
            f"{r['domain_ppl_after']:.2f} | {alphas} | {r['seconds']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run every arm, print one line per run and the table, write the JSON report to ``--out``."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    loaded = load_model("smollm2", kind="causal-lm")
    model, tok = loaded.model, loaded.tokenizer
    control, report = general_sets(args, tok)
    max_len = args.general_tokens + 8
    data = load_dataset(args.domain)
    held = causal_lm_task("held", tok, data["test"]["text"], block_size=args.block_size)
    start = time.perf_counter()
    before = {
        "control_ppl": float(
            Perplexity("c", control, max_length=max_len).evaluate(model, tok).score
        ),
        "report_ppl": float(Perplexity("r", report, max_length=max_len).evaluate(model, tok).score),
    }
    eval_seconds = time.perf_counter() - start
    before["domain_ppl"] = block_perplexity(model, held, args.domain_eval_blocks)
    del model
    arms = [("naive", s) for s in args.seeds if not args.no_naive]
    arms += [(f"l2sp a={a:g}", s) for a in args.alphas for s in args.scan_seeds]
    pi_label = "".join(
        f" {name}={value:g}"
        for name, value in (("kp", args.proportional_gain), ("ki", args.integral_gain))
        if value is not None
    )
    arms += [
        (f"budget {c}{pi_label if c == 'pi' else ''}", s)
        for c in args.controllers
        for s in args.seeds
    ]
    report_json: dict[str, Any] = {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "before": before,
        "seconds_two_general_evaluations": round(eval_seconds, 2),
        "runs": [],
    }
    print(f"before: {before} (two general evaluations: {eval_seconds:.1f} s)", flush=True)
    for arm, seed in arms:
        rec = run_arm(args, arm, seed, before)
        report_json["runs"].append(rec)
        args.out.write_text(json.dumps(report_json, indent=1))
        print(
            f"{arm} seed {seed}: {rec['seconds']:.0f} s, general ppl {rec['report_ppl']:.3f} "
            f"({rec['report_degradation']:+.1%}; control {rec['control_degradation']:+.1%}), "
            f"domain ppl {before['domain_ppl']:.2f} -> {rec['domain_ppl_after']:.2f}"
            + (f", final alpha {rec['final_strength']:.3g}" if "final_strength" in rec else ""),
            flush=True,
        )
    print(table(before, report_json["runs"], args.budget), flush=True)
    return report_json


if __name__ == "__main__":
    main()
