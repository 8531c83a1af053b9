"""Report figures and files from a real tiny run: what is drawn, written and escaped."""

from __future__ import annotations

import base64
import html
import inspect
import io
import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from retain.errors import RetainError
from retain.experiment.run_dir import write_json
from retain.metrics import average_forgetting, backward_transfer
from retain.records.run import DriftRecord, RunRecord
from retain.report import comparison_plots, plots, write
from retain.report.comparison_plots import comparison_figures
from retain.report.plots import (
    RUN_FIGURES,
    degradation_figure,
    drift_figure,
    run_figures,
    score_matrix_figure,
    task_curves_figure,
)
from retain.report.summary import aggregate, run_summary
from retain.report.write import find_run_dirs, png_bytes, write_run_report

IMG = re.compile(r"<img\b[^>]*\bsrc=\"([^\"]*)\"")


def _offsets(results: RunRecord) -> list[int]:
    steps = [log.steps for log in results.run.logs]
    return [sum(steps[:t]) for t in range(len(steps))]


def test_score_matrix_cells_and_title(real_results: RunRecord) -> None:
    fig = score_matrix_figure(real_results)
    assert fig is not None
    ax = fig.axes[0]
    matrix = real_results.run.matrix
    cells = {
        (round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts
    }
    assert cells == {(t, i): f"{v:.3g}" for t, row in enumerate(matrix) for i, v in enumerate(row)}
    title = ax.get_title()
    assert f"BWT {backward_transfer(matrix):+.3f}" in title
    assert f"forgetting {average_forgetting(matrix):.3f}" in title
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks[0] == real_results.run.tasks[0]  # short names are shown whole


def test_task_curves_start_at_the_baseline(real_results: RunRecord) -> None:
    fig = task_curves_figure(real_results)
    assert fig is not None
    run = real_results.run
    curves = [line for line in fig.axes[0].lines if len(line.get_xdata()) > 1]
    assert len(curves) == len(run.tasks)
    for i, line in enumerate(curves):
        expected = [run.baseline[i]] + [row[i] for row in run.matrix]
        np.testing.assert_allclose(line.get_ydata(), expected)
        np.testing.assert_array_equal(line.get_xdata(), np.arange(len(run.matrix) + 1))


def test_degradation_uses_global_steps_budget_and_stops(real_results: RunRecord) -> None:
    fig = degradation_figure(real_results)
    assert fig is not None
    ax = fig.axes[0]
    logs, offsets = real_results.run.logs, _offsets(real_results)
    worst = [line for line in ax.lines if line.get_label() == "worst capability"]
    worst += [line for line in ax.lines if line.get_color() == "black" and line not in worst]
    monitored = [(t, log.monitor) for t, log in enumerate(logs) if log.monitor is not None]
    assert len(worst) == len(monitored)
    for line, (t, monitor) in zip(worst, monitored, strict=True):
        history = monitor.history
        np.testing.assert_allclose(line.get_xdata(), [offsets[t] + h.step for h in history])
        expected = [h.worst_degradation for h in history]  # NaN where undefined
        np.testing.assert_allclose(line.get_ydata(), expected)
    budgets = [line for line in ax.lines if line.get_label().startswith("budget")]
    assert len(budgets) == 1
    assert budgets[0].get_ydata()[0] == pytest.approx(0.2)
    stopped = [m for _, m in monitored if m.stopped]
    assert stopped, "the fixture's monitor should stop at least one task"
    stop_labels = [c.get_label() for c in ax.collections if c.get_label().startswith("stop")]
    assert len(stop_labels) == len(stopped)
    flat = [label.replace("\n", " ") for label in stop_labels]
    assert all(m.reason in text for m, text in zip(stopped, flat, strict=True))
    boundaries = {line.get_xdata()[0] for line in ax.lines if line.get_linestyle() == "--"}
    assert set(offsets[1:]) <= boundaries


def test_degradation_falls_back_to_the_suite_then_to_nothing(real_results: RunRecord) -> None:
    results = real_results.model_copy(deep=True)
    for log in results.run.logs:
        log.monitor = None
    fig = degradation_figure(results)
    assert fig is not None
    ax = fig.axes[0]
    assert "suite" in ax.get_title()
    assert results.run.suite is not None
    relative = results.run.suite.relative_degradation
    worst = next(line for line in ax.lines if line.get_label() == "worst capability")
    np.testing.assert_allclose(worst.get_ydata(), [max(r.values()) for r in relative])
    results.run.suite = None
    assert degradation_figure(results) is None


def test_absent_sections_give_no_figure(real_results: RunRecord) -> None:
    empty = DriftRecord(layers=[], after=[])
    update = {"budget": None, "layer_lrs": None, "unfreezing": None, "drift": empty}
    bare = real_results.model_copy(deep=True, update=update)
    assert list(run_figures(bare)) == ["score_matrix", "task_curves", "degradation", "loss"]
    assert list(run_figures(real_results)) == list(RUN_FIGURES)


@pytest.mark.parametrize("layers", [6, 30])
def test_drift_heatmap_is_layers_by_tasks(real_results: RunRecord, layers: int) -> None:
    names = [f"model.layers.{k}.mlp" for k in range(layers)]
    after = [[0.01 * (t + 1) * (k + 1) for k in range(layers)] for t in range(3)]
    drift = DriftRecord(layers=names, after=after)
    results = real_results.model_copy(update={"drift": drift})  # real_results itself unchanged
    fig = drift_figure(results)
    assert fig is not None
    ax = fig.axes[0]
    image = ax.images[0].get_array()
    assert image.shape == (layers, 3)
    np.testing.assert_allclose(image, np.array(after).T)
    assert [t.get_text() for t in ax.get_yticklabels()] == names
    # Readable: about a quarter inch of height per layer.
    assert fig.get_figheight() >= 0.25 * layers


def test_figures_render_in_threads_without_pyplot(real_results: RunRecord) -> None:
    builders = [score_matrix_figure, degradation_figure, drift_figure, task_curves_figure]

    def render(k: int) -> bytes:
        fig = builders[k](real_results)
        assert fig is not None
        return png_bytes(fig)

    with ThreadPoolExecutor(2) as pool:
        images = list(pool.map(render, range(len(builders))))
    assert all(_decode(image)[0] >= 400 for image in images)
    pyplot = re.compile(r"import\s+matplotlib\.pyplot|from\s+matplotlib\s+import\s+pyplot")
    for module in (plots, comparison_plots, write):  # no pyplot: no global figure registry
        assert not pyplot.search(inspect.getsource(module))


def _decode(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        pixels = np.asarray(image.convert("L"), dtype=float)
        assert pixels.std() > 5, "blank image"
        return image.size


def test_write_run_report(tmp_path: Path, real_results: RunRecord) -> None:
    write_json(tmp_path / "results.json", real_results.to_json())
    report = write_run_report(tmp_path)
    assert report == tmp_path / "report.html"
    pngs = sorted(p.stem for p in (tmp_path / "plots").glob("*.png"))
    assert pngs == sorted(RUN_FIGURES)
    for name in RUN_FIGURES:
        width, height = _decode((tmp_path / "plots" / f"{name}.png").read_bytes())
        assert width >= 400, name
        assert height >= 250, name
    text = report.read_text(encoding="utf-8")
    sources = IMG.findall(text)
    assert len(sources) == len(RUN_FIGURES)
    embedded = {base64.b64decode(s.split(",", 1)[1]) for s in sources}
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert embedded == {(tmp_path / "plots" / f"{n}.png").read_bytes() for n in RUN_FIGURES}
    for forbidden in ("http://", "https://", "<script", "<link", "url("):
        assert forbidden not in text.lower(), forbidden
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in text
    assert "tiny &lt;b&gt;digits&lt;/b&gt;" in text
    assert "<b>digits</b>" not in text
    for log in real_results.run.logs:
        assert log.monitor is not None
        assert html.escape(log.monitor.reason) in text
    assert text.count("<table") == 5  # header, summary, score matrix, suite, monitor
    leftovers = [*tmp_path.glob(".*"), *(tmp_path / "plots").glob(".*")]
    assert leftovers == []  # atomic writes leave no temporary files


def test_run_report_suite_shows_intervals_and_verdicts(
    tmp_path: Path, real_results: RunRecord
) -> None:
    suite = real_results.run.suite
    assert suite is not None
    assert len(suite.intervals) == len(suite.after) == 3
    for t in range(3):
        interval = suite.interval_after(t, "digits/original")
        assert interval is not None
        assert (interval.examples, interval.test, interval.level) == (150, "mcnemar", 0.95)
        assert interval.low <= suite.degradation_after(t, "digits/original") <= interval.high
    write_json(tmp_path / "results.json", real_results.to_json())
    text = write_run_report(tmp_path).read_text(encoding="utf-8")
    last = suite.interval_after(2, "digits/original")
    assert last is not None
    assert f"[{100 * last.low:+.1f}, {100 * last.high:+.1f}]" in text
    assert "verdict at the budget" in text  # the run has a monitor: judged at its budget
    assert re.search(r"\] (WORSE|WITHIN|UNCLEAR)", text)
    old = real_results.model_copy(deep=True)
    assert old.run.suite is not None
    old.run.suite.intervals = []  # a file written before intervals still renders
    write_json(tmp_path / "results.json", old.to_json())
    assert not re.search(r"\] (WORSE|WITHIN|UNCLEAR)", write_run_report(tmp_path).read_text())


def test_write_run_report_needs_results(tmp_path: Path) -> None:
    with pytest.raises(RetainError, match=r"has no results.json; run `retain run` first"):
        write_run_report(tmp_path)


def test_find_run_dirs(tmp_path: Path, real_results: RunRecord) -> None:
    from retain.output_dirs import write_marker

    for rel in ["sweep/b", "sweep/a", "sweep/nested/c", "single", "sweep/a/inner", "sweep/.a.tmp"]:
        (tmp_path / rel).mkdir(parents=True)
        (tmp_path / rel / "results.json").write_text("{}")
        write_marker(tmp_path / rel, "run")
    # sweep/a/inner: inside a run directory, not searched; sweep/.a.tmp: hidden, skipped.
    (tmp_path / "sweep/mine").mkdir()  # a results.json without retain's marker is not a run
    (tmp_path / "sweep/mine/results.json").write_text("{}")
    found = find_run_dirs([tmp_path / "single", tmp_path / "sweep"])
    expected = ["single", "sweep/a", "sweep/b", "sweep/nested/c"]
    assert found == [tmp_path / rel for rel in expected]
    (tmp_path / "empty").mkdir()
    with pytest.raises(RetainError, match="no finished retain run directory"):
        find_run_dirs([tmp_path / "empty"])
    with pytest.raises(RetainError, match="does not exist"):
        find_run_dirs([tmp_path / "missing"])


def test_comparison_report(comparison: Any) -> None:
    data = json.loads(
        (comparison.out / "comparison.json").read_text(),
        parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"),
    )
    rows = [row.to_json() for row in aggregate(comparison.results)]
    assert data["rows"] == json.loads(json.dumps(rows))
    assert [r["variant"] for r in rows] == ["naive", "replay"]
    assert [r["seeds"] for r in rows] == [[0, 1], [0, 1]]
    # replay forgets less but learns less: a trade-off, both on the front.
    assert rows[1]["forgetting"]["mean"] < rows[0]["forgetting"]["mean"]
    assert rows[1]["new_task_score"]["mean"] < rows[0]["new_task_score"]["mean"]
    assert [r["pareto"] for r in rows] == [True, True]
    summaries = [run_summary(r).to_json() for r in comparison.results]
    assert [r["summary"] for r in data["runs"]] == summaries
    assert sorted(p.name for p in (comparison.out / "plots").iterdir()) == [
        "pareto.png",
        "transfer.png",
    ]
    text = comparison.report.read_text(encoding="utf-8")
    links = re.findall(r'<a href="([^"]+)"', text)
    assert len(links) == 4
    assert not any(link.startswith("/") for link in links)
    targets = [(comparison.out / link).resolve() for link in links]
    assert targets[0] == (comparison.runs[0] / "report.html").resolve()
    assert targets[1:] == [(d / "results.json").resolve() for d in comparison.runs[1:]]
    assert all(target.is_file() for target in targets)
    assert all(s.startswith("data:image/png;base64,") for s in IMG.findall(text))
    assert text.count('<tr class="pareto">') == 2
    low, high = rows[0]["forgetting"]["low"], rows[0]["forgetting"]["high"]
    assert low < rows[0]["forgetting"]["mean"] < high  # two seeds: a t-interval over seeds
    assert f'<span class="ci">[{low:.4g}, {high:.4g}]</span>' in text
    assert "http" not in text


def test_comparison_requires_run_directories(tmp_path: Path) -> None:
    from retain.report.write import write_comparison_report

    with pytest.raises(RetainError, match=r"run `retain run` first or point at a run directory"):
        write_comparison_report([tmp_path], tmp_path / "out")


def test_pareto_figure_marks_the_front(real_results: RunRecord, variation: Any) -> None:
    runs = [
        variation(real_results, "naive", 0, -0.1),
        variation(real_results, "ewc", 0, 0.1),
        variation(real_results, "worse", 0, 0.1),
    ]
    suite = runs[2].run.suite
    assert suite is not None
    suite.relative_degradation[-1] = {"digits/original": 0.9}  # dominated
    rows = aggregate(runs)
    assert [r.pareto for r in rows] == [True, True, False]
    figures = comparison_figures(rows)
    assert set(figures) == {"pareto", "transfer"}
    ax = figures["pareto"].axes[0]
    labels = sorted(t.get_text() for t in ax.texts)
    assert labels == ["ewc (Pareto)", "naive (Pareto)", "worse"]
    front = [
        line for line in ax.lines if line.get_color() == "tab:red" and len(line.get_xdata()) == 2
    ]
    assert len(front) == 1
    xs = sorted(r.new_task_score.mean for r in rows[:2])
    np.testing.assert_allclose(front[0].get_xdata(), xs)
    assert isinstance(figures["transfer"], Figure)


@pytest.mark.parametrize(
    ("settings", "shown", "hidden"),
    [
        ({"epochs": 30, "max_steps": 30}, "max_steps=30", "epochs="),  # max_steps alone
        ({"epochs": 2, "max_steps": 30}, "epochs=2, max_steps=30", None),  # both limit
        ({"epochs": 3, "max_steps": None}, "epochs=3, max_steps=None", None),
    ],
)
def test_the_settings_row_shows_epochs_only_where_they_limit_the_run(
    real_results: RunRecord, settings: dict[str, Any], shown: str, hidden: str | None
) -> None:
    from retain.report.html import run_report_html

    record = real_results.model_copy(deep=True)
    record.run.config.update(settings)
    text = run_report_html(record, {})
    row = re.search(r"<th class=\"l\">training</th><td class=\"l\">([^<]*)</td>", text)
    assert row is not None
    assert shown in row.group(1)
    assert hidden is None or hidden not in row.group(1)
