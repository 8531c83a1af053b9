"""Write the report of a run directory, and the comparison report of several.

A run directory holds ``results.json`` (format ``retain.run/1``, written by the experiment
runner). :func:`write_run_report` adds ``plots/<figure>.png`` and the self-contained
``report.html``; :func:`write_comparison_report` aggregates several run directories by variant
into ``comparison.json``, ``plots/*.png`` and ``report.html`` with relative links to each run's
report. Every file is written atomically (temporary file in the same folder, then rename), so a
crash never leaves a half-written report.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from matplotlib.figure import Figure
from pydantic import ValidationError

from retain.atomic_files import write_bytes, write_json, write_text
from retain.errors import RetainError
from retain.output_dirs import (
    check_output_parent,
    check_replaceable,
    output_kind,
    output_lock,
    write_marker,
)
from retain.records.comparison import ComparedRun, ComparisonRecord
from retain.records.run import RunRecord, RunResult
from retain.report.comparison_html import comparison_html
from retain.report.comparison_plots import comparison_figures
from retain.report.html import run_report_html
from retain.report.plots import run_figures
from retain.report.summary import aggregate, run_summary
from retain.schema import record_format

__all__ = [
    "COMPARISON_FORMAT",
    "find_run_dirs",
    "load_results",
    "load_run_file",
    "png_bytes",
    "write_comparison_report",
    "write_report",
    "write_run_report",
]

#: ``format`` of ``comparison.json``.
COMPARISON_FORMAT = ComparisonRecord.FORMAT
#: Resolution of the saved PNGs, dots per inch.
DPI = 110


def png_bytes(figure: Figure, dpi: int = DPI) -> bytes:
    """``figure`` rendered as PNG (Agg) at ``dpi`` dots per inch, then cleared to free memory."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    figure.clear()
    return buffer.getvalue()


def load_results(run_dir: Path) -> RunRecord:
    """The :class:`~retain.records.run.RunRecord` in ``run_dir/results.json``, checked against
    its schema; a missing, unreadable, foreign or invalid file is a RetainError."""
    path = Path(run_dir) / "results.json"
    if not path.is_file():
        raise RetainError(
            f"{str(run_dir)!r} has no results.json; run `retain run` first or point at a run "
            "directory"
        )
    return load_run_file(path)


def load_run_file(path: Path) -> RunRecord:
    """A run's ``results.json``, or the file :meth:`RunResult.save` writes (the ``run`` section
    alone: named after the file, ``model`` unknown), as a schema-checked
    :class:`~retain.records.run.RunRecord`; anything else is a RetainError."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RetainError(f"cannot read {str(path)!r} ({err}); re-run `retain run`") from None
    found = record_format(data)
    if found is None and isinstance(data, dict) and {"tasks", "matrix"} <= data.keys():
        try:
            run = RunResult.model_validate(data)
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(k) for k in first["loc"]) or "(top)"
            raise RetainError(
                f"{str(path)!r} is not a valid run result ({where}: {first['msg']}); write it "
                "with RunResult.save"
            ) from None
        return RunRecord.of(run, name=Path(path).stem)
    if found != RunRecord.FORMAT and found not in RunRecord.PREVIOUS:
        what = "no format" if found is None else f"format {found!r}"
        raise RetainError(
            f"{str(path)!r} is not a run's results ({what}, not {RunRecord.FORMAT!r}); point at "
            "a run directory"
        )
    return RunRecord.from_json(data, source=str(path))


def write_report(
    result: RunResult | RunRecord,
    out_dir: str | Path,
    *,
    name: str = "fit_sequence",
    model: str = "model",
    variant: str | None = None,
) -> Path:
    """Make ``out_dir`` a run directory for ``result`` and write its report; returns the path of
    ``report.html``. For notebooks and scripts::

        model, result = retain.fit_sequence(model, splits, retain.chain("ewc"))
        retain.write_report(result, "reports/ewc", name="my-sequence", model="minilm-l6")

    A :class:`~retain.records.run.RunResult` (what ``fit_sequence`` returns) becomes a
    :class:`~retain.records.run.RunRecord` with ``name``, ``model`` and ``variant``
    (:meth:`RunRecord.of`); a RunRecord is written as it is. ``out_dir`` gets retain's run
    marker, ``results.json``, ``plots/*.png`` and ``report.html``, exactly like a run of
    ``retain run``, so ``retain report`` reads it again and compares it with other runs. An
    existing ``out_dir`` must be empty or an earlier run directory holding only retain's files
    (it is then replaced); anything else is refused and left untouched.
    """
    record = (
        result
        if isinstance(result, RunRecord)
        else RunRecord.of(result, name=name, model=model, variant=variant)
    )
    out = Path(out_dir)
    check_output_parent(out)
    with output_lock(out):
        if out.is_dir() and any(out.iterdir()):
            check_replaceable(out, "run")
        out.mkdir(parents=True, exist_ok=True)
        write_marker(out, "run")
        write_json(out / "results.json", record.to_json())
        return write_run_report(out)


def _save_figures(figures: dict[str, Figure], folder: Path) -> dict[str, bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    images = {}
    for name, figure in figures.items():
        images[name] = png_bytes(figure)
        write_bytes(folder / f"{name}.png", images[name])
    figures.clear()
    return images


def write_run_report(run_dir: Path) -> Path:
    """Write ``run_dir/plots/<name>.png`` and ``run_dir/report.html``; returns the report path.

    The figures are :func:`retain.report.plots.run_figures` of ``run_dir/results.json`` at
    :data:`DPI`; the HTML (:func:`retain.report.html.run_report_html`) embeds the same PNGs.
    """
    run_dir = Path(run_dir)
    results = load_results(run_dir)
    images = _save_figures(run_figures(results), run_dir / "plots")
    report = run_dir / "report.html"
    write_text(report, run_report_html(results, images))
    return report


def _relative(target: Path, start: Path) -> str:
    """``target`` relative to folder ``start`` with forward slashes (an href)."""
    return Path(os.path.relpath(target.resolve(), start.resolve())).as_posix()


def _identity(record: RunRecord) -> str:
    """What makes runs seeds of one variant: everything but the seed."""
    run = record.run
    config = {k: v for k, v in run.config.items() if k != "seed"}
    same = [record.name, record.model, run.tasks, run.strategies]
    monitor = None if record.monitor is None else record.monitor.to_json()
    return json.dumps([same, config, monitor, record.budget is None], sort_keys=True, default=str)


def _distinct_variants(dirs: list[Path], results_list: list[RunRecord]) -> list[RunRecord]:
    """Runs that share a variant label but differ in more than the seed (two of your own runs
    of one strategy, say), or repeat a seed, are labelled ``<variant> [<folder>]`` instead, so a
    comparison never averages different experiments as if they were seeds."""
    by_variant: dict[str, list[int]] = {}
    for k, results in enumerate(results_list):
        by_variant.setdefault(results.variant, []).append(k)
    out = list(results_list)
    for variant, members in by_variant.items():
        identities = {_identity(results_list[k]) for k in members}
        seeds = [results_list[k].seed for k in members]
        if len(identities) > 1 or len(set(seeds)) < len(seeds):
            for k in members:
                where = "/".join(dirs[k].parts[-2:])
                out[k] = results_list[k].model_copy(update={"variant": f"{variant} [{where}]"})
    return out


def write_comparison_report(run_dirs: Sequence[Path], out: Path) -> Path:
    """Aggregate ``run_dirs`` by variant into ``out``; returns ``out/report.html``.

    Writes ``out/comparison.json`` (strict JSON: ``{"format", "score", "rows"`` from
    :func:`retain.report.summary.aggregate` ``, "runs": [{"dir", "variant", "seed", "summary"}]}``,
    ``dir`` relative to ``out``), ``out/plots/*.png`` and ``out/report.html``, which links to each
    run's ``report.html`` (to its ``results.json`` when the run has no report yet).
    """
    if not run_dirs:
        raise RetainError("no run directories to compare; pass run directories or a sweep folder")
    dirs = list({Path(d).resolve(): Path(d) for d in run_dirs}.values())  # each run once
    results_list = _distinct_variants(dirs, [load_results(d) for d in dirs])
    rows = aggregate(results_list)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if output_kind(out) is None:
        write_marker(out, "comparison")
    score = results_list[0].score
    links = []
    for d in dirs:
        target = d / "report.html" if (d / "report.html").is_file() else d / "results.json"
        links.append(_relative(target, out))
    runs = [
        ComparedRun(dir=_relative(d, out), variant=r.variant, seed=r.seed, summary=run_summary(r))
        for d, r in zip(dirs, results_list, strict=True)
    ]
    ComparisonRecord(score=score, rows=rows, runs=runs).write(out / "comparison.json")
    figures = comparison_figures(rows, score.name, score.higher_is_better)
    images = _save_figures(figures, out / "plots")
    report = out / "report.html"
    write_text(report, comparison_html(rows, results_list, images, links=links))
    return report


def _is_run(folder: Path) -> bool:
    """A finished run directory: retain's run marker and ``results.json``."""
    return output_kind(folder) == "run" and (folder / "results.json").is_file()


def find_run_dirs(paths: Iterable[Path]) -> list[Path]:
    """Run directories in ``paths``: each is one (retain's run marker and ``results.json``) or
    is searched.

    A folder that is not a run directory is searched recursively for run directories (sorted by
    path); a run directory's own subfolders are not searched. An unfinished run given by name,
    or nothing found, is a RetainError.
    """
    given_paths = [Path(p) for p in paths]
    found: list[Path] = []
    for path in given_paths:
        if not path.exists():
            raise RetainError(f"{str(path)!r} does not exist; pass a run directory or a folder")
        if _is_run(path):
            found.append(path)
            continue
        if output_kind(path) == "run":
            raise RetainError(
                f"{str(path)!r} is an unfinished run (no results.json); finish it with the same "
                "`retain run` command, or leave it out"
            )
        if path.is_dir():
            found.extend(sorted(_search(path)))
    if not found:
        shown = ", ".join(repr(str(p)) for p in given_paths)
        raise RetainError(
            f"no finished retain run directory in {shown}; run `retain run` first "
            "or point at a run directory"
        )
    return list(dict.fromkeys(found))


def _search(folder: Path) -> list[Path]:
    runs = []
    for child in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if _is_run(child):
            runs.append(child)
        else:
            runs.extend(_search(child))
    return runs
