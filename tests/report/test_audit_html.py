"""The audit's ``report.html``: every capability's cells, escaping, the embedded forest plot, the
interval figures equal to the record's, and a record written before intervals."""

from __future__ import annotations

import base64
import copy
import io
import re
from pathlib import Path

import pytest
from PIL import Image

from audit_records import audit_data
from retain.records.audit import AuditRecord
from retain.report.audit_html import audit_html, write_audit_html
from retain.report.audit_plots import audit_figures, interval_forest_figure
from retain.report.write import png_bytes

PNG = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


@pytest.fixture(scope="module")
def record() -> AuditRecord:
    return AuditRecord.from_json(audit_data())


@pytest.fixture(scope="module")
def page(record: AuditRecord) -> str:
    images = {name: png_bytes(fig) for name, fig in audit_figures(record).items()}
    return audit_html(record, images)


def _rows(page: str) -> list[list[str]]:
    """The cells (inner HTML) of each body row of the capability table (the first with
    ``paired test``)."""
    table = next(t for t in page.split("<table>") if "<th>paired test</th>" in t)
    table = table.split("</table>")[0]
    body = table.split("<tbody>")[1]
    return [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in body.split("</tr>") if "<td" in row]


def test_every_capability_has_its_row(page: str) -> None:
    rows = _rows(page)
    assert [r[0] for r in rows] == [
        "general_text",
        "sentiment_zero_shot",
        "&lt;script&gt;alert(1)&lt;/script&gt;",
        "continuation",
    ]
    assert rows[0] == [
        "general_text",
        "perplexity",
        "lower",
        "10",
        "12",
        "+2",
        "+20.0%",
        "+20.0% [+15.0, +25.0]",
        "WORSE",
        "permutation",
        "0.001",
        "64",
    ]
    assert rows[1][8:] == ["WITHIN", "mcnemar", "0.42", "400"]
    assert rows[2][8:] == ["UNCLEAR", "mcnemar", "0.0734", "300"]
    assert rows[3][7:] == ["+0.5%", "WITHIN", "none", "n/a", "n/a"]  # no interval: point only
    assert "about 1,200 examples" in page


def test_the_header_and_verdict_are_shown(page: str) -> None:
    verdict = re.search(r'<p id="verdict" style="([^"]*)">(.*?)</p>', page)
    assert verdict is not None
    assert "#b00020" in verdict.group(1)  # FORGOT in red
    assert verdict.group(2) == "FORGOT: 1 of 4 capabilities degraded by more than 2% &lt;b&gt;"
    for text in (
        "general (quick): text &amp; zero-shot probes",
        "smollm2 (LlamaForCausalLM, 134,515,008 parameters, registry, /cache/models/smollm2-135m)",
        "tuned&lt;script&gt;",
        "2.0% of the starting score",
        "2025-01-02T03:04:05+00:00",
        "0.1.0",
    ):
        assert text in page


def test_everything_from_the_record_is_escaped(page: str) -> None:
    assert "<script" not in page.lower()
    assert "alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<b>Warning:</b> a warning with &lt;script&gt;" in page
    assert "http://" not in page
    assert "https://" not in page
    assert page.startswith("<!DOCTYPE html>")


def test_the_forest_plot_is_an_embedded_png(page: str, record: AuditRecord) -> None:
    found = PNG.findall(page)
    assert len(found) == 1
    with Image.open(io.BytesIO(base64.b64decode(found[0]))) as image:
        image.load()
        assert image.format == "PNG"
        assert image.size[0] >= 400
    assert 'id="fig-interval_forest"' in page
    figure = interval_forest_figure(record)
    assert figure is not None
    (ax,) = figure.axes
    assert len(ax.containers) == 3  # one error bar per capability with an interval


def test_the_interval_numbers_are_the_records(page: str, record: AuditRecord) -> None:
    rows = _rows(page)
    for cap, row in zip(record.capabilities, rows, strict=True):
        if cap.interval is None:
            assert "[" not in row[7]
            continue
        low, high = (float(v) for v in re.findall(r"[+-]\d+\.\d", row[7].split("[")[1]))
        assert low == pytest.approx(100 * cap.interval.low, abs=0.05)
        assert high == pytest.approx(100 * cap.interval.high, abs=0.05)
        precise = f"[{cap.interval.low:+.2%}, {cap.interval.high:+.2%}]"
        assert precise in page  # the probe details, to 0.01 %


def test_a_record_written_before_intervals_renders() -> None:
    data = copy.deepcopy(audit_data())
    for cap in data["capabilities"]:
        cap["verdict"] = cap["interval"] = cap["examples_needed"] = None
    data["verdict"]["outcome"] = None
    record = AuditRecord.from_json(data)
    images = {name: png_bytes(fig) for name, fig in audit_figures(record).items()}
    page = audit_html(record, images)
    rows = _rows(page)
    assert [r[8] for r in rows] == ["WORSE", "ok", "ok", "ok"]
    assert all(r[9:] == ["none", "n/a", "n/a"] for r in rows)
    assert "#b00020" in page.split('id="verdict"')[1].split(">")[0]  # degraded: FORGOT colour
    assert len(PNG.findall(page)) == 1


def test_write_audit_html_saves_the_plot_and_embeds_the_same_png(
    record: AuditRecord, tmp_path: Path
) -> None:
    report = write_audit_html(tmp_path, record)
    assert report == tmp_path / "report.html"
    png = (tmp_path / "plots" / "interval_forest.png").read_bytes()
    (embedded,) = PNG.findall(report.read_text(encoding="utf-8"))
    assert base64.b64decode(embedded) == png
    assert sorted(p.name for p in tmp_path.rglob("*")) == [
        "interval_forest.png",
        "plots",
        "report.html",
    ]
