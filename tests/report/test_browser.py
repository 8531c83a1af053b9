"""The reports in a real browser: headless Chromium loads every embedded image and renders the page.

A probe script is injected into a copy of each report (the reports themselves carry no
JavaScript); on ``load`` it writes the number of images, how many decoded (``complete`` and
``naturalWidth > 0``), their natural widths and the number of tables into ``<pre
id="retain-check">``, which ``--dump-dom`` returns. Chromium is required where ``CI`` is set;
elsewhere the test is skipped when it is missing.
"""

from __future__ import annotations

import html
import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from audit_records import audit_data
from retain.experiment.run_dir import write_json
from retain.records.audit import AuditRecord
from retain.records.run import RunRecord
from retain.report.audit_html import write_audit_html
from retain.report.audit_plots import AUDIT_FIGURES
from retain.report.plots import RUN_FIGURES
from retain.report.write import write_run_report

pytestmark = pytest.mark.slow

PROBE = """<pre id="retain-check"></pre><script>
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var loaded = images.filter(function (i) { return i.complete && i.naturalWidth > 0; });
  document.getElementById("retain-check").textContent = JSON.stringify({
    images: images.length,
    loaded: loaded.length,
    widths: images.map(function (i) { return i.naturalWidth; }),
    tables: document.querySelectorAll("table").length
  });
});
</script>"""
CHECK = re.compile(r'<pre id="retain-check">(.*?)</pre>', re.DOTALL)
WINDOW = (1280, 3000)


@pytest.fixture(scope="module")
def chromium() -> str:
    """The Chromium executable; a failure in CI, a skip elsewhere when it is missing."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and Path("/usr/bin/chromium").is_file():
        found = "/usr/bin/chromium"
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; CI must install it (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return found


def _browse(chromium: str, page: Path, tmp: Path, *extra: str) -> str:
    profile = tmp / f"profile-{len(list(tmp.glob('profile-*')))}"
    command = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        f"--user-data-dir={profile}",
        *extra,
        page.resolve().as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _check_in_browser(
    chromium: str, report: Path, tmp: Path, pngs: list[Path], tables: int
) -> None:
    probed = tmp / "probed.html"
    text = report.read_text(encoding="utf-8")
    assert text.count("</body>") == 1
    probed.write_text(text.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    dom = _browse(chromium, probed, tmp, "--virtual-time-budget=10000", "--dump-dom")
    match = CHECK.search(dom)
    assert match is not None, dom[-2000:]
    seen: dict[str, Any] = json.loads(html.unescape(match.group(1)))
    assert seen["images"] == len(pngs)
    assert seen["loaded"] == seen["images"]
    widths = []
    for png in pngs:
        with Image.open(png) as image:
            widths.append(image.size[0])
    assert sorted(seen["widths"]) == sorted(widths)  # the embedded PNGs, decoded at full size
    assert seen["tables"] == tables
    shot = tmp / "report.png"
    _browse(chromium, report, tmp, f"--screenshot={shot}", f"--window-size={WINDOW[0]},{WINDOW[1]}")
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        assert image.size == WINDOW
        assert len(set(image.convert("L").getdata())) > 10  # drawn, not a blank page


def test_run_report_in_chromium(chromium: str, tmp_path: Path, real_results: RunRecord) -> None:
    run = tmp_path / "run"
    run.mkdir()
    write_json(run / "results.json", real_results.to_json())
    report = write_run_report(run)
    pngs = [run / "plots" / f"{name}.png" for name in RUN_FIGURES]
    # Tables: header, summary, score matrix, suite, monitor.
    _check_in_browser(chromium, report, tmp_path, pngs, tables=5)


def test_comparison_report_in_chromium(chromium: str, tmp_path: Path, comparison: Any) -> None:
    pngs = sorted((comparison.out / "plots").glob("*.png"))
    assert len(pngs) == 2
    _check_in_browser(chromium, comparison.report, tmp_path, pngs, tables=1)


def test_audit_report_in_chromium(chromium: str, tmp_path: Path) -> None:
    audit = tmp_path / "audit"
    audit.mkdir()
    report = write_audit_html(audit, AuditRecord.from_json(audit_data()))
    pngs = [audit / "plots" / f"{name}.png" for name in AUDIT_FIGURES]
    # Tables: header, capabilities, probe details.
    _check_in_browser(chromium, report, tmp_path, pngs, tables=3)
