"""The experiment commands of the ``retain`` CLI: ``run``, ``validate``, ``sweep``, ``report``,
``demo``. Each takes a YAML config (a file, or a shipped config's name such as ``demo``) and
``key=value`` overrides; see :mod:`retain.experiment.config`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from retain.experiment.config import ExperimentConfig
    from retain.records.comparison import ComparisonRow

__all__ = ["add_experiment_commands", "run_command"]


def _main() -> bool:
    """True in the process that speaks: the only one, or rank 0 under ``torchrun`` /
    ``accelerate launch`` (every rank runs the command; one prints it)."""
    from retain.distributed import is_main_process

    return is_main_process()


def _say(line: str) -> None:
    if _main():
        print(line, file=sys.stderr, flush=True)


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML config file, or a shipped config's name (retain ls)")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="override settings, e.g. training.lr=3e-4 tasks.0.train=100",
    )


def add_experiment_commands(sub: Any) -> None:
    """Register run, validate, sweep, report and demo on the CLI's subparsers."""
    run = sub.add_parser(
        "run",
        help="train a config's task sequence; write results.json, checkpoints and report.html",
        description="Train the task sequence of CONFIG with its first seed (or --seed) into a "
        "run directory. Re-running into it resumes an unfinished run of the same config and "
        "refuses anything else unless --overwrite.",
    )
    _config_args(run)
    run.add_argument("--out", type=Path, help="run directory (default: the config's out)")
    run.add_argument("--seed", type=int, help="seed (default: the config's first seed)")
    run.add_argument("--overwrite", action="store_true", help="replace a finished run in --out")
    run.add_argument(
        "--from-checkpoint",
        type=Path,
        metavar="PATH",
        help="resume the unfinished run in --out from this checkpoint folder "
        "(checkpoints/tasks/step-N or checkpoints/steps/step-N; default: the newest complete one)",
    )

    validate = sub.add_parser(
        "validate",
        help="check a config without training (names, datasets, columns, parameter regexes)",
    )
    _config_args(validate)

    sweep = sub.add_parser(
        "sweep",
        help="run strategy variants over seeds and compare them (table + Pareto plot)",
        description="Run each variant (--strategies, --grid) with each seed, then write "
        "comparison.json and report.html. Finished runs of an earlier sweep are reused.",
    )
    _config_args(sweep)
    sweep.add_argument(
        "--strategies", help="comma-separated variants: naive, strategy names, sweep.variants"
    )
    sweep.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="STRATEGY.PARAM=V1,V2",
        help="one variant per value, e.g. ewc.strength=1e2,1e3,1e4 (repeatable)",
    )
    sweep.add_argument("--seeds", help="a count (3 = seeds 0,1,2) or a list (0,5,7; one seed: 5,)")
    sweep.add_argument("--out", type=Path, help="sweep folder (default: the config's out)")
    sweep.add_argument("--overwrite", action="store_true", help="run every variant afresh")

    report = sub.add_parser(
        "report",
        help="regenerate report.html of run directories; several give one comparison; a "
        "result file saved from Python (RunResult.save) becomes a run directory (--out)",
    )
    report.add_argument(
        "dirs",
        nargs="+",
        type=Path,
        help="run directories, sweep folders, or one result file saved from Python",
    )
    report.add_argument(
        "--out",
        type=Path,
        help="comparison folder (several runs; default: the single folder given), or the run "
        "directory made for a result file",
    )

    demo = sub.add_parser(
        "demo",
        help="MiniLM on TREC -> movie sentiment -> SMS spam: naive vs l2sp, ewc, lora, "
        "progressive (~4 min)",
        description="The shipped demo config (retain sweep demo): a real pretrained model on a "
        "real task sequence, naive fine-tuning against four mitigation strategies.",
    )
    demo.add_argument("overrides", nargs="*", metavar="key=value", help="override demo settings")
    demo.add_argument("--out", type=Path, default=Path("demo-out"), help="output folder")
    demo.add_argument("--seeds", help="a count or a list (default: the config's)")
    demo.add_argument("--overwrite", action="store_true", help="run every variant afresh")


def _warn(config: ExperimentConfig) -> None:
    """Print the config's likely mistakes (:mod:`retain.experiment.config_warnings`), once."""
    from retain.experiment.config_warnings import config_warnings

    if _main():
        for line in config_warnings(config):
            print(f"warning: {line}", file=sys.stderr)


def _rows(comparison: Path) -> list[ComparisonRow]:
    """The rows of ``comparison.json`` (variants in the sweep's order)."""
    from retain.records.comparison import ComparisonRecord

    return ComparisonRecord.load(comparison).rows


def _sweep(args: argparse.Namespace, config_name: str) -> int:
    from retain.experiment.config import load_config
    from retain.experiment.sweep import SweepSpec, parse_seeds, run_sweep
    from retain.report.terminal import comparison_table

    config = load_config(config_name, args.overrides)
    _warn(config)
    names = None
    if getattr(args, "strategies", None):
        names = [n.strip() for n in args.strategies.split(",") if n.strip()]
    spec = SweepSpec(
        config,
        strategies=names,
        grid=getattr(args, "grid", []),
        seeds=parse_seeds(args.seeds) if args.seeds else None,
        out=args.out,
        overwrite=args.overwrite,
        say=_say,
    )
    report = run_sweep(spec)
    if _main():
        print(comparison_table(_rows(report.parent / "comparison.json")))
        print(f"report: {report}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from retain.experiment.config import load_config
    from retain.experiment.runner import RunSpec, run_experiment
    from retain.report.terminal import run_table

    config = load_config(args.config, args.overrides)
    if args.seed is not None:
        config = config.model_copy(update={"seeds": [args.seed]})
    _warn(config)
    spec = RunSpec(
        config,
        out=args.out,
        overwrite=args.overwrite,
        from_checkpoint=args.from_checkpoint,
        say=_say,
    )
    results = run_experiment(spec)
    if _main():
        print(run_table(results.run))
        out = args.out or config.output_dir()
        print(f"report: {out / 'report.html'}")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from retain.experiment.build import validate_experiment
    from retain.experiment.config import load_config

    config = load_config(args.config, args.overrides)
    for line in validate_experiment(config):
        print(f"ok: {line}")
    _warn(config)
    print(f"{args.config}: valid")
    return 0


def _report(args: argparse.Namespace) -> int:
    from retain.errors import RetainError
    from retain.output_dirs import check_output_parent, output_kind, output_lock
    from retain.report.write import (
        find_run_dirs,
        load_run_file,
        write_comparison_report,
        write_report,
        write_run_report,
    )

    if len(args.dirs) == 1 and args.dirs[0].is_file():
        if args.out is None:
            raise RetainError(
                f"{str(args.dirs[0])!r} is a file: name the run directory to make for it with "
                "--out DIR"
            )
        record = load_run_file(args.dirs[0])
        print(f"report: {write_report(record, args.out)}")
        return 0
    runs = find_run_dirs(args.dirs)
    if len(runs) == 1 and args.out is None:
        with output_lock(runs[0]):
            print(f"report: {write_run_report(runs[0])}")
        return 0
    out = args.out or (args.dirs[0] if len(args.dirs) == 1 else None)
    if out is None:
        raise RetainError("several folders give one comparison: name its folder with --out DIR")
    check_output_parent(out)
    if out.is_dir() and any(out.iterdir()) and output_kind(out) not in ("comparison", "sweep"):
        raise RetainError(
            f"--out {str(out)!r} is not empty and not a retain comparison or sweep folder; "
            "retain never writes over files it did not write: choose a new folder"
        )
    with output_lock(out):
        for run in runs:
            with output_lock(run):
                write_run_report(run)
        print(f"report: {write_comparison_report(runs, out)}")
    return 0


def run_command(args: argparse.Namespace) -> int | None:
    """Run an experiment command; None when ``args.command`` is not one of them."""
    if args.command == "run":
        return _run(args)
    if args.command == "validate":
        return _validate(args)
    if args.command == "sweep":
        return _sweep(args, args.config)
    if args.command == "report":
        return _report(args)
    if args.command == "demo":
        args.strategies, args.grid = None, []
        return _sweep(args, "demo")
    return None
