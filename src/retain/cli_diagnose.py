"""``retain diagnose``: why a fine-tune forgot, layer by layer.

The work is done by :mod:`retain.experiment.diagnose`; this module parses the options.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

__all__ = ["DIAGNOSTIC_NAMES", "add_diagnose_command", "cmd_diagnose"]

#: ``retain.experiment.diagnose_config.DIAGNOSTICS``, spelled out so that building the parser
#: imports no torch (a test keeps the two equal)
DIAGNOSTIC_NAMES = ("drift", "importance", "interference", "representation", "output")


def add_diagnose_command(sub: Any) -> None:
    """Register ``diagnose`` on the ``retain`` sub-parsers."""
    p = sub.add_parser(
        "diagnose",
        help="why did it forget? drift, Fisher importance, gradient interference, CKA, output KL",
        description="Compare a base and a tuned checkpoint layer by layer: parameter drift, Fisher "
        "importance of general text vs the new task and their overlap, gradient interference, "
        "representational shift (linear CKA) and next-token KL on held-out general text. Writes "
        "results.json, report.html and plots/ with --out.",
    )
    p.add_argument("--base", required=True, help="starting model: registry name, folder, hub id")
    p.add_argument(
        "--tuned", required=True, help="fine-tuned model: same forms, or a PEFT adapter folder"
    )
    p.add_argument(
        "--data",
        help="the new task's dataset (registry name, file, hub name); needed for importance and "
        "interference",
    )
    p.add_argument(
        "--general",
        default="general_text",
        help="held-out general text dataset (default general_text)",
    )
    p.add_argument("--text-column", help="text column of --data (default: the dataset's own)")
    p.add_argument("--general-column", help="text column of --general (default: its own)")
    p.add_argument(
        "--only",
        help=f"comma-separated subset of: {','.join(DIAGNOSTIC_NAMES)} (default: every one that "
        "applies; a named one that cannot run is an error)",
    )
    p.add_argument(
        "--samples", type=int, default=32, help="general-text sequences for CKA/KL (default 32)"
    )
    p.add_argument(
        "--fisher-samples", type=int, default=16, help="sequences per Fisher (default 16)"
    )
    p.add_argument(
        "--batches", type=int, default=4, help="gradient pairs for interference (default 4)"
    )
    p.add_argument(
        "--batch-size", type=int, default=8, help="sequences per forward pass (default 8)"
    )
    p.add_argument("--max-length", type=int, default=128, help="tokens per sequence (default 128)")
    p.add_argument(
        "--max-tokens", type=int, default=2048, help="token positions per CKA layer (default 2048)"
    )
    p.add_argument(
        "--max-memory",
        type=float,
        metavar="GB",
        help="working-set budget in GiB for the output shift's logits and the Fisher's "
        "micro-batches, on top of the two models (default: max(0.25, half a model's float32 "
        "size)); lower it to fit a small machine: the results do not change, only the passes",
    )
    p.add_argument(
        "--top", type=float, default=0.1, help="fraction of parameters counted critical (0.1)"
    )
    p.add_argument("--exclude", help="regex of parameter names left out of the drift")
    p.add_argument("--out", type=Path, help="run directory (default: print only, write nothing)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier diagnose --out")
    p.add_argument("--adapter-base", help="base model of a PEFT adapter --tuned")
    p.add_argument("--trust-remote-code", action="store_true", help="allow model code from the hub")
    p.add_argument(
        "--device", default="auto", help="auto (CUDA if available, else CPU), cpu, cuda, cuda:N"
    )


def cmd_diagnose(args: argparse.Namespace) -> int:
    """Run ``retain diagnose`` from parsed arguments; returns the exit code."""
    from retain.experiment.diagnose import DiagnoseConfig, run_diagnose
    from retain.report.diagnose_summary import diagnose_table

    only = (
        tuple(x.strip() for x in args.only.split(",") if x.strip())
        if args.only is not None
        else None
    )
    config = DiagnoseConfig(
        base=args.base,
        tuned=args.tuned,
        data=args.data,
        general=args.general,
        text_column=args.text_column,
        general_column=args.general_column,
        only=only,
        samples=args.samples,
        fisher_samples=args.fisher_samples,
        batches=args.batches,
        batch_size=args.batch_size,
        max_length=args.max_length,
        max_tokens=args.max_tokens,
        max_memory_gb=args.max_memory,
        top=args.top,
        exclude=args.exclude,
        out=args.out,
        overwrite=args.overwrite,
        adapter_base=args.adapter_base,
        trust_remote_code=args.trust_remote_code,
        device=args.device,
    )
    results = run_diagnose(config, progress=lambda line: print(line, file=sys.stderr, flush=True))
    print(diagnose_table(results))
    if args.out is not None:
        print(f"wrote {args.out / 'results.json'} and {args.out / 'report.html'}", file=sys.stderr)
    return 0
