"""The diagnosis report and the run-report diagnostics, from real computations on tiny models.

``diagnosis_record`` is a real :func:`run_diagnose` of a tiny random Llama against a perturbed
copy (every diagnostic computed); ``encoder_record`` compares a tiny BERT with itself (no causal
LM: importance, interference and output are skipped; identical weights: zero drift, CKA 1).
``diagnosis`` and ``encoder_diagnosis`` are the same as ``results.json`` holds them (strict
JSON). The run
with diagnostics is a real :func:`fit_sequence` of an MLP over three permuted-digits tasks with an
:class:`InterferenceTracker`, its ``shift`` taken from the tiny Llama diagnosis.
"""

from __future__ import annotations

import base64
import copy
import io
import json
import re
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from matplotlib.colors import to_hex
from numpy.typing import NDArray
from PIL import Image
from safetensors.torch import load_file

from retain.assets.mlp import MLP
from retain.data.permuted import permuted_image_tasks
from retain.diagnostics.drift import layer_of
from retain.diagnostics.interference import InterferenceTracker
from retain.errors import RetainError
from retain.experiment.diagnose import DiagnoseConfig, run_diagnose
from retain.experiment.run_dir import to_jsonable, write_json
from retain.records.diagnose import DiagnoseRecord
from retain.records.parts import OutputShift
from retain.records.run import RunRecord
from retain.report import diagnose_plots as dp
from retain.report.diagnose_report import write_diagnose_report
from retain.report.diagnose_summary import diagnose_table
from retain.report.diagnostic_run_plots import interference_run_figure
from retain.report.plots import RUN_DIAGNOSTIC_FIGURES, RUN_FIGURES, run_figures
from retain.report.write import write_run_report
from retain.training.loop import TrainConfig
from retain.training.sequence import fit_sequence

NASTY = "<script>alert('x')</script>"
SECTIONS = ("drift", "importance", "interference", "representation", "output")


@pytest.fixture(scope="module")
def diagnosis_record(tiny_lm_dirs: tuple[Path, Path]) -> DiagnoseRecord:
    """Every diagnostic of the tiny Llama pair."""
    base, tuned = tiny_lm_dirs
    config = DiagnoseConfig(
        base=str(base), tuned=str(tuned), data="sms_spam", samples=4, fisher_samples=4,
        batches=2, batch_size=2, max_length=16,
    )  # fmt: skip
    return run_diagnose(config)


@pytest.fixture(scope="module")
def diagnosis(diagnosis_record: DiagnoseRecord) -> dict[str, Any]:
    """Every diagnostic of the tiny Llama pair, as ``results.json`` holds it (strict JSON)."""
    data: dict[str, Any] = json.loads(json.dumps(diagnosis_record.to_json(), allow_nan=False))
    return data


@pytest.fixture(scope="module")
def encoder_record(tiny_bert_dir: Path) -> DiagnoseRecord:
    """A tiny BERT against itself: drift and CKA only, the rest skipped."""
    config = DiagnoseConfig(
        base=str(tiny_bert_dir), tuned=str(tiny_bert_dir), samples=4, batch_size=2, max_length=16
    )
    return run_diagnose(config)


@pytest.fixture(scope="module")
def encoder_diagnosis(encoder_record: DiagnoseRecord) -> dict[str, Any]:
    """The tiny BERT diagnosis as ``results.json`` holds it (strict JSON)."""
    data: dict[str, Any] = json.loads(json.dumps(encoder_record.to_json(), allow_nan=False))
    return data


def _data(values: Any) -> NDArray[np.float64]:
    """An artist's data (typed loosely by matplotlib) as a float array."""
    return np.asarray(values, dtype=np.float64)


def _patches(ax: Any) -> list[Any]:
    return list(ax.patches)


def _heights(ax: Any) -> list[float]:
    return [patch.get_height() for patch in ax.patches]


def _nan(values: list[Any]) -> list[float]:
    return [np.nan if v is None else v for v in values]


def test_drift_bars_are_the_layers_in_model_order(
    diagnosis: dict[str, Any], diagnosis_record: DiagnoseRecord
) -> None:
    fig = dp.drift_figure(diagnosis_record.drift)
    assert fig is not None
    top, bottom = fig.axes
    layers = diagnosis["drift"]["layers"]
    assert [t.get_text() for t in bottom.get_xticklabels()] == [x["name"] for x in layers]
    np.testing.assert_allclose(_heights(top), [x["relative"] for x in layers])
    np.testing.assert_allclose(_heights(bottom), [x["rms"] for x in layers])
    total = diagnosis["drift"]["total"]
    for ax, key in ((top, "relative"), (bottom, "rms")):
        (line,) = ax.lines
        assert _data(line.get_ydata())[0] == pytest.approx(total[key])


def test_importance_layers_grouped_shares_and_overlap(
    diagnosis: dict[str, Any], diagnosis_record: DiagnoseRecord
) -> None:
    fig = dp.importance_layers_figure(diagnosis_record.importance)
    assert fig is not None
    top, bottom = fig.axes
    layers = diagnosis["importance"]["layers"]
    shares = _heights(top)
    assert len(shares) == 2 * len(layers)
    np.testing.assert_allclose(shares[: len(layers)], [x["old_share"] for x in layers])
    np.testing.assert_allclose(shares[len(layers) :], [x["new_share"] for x in layers])
    assert sum(shares[: len(layers)]) == pytest.approx(1.0)  # shares of one total
    np.testing.assert_allclose(_heights(bottom), _nan([x["overlap"] for x in layers]))


def test_importance_scatter_clips_zeros_and_places_quadrant_counts(
    diagnosis: dict[str, Any], diagnosis_record: DiagnoseRecord
) -> None:
    importance = diagnosis["importance"]
    fig = dp.importance_scatter_figure(diagnosis_record.importance)
    assert fig is not None
    ax = fig.axes[0]
    points = _data(ax.collections[0].get_offsets())
    old, new = np.array(importance["scatter"]["old"]), np.array(importance["scatter"]["new"])
    assert len(points) == len(old)
    assert (old <= 0).any(), "the tiny model should have zero Fisher values to clip"
    floor = float(points[:, 0].min())
    np.testing.assert_allclose(points[:, 0], np.where(old > floor, old, floor))
    np.testing.assert_allclose(points[:, 1], np.where(new > floor, new, floor))
    assert any(f"{(old <= 0).sum():,} F_old" in t.get_text() for t in ax.texts)
    t_old, t_new = importance["thresholds"]["old"], importance["thresholds"]["new"]
    lines = {(tuple(_data(line.get_xdata())), tuple(_data(line.get_ydata()))) for line in ax.lines}
    assert ((t_old, t_old), (0, 1)) in lines
    assert ((0, 1), (t_new, t_new)) in lines
    # Each count sits in its own quadrant (right of the F_old threshold = critical for old, ...).
    expected = {
        "old_only": ("critical for old only", True, False),
        "new_only": ("critical for new only", False, True),
        "both": ("critical for both", True, True),
        "neither": ("neither", False, False),
    }
    for key, (label, right, above) in expected.items():
        count = importance["quadrants"][key]
        (text,) = [t for t in ax.texts if t.get_text().startswith(f"{label}\n{count:,} (")]
        x, y = text.get_position()
        assert (x > t_old, y > t_new) == (right, above), key


def test_interference_bars_red_when_negative(
    diagnosis: dict[str, Any], diagnosis_record: DiagnoseRecord
) -> None:
    interference = diagnosis["interference"]
    fig = dp.interference_figure(diagnosis_record.interference)
    assert fig is not None
    left, right = fig.axes
    cosines = list(interference["layers"].values())
    pairs = interference["pair_cosines"]
    np.testing.assert_allclose(_heights(left), cosines)
    np.testing.assert_allclose(_heights(right), pairs)
    for patch, value in zip([*left.patches, *right.patches], cosines + pairs, strict=True):
        assert (to_hex(patch.get_facecolor()) == to_hex("tab:red")) == (value < 0)
    assert f"overall cosine {interference['cosine']:+.3f}" in left.get_title()
    assert f"conflicting pairs {interference['conflicting']:.0%}" in left.get_title()


def test_representation_line_and_range(
    diagnosis: dict[str, Any], diagnosis_record: DiagnoseRecord
) -> None:
    layers = diagnosis["representation"]
    fig = dp.representation_figure(diagnosis_record.representation)
    assert fig is not None
    ax = fig.axes[0]
    (line,) = ax.lines
    np.testing.assert_array_equal(_data(line.get_xdata()), [x["index"] for x in layers])
    np.testing.assert_allclose(_data(line.get_ydata()), [x["cka"] for x in layers])
    low, high = ax.get_ylim()
    assert low <= min(x["cka"] for x in layers)
    assert 1.0 <= high < 1.01


def test_output_histogram_mean_and_token_bars(diagnosis: dict[str, Any]) -> None:
    output = copy.deepcopy(diagnosis["output"])
    output["gained"][0]["token"] = " $x$\n"  # no mathtext, whitespace escaped
    fig = dp.output_kl_figure(OutputShift.model_validate(output))
    assert fig is not None
    hist, tokens = fig.axes
    assert sum(_heights(hist)) == len(output["kl_sample"])
    (mean,) = [line for line in hist.lines if str(line.get_label()).startswith("mean")]
    assert _data(mean.get_xdata())[0] == pytest.approx(output["kl_mean"])
    count = min(dp.TOP_TOKENS, len(output["gained"])) + min(dp.TOP_TOKENS, len(output["lost"]))
    widths = [patch.get_width() for patch in _patches(tokens)]
    assert len(widths) == count
    assert sum(w > 0 for w in widths) == min(dp.TOP_TOKENS, len(output["gained"]))
    labels = [t.get_text() for t in tokens.get_yticklabels()]
    assert labels[0] == "' $x$\\n'"


def test_missing_sections_give_no_figure(
    diagnosis_record: DiagnoseRecord, encoder_record: DiagnoseRecord
) -> None:
    assert list(dp.diagnose_figures(diagnosis_record)) == list(dp.DIAGNOSE_FIGURES)
    empty = diagnosis_record.model_copy(update=dict.fromkeys(SECTIONS))
    assert dp.diagnose_figures(empty) == {}
    assert list(dp.diagnose_figures(encoder_record)) == ["drift", "representation"]
    for builder in (dp.importance_layers_figure, dp.importance_scatter_figure):
        assert builder(encoder_record.importance) is None
    assert dp.interference_figure(encoder_record.interference) is None
    assert dp.output_kl_figure(encoder_record.output) is None
    # Identical models: no drift, the same representation everywhere.
    fig = dp.drift_figure(encoder_record.drift)
    assert fig is not None
    assert max(_heights(fig.axes[0])) == 0.0
    fig = dp.representation_figure(encoder_record.representation)
    assert fig is not None
    np.testing.assert_allclose(_data(fig.axes[0].lines[0].get_ydata()), 1.0, atol=1e-9)


class _Page(HTMLParser):
    """Start tags and raw text (character references left undecoded) of a page."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=False)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def unescaped(self) -> str:
        """Text with a raw ``<`` or ``>`` (escaping forgotten), joined."""
        return "".join(t for t in self.text if "<" in t or ">" in t)


def _png_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        image.verify()
    with Image.open(io.BytesIO(data)) as image:
        width, height = image.size
    return int(width), int(height)


def test_write_diagnose_report(tmp_path: Path, diagnosis: dict[str, Any]) -> None:
    results = copy.deepcopy(diagnosis)
    results["output"]["gained"][0]["token"] = NASTY
    write_diagnose_report(tmp_path, results)
    assert json.loads((tmp_path / "results.json").read_text()) == results
    pngs = {p.stem: p.read_bytes() for p in (tmp_path / "plots").glob("*.png")}
    assert sorted(pngs) == sorted(dp.DIAGNOSE_FIGURES)
    assert all(min(_png_size(data)) >= 300 for data in pngs.values())
    text = (tmp_path / "report.html").read_text(encoding="utf-8")
    page = _Page(text)
    assert page.unescaped() == ""
    images = [attrs["src"] or "" for tag, attrs in page.tags if tag == "img"]
    assert len(images) == len(pngs)
    assert {base64.b64decode(src.split(",", 1)[1]) for src in images} == set(pngs.values())
    assert not [tag for tag, _ in page.tags if tag in ("script", "link", "iframe", "a")]
    assert "http" not in re.sub(r"base64,[A-Za-z0-9+/=]*", "", text).lower()  # no URL
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in text
    assert "Not computed" not in text  # everything was computed
    for layer in results["representation"]:  # the CKA table lists every layer
        assert f"<td>{layer['name']}</td><td>{layer['cka']:.4f}</td>" in text
    assert [p.name for p in tmp_path.rglob(".*")] == []  # atomic writes, no leftovers


def test_skipped_diagnostics_are_listed(
    tmp_path: Path, encoder_diagnosis: dict[str, Any], encoder_record: DiagnoseRecord
) -> None:
    write_diagnose_report(tmp_path, encoder_diagnosis)
    assert sorted(p.stem for p in (tmp_path / "plots").glob("*.png")) == [
        "drift",
        "representation",
    ]
    text = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert text.count("<img") == 2
    section = text[text.index("<h2>Not computed</h2>") :]
    for name, reason in encoder_diagnosis["skipped"].items():
        assert f'<td class="l">{name}</td><td class="l">{reason}</td>' in section
    table = diagnose_table(encoder_record).splitlines()
    assert [line.split(":")[0] for line in table] == [
        "drift", "representation", "importance", "interference", "output",
    ]  # fmt: skip
    assert "not computed: needs a causal language model" in table[-1]
    with pytest.raises(RetainError, match="kind 'diagnose'"):
        write_diagnose_report(tmp_path, {"format": "retain.run/1"})


def test_diagnose_table_names_the_most_drifted_layer(
    tiny_lm_dirs: tuple[Path, Path], diagnosis: dict[str, Any], diagnosis_record: DiagnoseRecord
) -> None:
    # Independent reference: ||Δθ|| / ||θ*|| per layer straight from the saved weights.
    base, tuned = (load_file(str(d / "model.safetensors")) for d in tiny_lm_dirs)
    sums: dict[str, list[float]] = {}
    for name, weight in base.items():
        delta = (tuned[name].double() - weight.double()).pow(2).sum().item()
        total = sums.setdefault(layer_of(name), [0.0, 0.0])
        total[0] += delta
        total[1] += weight.double().pow(2).sum().item()
    worst = max(sums, key=lambda k: sums[k][0] / sums[k][1])
    table = diagnose_table(diagnosis_record)
    (line,) = [x for x in table.splitlines() if x.startswith("drift:")]
    assert f"most drifted layer {worst} ({(sums[worst][0] / sums[worst][1]) ** 0.5:.3g})" in line
    interference = diagnosis["interference"]
    assert f"cosine {interference['cosine']:+.3f}" in table
    assert f"KL mean {diagnosis['output']['kl_mean']:.4g} nats" in table
    assert len(table.splitlines()) == len(SECTIONS)


@pytest.fixture(scope="module")
def tracked_data(diagnosis: dict[str, Any]) -> dict[str, Any]:
    """results.json of a real 3-task MLP run with an interference tracker, plus a ``shift``."""
    splits = permuted_image_tasks("digits", 3, seed=0)
    splits = [replace(s, test=replace(s.test, examples=s.test.examples[:100])) for s in splits]
    tracker = InterferenceTracker(every=2, samples=32, tasks=[s.train for s in splits])
    torch.manual_seed(0)
    config = TrainConfig(lr=5e-2, batch_size=32, max_steps=10, seed=0)
    _, result = fit_sequence(MLP(64, [32], 10), splits, [tracker], config, progress=False)
    results = {
        "format": "retain.run/1",
        "name": "tracked",
        "variant": "naive",
        "seed": 0,
        "model": "mlp-64-32-10",
        "score": {"name": "accuracy", "higher_is_better": True},
        "run": result.to_json(),
        "interference": {
            "every": 2,
            "samples": 32,
            "prior": "earlier tasks",
            "records": tracker.records,
            "summary": tracker.summary(),
        },
        "shift": {
            "data": "general_text",
            "reference": "start",
            "representation": diagnosis["representation"],
            "output": diagnosis["output"],
            "skipped": {},
        },
    }
    data: dict[str, Any] = json.loads(json.dumps(to_jsonable(results)))
    return data


@pytest.fixture(scope="module")
def tracked_run(tracked_data: dict[str, Any]) -> RunRecord:
    """The run of ``tracked_data`` as a record."""
    return RunRecord.from_json(tracked_data)


def test_run_interference_over_global_steps(
    tracked_data: dict[str, Any], tracked_run: RunRecord
) -> None:
    records = tracked_data["interference"]["records"]
    tasks = tracked_data["run"]["tasks"]
    assert {r["task"] for r in records} == set(tasks[1:])  # the first task has no prior
    fig = interference_run_figure(tracked_run)
    assert fig is not None
    ax = fig.axes[0]
    points = _data(ax.collections[0].get_offsets())
    steps = [log["steps"] for log in tracked_data["run"]["logs"]]
    offsets = [sum(steps[:t]) for t in range(len(steps))]
    expected = [offsets[tasks.index(r["task"])] + r["step"] for r in records]
    np.testing.assert_array_equal(points[:, 0], expected)
    np.testing.assert_array_equal(points[:, 0], [r["global_step"] for r in records])
    np.testing.assert_allclose(points[:, 1], _nan([r["cosine"] for r in records]))
    boundaries = {_data(line.get_xdata())[0] for line in ax.lines if line.get_linestyle() == "--"}
    assert set(offsets[1:]) <= boundaries
    summary = tracked_data["interference"]["summary"]
    title = ax.get_title()
    assert f"{summary['conflicting']:.0%} of {summary['measured']} measured steps" in title


def test_run_report_with_and_without_diagnostics(
    tmp_path: Path, tracked_data: dict[str, Any], tracked_run: RunRecord, real_results: RunRecord
) -> None:
    names = list(run_figures(tracked_run))
    assert names[-3:] == list(RUN_DIAGNOSTIC_FIGURES)
    figures = run_figures(tracked_run)
    (line,) = figures["representation"].axes[0].lines
    assert len(_data(line.get_xdata())) == len(tracked_data["shift"]["representation"])
    write_json(tmp_path / "results.json", tracked_data)
    text = write_run_report(tmp_path).read_text(encoding="utf-8")
    assert {p.stem for p in (tmp_path / "plots").glob("*.png")} >= set(RUN_DIAGNOSTIC_FIGURES)
    summary = tracked_data["interference"]["summary"]
    assert f"<td>{summary['measured']}</td>" in text
    assert f"{summary['conflicting']:.1%}" in text
    assert _Page(text).unescaped() == ""
    ids = re.findall(r'<figure id="fig-([a-z_]+)"', text)
    assert ids[-3:] == list(RUN_DIAGNOSTIC_FIGURES)
    # Older runs: the keys absent or None give none of the new figures and still render.
    old = real_results.to_json()
    old.pop("interference", None)
    old.pop("shift", None)
    assert list(run_figures(RunRecord.from_json(old))) == list(RUN_FIGURES)
    old.update(interference=None, shift=None)
    assert list(run_figures(RunRecord.from_json(old))) == list(RUN_FIGURES)
    (tmp_path / "old").mkdir()
    write_json(tmp_path / "old" / "results.json", old)
    assert "Diagnostics" not in write_run_report(tmp_path / "old").read_text(encoding="utf-8")
