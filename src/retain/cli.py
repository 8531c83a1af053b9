"""The ``retain`` command line: ``audit``, ``diagnose`` (:mod:`retain.cli_diagnose`), ``ls``,
and the experiment commands ``run``, ``validate``, ``sweep``, ``report``, ``demo``
(:mod:`retain.cli_experiment`).

A user mistake (wrong path, unknown name, missing column) prints one line ``retain: error: ...``
naming the problem and the fix, and exits with code 2; nothing half-written is left behind.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from retain.errors import RetainError

__all__ = ["main"]


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class _Parser(argparse.ArgumentParser):
    """argparse with retain's one-line errors: ``retain: error: ...`` and exit code 2."""

    def error(self, message: str) -> NoReturn:
        print(f"retain: error: {message} (see: {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def _parser() -> argparse.ArgumentParser:
    from retain import __version__

    parser = _Parser(
        prog="retain",
        description="Know and bound what a model forgets when you fine-tune it.",
    )
    parser.add_argument("--version", action="version", version=f"retain {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    audit = sub.add_parser(
        "audit",
        help="compare two checkpoints on a capability suite: what did the fine-tune forget?",
        description="Score a base and a tuned model on the same capability suite and report "
        "every capability before/after, its change, and a one-line verdict.",
    )
    audit.add_argument(
        "--base", required=True, help="starting model: registry name, folder, hub id"
    )
    audit.add_argument(
        "--tuned", required=True, help="fine-tuned model: same forms, or a PEFT adapter folder"
    )
    audit.add_argument(
        "--suite",
        default="general",
        help="capability suite: general (causal LMs, default), encoder (see: retain ls), or "
        "lm-evaluation-harness tasks as lm-eval:TASK[,TASK...]",
    )
    audit.add_argument(
        "--lm-eval-include",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="a folder of your own lm-eval task YAMLs (repeatable)",
    )
    audit.add_argument("--limit", type=int, help="documents per lm-eval task (default: all)")
    audit.add_argument("--num-fewshot", type=int, help="in-context examples per lm-eval document")
    audit.add_argument(
        "--out",
        type=Path,
        help="folder for results.json, report.md and report.html (default: print only, write "
        "nothing)",
    )
    audit.add_argument(
        "--tolerance",
        type=float,
        default=0.02,
        help="relative degradation counted as forgetting (default 0.02 = 2%%)",
    )
    audit.add_argument("--quick", action="store_true", help="small probe sets (smoke test)")
    audit.add_argument("--adapter-base", help="base model of a PEFT adapter --tuned")
    audit.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    audit.add_argument(
        "--trust-remote-code", action="store_true", help="allow model code from the hub"
    )
    audit.add_argument(
        "--device", default="auto", help="auto (CUDA if available, else CPU), cpu, cuda, cuda:N"
    )

    sub.add_parser(
        "ls", help="list models, datasets, probes, suites, strategies and shipped configs"
    )

    from retain.cli_diagnose import add_diagnose_command
    from retain.cli_experiment import add_experiment_commands

    add_diagnose_command(sub)
    add_experiment_commands(sub)
    return parser


def _cmd_ls() -> int:
    from retain.assets.datasets import DATASETS
    from retain.assets.models import MODELS
    from retain.evaluation.suites import PROBES, SUITES
    from retain.strategies.base import STRATEGIES, parameters_line

    listings: list[tuple[str, list[tuple[str, str]]]] = [
        (title, [(e.name, e.description) for e in registry])
        for title, registry in (
            ("models", MODELS),
            ("datasets", DATASETS),
            ("probes", PROBES),
            ("suites", SUITES),
            ("strategies", STRATEGIES),
        )
    ]
    for title, entries in listings:
        print(f"{title}:")
        width = max(len(name) for name, _ in entries)
        for name, description in entries:
            print(f"  {name.ljust(width)}  {description}")
            if title == "strategies":
                print(f"  {''.ljust(width)}    ({parameters_line(STRATEGIES.get(name))})")
    from retain.experiment.shipped import shipped_configs

    print("configs (retain run NAME, retain validate NAME):")
    configs = shipped_configs()
    width = max((len(name) for name in configs), default=0)
    for name, path in configs.items():
        print(f"  {name.ljust(width)}  {path}")
    return 0


def _cmd_audit(args: argparse.Namespace) -> int:
    from retain.experiment.audit import AuditConfig, run_audit
    from retain.report.audit_report import audit_table

    config = AuditConfig(
        base=args.base,
        tuned=args.tuned,
        suite=args.suite,
        out=args.out,
        tolerance=args.tolerance,
        size="quick" if args.quick else "full",
        adapter_base=args.adapter_base,
        overwrite=args.overwrite,
        trust_remote_code=args.trust_remote_code,
        device=args.device,
        lm_eval_include=tuple(args.lm_eval_include),
        limit=args.limit,
        num_fewshot=args.num_fewshot,
    )
    record = run_audit(config, progress=_say)
    print(audit_table(record))
    if args.out is not None:
        _say(f"wrote {args.out / 'results.json'}, report.md and report.html")
    return 0


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: object = None,
    line: str | None = None,
) -> None:
    """retain's own warnings as one line ``retain: warning: ...``; others as Python shows them."""
    if Path(filename).resolve().is_relative_to(Path(__file__).resolve().parent):
        _say(f"retain: warning: {message}")
    else:
        _default_showwarning(message, category, filename, lineno, file, line)  # type: ignore[arg-type]


_default_showwarning = warnings.showwarning


def _quiet_libraries() -> None:
    """Library progress bars off even when a library was imported first (in a notebook, or by
    a test): our own progress lines go to stderr, and bars would interleave with them."""
    import sys

    if "huggingface_hub" in sys.modules and os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1":
        from huggingface_hub.utils.tqdm import disable_progress_bars

        disable_progress_bars()
    if "transformers" in sys.modules and os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1":
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    if "datasets" in sys.modules and os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] == "1":
        import datasets

        datasets.disable_progress_bars()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``retain`` console script; returns the exit code."""
    # Before anything imports the libraries (building the parser may): they read these once.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Our own progress lines go to stderr; library progress bars and advisories would bury them.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    _quiet_libraries()
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    # `key=value` overrides may also follow the options (argparse stops the positionals there).
    stray = [a for a in extra if a.startswith("-") or "=" not in a]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    # Library deprecation notices are for retain's developers, not for a user reading a report.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.showwarning = _show_warning
    try:
        if args.command == "ls":
            return _cmd_ls()
        if args.command == "audit":
            return _cmd_audit(args)
        if args.command == "diagnose":
            from retain.cli_diagnose import cmd_diagnose

            return cmd_diagnose(args)
        from retain.cli_experiment import run_command

        code = run_command(args)
        if code is not None:
            return code
        parser.print_help()
        return 0
    except RetainError as err:
        print(f"retain: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # the file system said no (permissions, space, a path that cannot be)
        where = f": {err.filename!r}" if err.filename else ""
        print(
            f"retain: error: {err.strerror or err}{where}; check the path and its permissions",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print("retain: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
