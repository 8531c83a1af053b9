"""Every user mistake, across every command: exit code 2, exactly one ``retain: error:`` line, no
traceback, and the file tree exactly as it was (nothing written, nothing deleted).

Each row is ``(id, setup, argv, expected)``: ``setup`` names the files the workspace holds
before the command (see ``SETUPS``), ``argv`` runs in that workspace (``{lm}``, ``{lm_tuned}``,
``{bert}`` are tiny real Hugging Face folders), ``expected`` is a piece of the error line. A new
command adds its rows here.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from retain.cli import main
from retain.output_dirs import MARKER

CONFIG = {
    "name": "bad-inputs",
    "model": {"name": "mlp", "kind": "mlp", "hidden": [8]},
    "tasks": [
        {"dataset": "digits", "train": 40, "test": 20},
        {"dataset": "digits", "permutation": 1, "train": 40, "test": 20},
    ],
    "training": {"lr": 1e-2, "batch_size": 20, "max_steps": 2},
}


def _config(ws: Path, **changes: object) -> None:
    (ws / "cfg.yaml").write_text(yaml.safe_dump({**CONFIG, **changes}))


def _user_project(ws: Path) -> None:
    """The user's own folder that happens to hold a config.yaml and a results.json."""
    (ws / "proj").mkdir()
    (ws / "proj" / "config.yaml").write_text("lr: 1\n")
    (ws / "proj" / "results.json").write_text('{"kind": "diagnose", "run": {}}\n')
    (ws / "proj" / "data.txt").write_text("precious\n")


def _csv_task(ws: Path) -> None:
    (ws / "t.csv").write_text("text,label\nhello there,0\ngood bye,1\n" * 10)


SETUPS: dict[str, Callable[[Path], None]] = {
    "cfg": _config,
    "proj": _user_project,
    "file": lambda ws: (ws / "afile").write_text("x\n") and None,
    "link": lambda ws: (ws / "real").mkdir() or (ws / "link").symlink_to(ws / "real"),
    "binary": lambda ws: (ws / "bin.yaml").write_bytes(bytes(range(256))),
    "badyaml": lambda ws: (ws / "bad.yaml").write_text("name: [unclosed\n"),
    "listyaml": lambda ws: (ws / "list.yaml").write_text("- a\n- b\n"),
    "dupyaml": lambda ws: (ws / "dup.yaml").write_text(
        "name: x\ntraining: {lr: 0.1}\nseeds: [0]\ntraining: {lr: 0.5}\n"
    ),
    "csv": _csv_task,
    "dotvariant": lambda ws: _config(ws, sweep={"variants": {"..": []}}),
    "slashvariant": lambda ws: _config(ws, sweep={"variants": {"a/b": []}}),
    "fp16variant": lambda ws: _config(
        ws,
        sweep={"variants": {"naive": []}, "settings": {"naive": ["training.precision=fp16"]}},
    ),
    "empty": lambda ws: (ws / "empty").mkdir(),
    "images": lambda ws: _image_files(ws),
    "nonsense": lambda ws: _fake_run(ws, "nonsense", {"run": {"matrix": "x"}}),
    "badmatrix": lambda ws: _fake_run(ws, "badmatrix", {**_RECORD, "run": {"matrix": "x"}}),
    "truncated": lambda ws: _fake_run(ws, "truncated", None),
    "unfinished": lambda ws: _unfinished_run(ws, "unfinished"),
}


def _image_files(ws: Path) -> None:
    """Image data a user might get wrong: an unknown format, an .npz without the arrays, a
    folder of images without class subfolders, and one of two image sizes."""
    import numpy as np
    from PIL import Image

    (ws / "scan.tiffx").write_bytes(b"II*\0" + bytes(60))
    np.savez(ws / "arrays.npz", a=np.zeros((4, 8)), b=np.zeros(4))
    for name, sizes in (("flat", [(8, 8)] * 4), ("mixed", [(8, 8), (8, 8), (9, 9), (8, 8)])):
        for i, size in enumerate(sizes):
            folder = ws / name if name == "flat" else ws / name / str(i % 2)
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full(size, i, dtype=np.uint8), mode="L").save(folder / f"{i}.png")


def _unfinished_run(ws: Path, name: str) -> None:
    """A run folder retain marked, with its config but no results.json yet."""
    folder = ws / name
    folder.mkdir()
    (folder / MARKER).write_text(json.dumps({"format": "retain.output/1", "kind": "run"}))
    (folder / "config.yaml").write_text("name: x\n")


_RECORD = {
    "format": "retain.run/1",
    "name": "x",
    "variant": "naive",
    "seed": 0,
    "model": "mlp",
    "score": {"name": "accuracy", "higher_is_better": True},
}


def _fake_run(ws: Path, name: str, results: object) -> None:
    """A folder marked as retain's run whose results.json is wrong (or cut short)."""
    folder = ws / name
    folder.mkdir()
    (folder / MARKER).write_text(json.dumps({"format": "retain.output/1", "kind": "run"}))
    text = '{"format": "retain.run/1", "run": {' if results is None else json.dumps(results)
    (folder / "results.json").write_text(text)


def _damaged_model(source: Path, folder: Path) -> None:
    """A copy of a real model folder without its tokenizer (``notok``), with its weights cut
    short (``trunc``) or overwritten by garbage of the same size (``garbage``)."""
    shutil.copytree(source, folder)
    weights = folder / "model.safetensors"
    if folder.name == "notok":
        for path in folder.iterdir():
            if path.name.startswith(("tokenizer", "special_tokens", "vocab")):
                path.unlink()
    elif folder.name == "trunc":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    else:
        weights.write_bytes(bytes(range(256)) * (weights.stat().st_size // 256))


LM_RUN = ["tasks=[{dataset: sms_spam, train: 8, test: 4}]", "model.kind=causal-lm"]
RUN = ["run", "cfg.yaml", "--out", "out"]
SWEEP = ["sweep", "cfg.yaml", "--out", "sw", "--strategies", "naive"]
AUDIT_LM = ["audit", "--base", "{lm}", "--tuned", "{lm_tuned}", "--suite", "general", "--quick"]
FEW_SHOT = "{kind: few_shot, dataset: rotten_tomatoes"
DIAG = ["diagnose", "--base", "{lm}", "--tuned", "{lm_tuned}"]

ROWS: list[tuple[str, tuple[str, ...], list[str], str]] = [
    # --- config files and overrides (run / validate / sweep / demo) ---
    ("run-missing-config", (), ["run", "nope.yaml"], "does not exist"),
    ("run-binary-config", ("binary",), ["run", "bin.yaml"], "not a UTF-8 text file"),
    ("run-bad-yaml", ("badyaml",), ["run", "bad.yaml"], "not valid YAML"),
    ("run-list-yaml", ("listyaml",), ["run", "list.yaml"], "must be a YAML mapping"),
    ("run-unknown-setting", ("cfg",), [*RUN, "training.lrr=1"], "training.lrr: unknown"),
    ("run-unknown-strategy", ("cfg",), [*RUN, "strategies=[{name: ewcc}]"], "did you mean"),
    ("run-unknown-dataset", ("cfg",), [*RUN, "tasks.0.dataset=digitz"], "did you mean 'digits'"),
    ("run-bad-index", ("cfg",), [*RUN, "tasks.7.train=3"], "tasks.7"),
    ("run-seed-negative", ("cfg",), [*RUN, "--seed", "-1"], "seed -1 is out of range"),
    ("run-seed-too-big", ("cfg",), [*RUN, "--seed", str(2**32)], "out of range"),
    ("run-seeds-setting", ("cfg",), [*RUN, "seeds=[-3]"], "seeds.0"),
    ("run-seed-not-int", ("cfg",), [*RUN, "--seed", "x"], "invalid int value"),
    ("run-hidden-zero", ("cfg",), [*RUN, "model.hidden=[0]"], "model.hidden.0"),
    ("run-hidden-negative", ("cfg",), [*RUN, "model.hidden=[-3]"], "model.hidden.0"),
    ("run-device-bogus", ("cfg",), [*RUN, "training.device=bogus"], "unknown device 'bogus'"),
    ("run-device-cuda", ("cfg",), [*RUN, "training.device=cuda:9"], "CUDA"),
    ("run-fp16-on-cpu", ("cfg",), [*RUN, "training.precision=fp16", "training.device=cpu"], "fp16"),
    ("run-precision-bogus", ("cfg",), [*RUN, "training.precision=fp8"], "training.precision"),
    ("run-grad-accum", ("cfg",), [*RUN, "training.grad_accum=64"], "grad_accum"),
    ("run-lr-zero", ("cfg",), [*RUN, "training.lr=0"], "training.lr"),
    ("run-lr-nan", ("cfg",), [*RUN, "training.lr=.nan"], "training.lr"),
    ("run-batch-zero", ("cfg",), [*RUN, "training.batch_size=0"], "training.batch_size"),
    ("run-eval-every", ("cfg",), [*RUN, "monitor={eval_every: -1}"], "monitor.eval_every"),
    ("run-budget-no-suite", ("cfg",), [*RUN, "budget={max_degradation: 0.1}"], "budget"),
    ("run-bad-name", ("cfg",), [*RUN, "name=../x"], "name"),
    ("run-stray-argument", ("cfg",), [*RUN, "training.lr"], "unrecognized arguments"),
    ("run-no-config", (), ["run"], "the following arguments are required"),
    ("run-missing-csv", ("cfg",), [*RUN, "tasks.0.dataset=./nope.csv"], "nope.csv"),
    (
        "run-csv-column",
        ("cfg", "csv"),
        [*RUN, "tasks.0.dataset=./t.csv", "model.kind=mlp"],
        "t.csv",
    ),
    ("run-label-column", ("cfg",), [*RUN, "tasks.0.label_column=missing"], "missing"),
    (
        "run-probe-unknown-kind",
        ("cfg",),
        [*RUN, *LM_RUN, "model.name={lm}", "suite={probes: [{kind: fewshot, dataset: x}]}"],
        "did you mean 'few_shot'",
    ),
    (
        "run-few-shot-k-too-big",
        ("cfg",),
        [*RUN, *LM_RUN, "model.name={lm}", f"suite={{probes: [{FEW_SHOT}, n: 4, k: 9}}]}}"],
        "few-shot k=9 is larger than the train split (4 examples)",
    ),
    (
        "run-few-shot-no-label-column",
        ("cfg", "csv"),
        [
            *RUN,
            *LM_RUN,
            "model.name={lm}",
            "suite={probes: [{kind: few_shot, dataset: ./t.csv, label_column: stars}]}",
        ],
        "stars",
    ),
    ("run-image-format", ("cfg", "images"), [*RUN, "tasks.0.dataset=./scan.tiffx"], "format"),
    ("run-npz-arrays", ("cfg", "images"), [*RUN, "tasks.0.dataset=./arrays.npz"], "no array"),
    ("run-images-no-labels", ("cfg", "images"), [*RUN, "tasks.0.dataset=./flat"], "no labels"),
    ("run-images-sizes", ("cfg", "images"), [*RUN, "tasks.0.dataset=./mixed"], "different sizes"),
    ("run-no-tokenizer", ("cfg", "notok"), [*RUN, *LM_RUN, "model.name=./notok"], "tokenizer"),
    ("run-truncated-weights", ("cfg", "trunc"), [*RUN, *LM_RUN, "model.name=./trunc"], "corrupt"),
    ("run-garbage-weights", ("cfg", "garbage"), [*RUN, *LM_RUN, "model.name=garbage"], "corrupt"),
    (
        "run-diverges",
        ("cfg",),
        [*RUN, "training.lr=1e6", "training.max_steps=12", "training.divergence_factor=2"],
        "diverge",
    ),
    ("run-divergence-factor", ("cfg",), [*RUN, "training.divergence_factor=0.5"], "divergence"),
    ("run-from-checkpoint-new", ("cfg",), [*RUN, "--from-checkpoint", "x"], "unfinished run"),
    ("run-tracker-unknown", ("cfg",), [*RUN, "tracking.report_to=tensorbord"], "'tensorboard'"),
    # --- run output folders ---
    ("run-out-file", ("cfg", "file"), ["run", "cfg.yaml", "--out", "afile"], "is a file"),
    ("run-out-foreign", ("cfg", "proj"), ["run", "cfg.yaml", "--out", "proj"], "not a retain run"),
    (
        "run-out-foreign-overwrite",
        ("cfg", "proj"),
        ["run", "cfg.yaml", "--out", "proj", "--overwrite"],
        "never deleted, even with --overwrite",
    ),
    ("run-out-link", ("cfg", "link"), ["run", "cfg.yaml", "--out", "link"], "symbolic link"),
    (
        "run-out-link-overwrite",
        ("cfg", "link"),
        ["run", "cfg.yaml", "--out", "link", "--overwrite"],
        "symbolic link",
    ),
    ("run-out-cwd", ("cfg",), ["run", "cfg.yaml", "--out", "."], "working directory"),
    ("run-out-proc", ("cfg",), ["run", "cfg.yaml", "--out", "/proc/retain-x"], "/proc"),
    ("run-out-finished", ("cfg", "done"), ["run", "cfg.yaml", "--out", "done"], "finished run"),
    (
        "run-out-finished-user-file",
        ("cfg", "done", "done-notes"),
        ["run", "cfg.yaml", "--out", "done", "--overwrite"],
        "files retain did not write (notes.txt)",
    ),
    (
        "run-out-other-kind",
        ("cfg", "audited"),
        ["run", "cfg.yaml", "--out", "audited", "--overwrite"],
        "not a retain run",
    ),
    # --- validate ---
    ("validate-missing", (), ["validate", "nope.yaml"], "does not exist"),
    ("validate-unknown-setting", ("cfg",), ["validate", "cfg.yaml", "seedz=[1]"], "seedz"),
    (
        "validate-device",
        ("cfg",),
        ["validate", "cfg.yaml", "training.device=gpu"],
        "unknown device",
    ),
    ("validate-fp16", ("cfg",), ["validate", "cfg.yaml", "training.precision=fp16"], "fp16"),
    (
        "validate-bool-for-a-number",
        ("cfg",),
        ["validate", "cfg.yaml", "training.max_steps=true"],
        "expected a number, got true",
    ),
    ("validate-duplicate-key", ("dupyaml",), ["validate", "dup.yaml"], "lines 2 and 4"),
    # --- sweep ---
    ("sweep-unknown-strategy", ("cfg",), [*SWEEP[:-1], "naive,ewcc"], "did you mean 'ewc'"),
    ("sweep-seeds-negative", ("cfg",), [*SWEEP, "--seeds=-1,"], "seed -1 is out of range"),
    ("sweep-seeds-zero", ("cfg",), [*SWEEP, "--seeds", "0"], "count must be >= 1"),
    ("sweep-seeds-text", ("cfg",), [*SWEEP, "--seeds", "a,b"], "give a count"),
    ("sweep-seeds-huge", ("cfg",), [*SWEEP, "--seeds", str(2**40)], "out of range"),
    ("sweep-grid-syntax", ("cfg",), [*SWEEP, "--grid", "ewc=1"], "strategy.parameter"),
    ("sweep-grid-unused", ("cfg",), [*SWEEP, "--grid", "ewc.strength=1,2"], "no variant uses"),
    (
        "sweep-grid-twice",
        ("cfg",),
        [*SWEEP[:-1], "ewc", "--grid", "ewc.strength=1,2", "--grid", "ewc.strength=3"],
        "names ewc.strength twice",
    ),
    (
        "sweep-grid-repeated-value",
        ("cfg",),
        [*SWEEP[:-1], "ewc", "--grid", "ewc.strength=1,1.0"],
        "lists a value twice",
    ),
    ("sweep-variant-dots", ("dotvariant",), ["sweep", "cfg.yaml", "--out", "sw"], "'..'"),
    ("sweep-variant-slash", ("slashvariant",), ["sweep", "cfg.yaml", "--out", "sw"], "'a/b'"),
    ("sweep-variant-fp16", ("fp16variant",), ["sweep", "cfg.yaml", "--out", "sw"], "fp16"),
    (
        "sweep-variant-named-tracking",
        ("cfg",),
        [*SWEEP[:4], "sweep={variants: {tracking: []}}", "tracking.report_to=tensorboard"],
        "variant 'tracking' would share the trackers' folder",
    ),
    ("sweep-out-foreign", ("cfg", "proj"), [*SWEEP[:3], "proj", *SWEEP[4:]], "not a retain sweep"),
    ("sweep-out-file", ("cfg", "file"), [*SWEEP[:3], "afile", *SWEEP[4:]], "is a file"),
    (
        "sweep-out-run-folder",
        ("cfg", "done"),
        [*SWEEP[:3], "done", *SWEEP[4:], "--overwrite"],
        "not a retain sweep",
    ),
    # --- report ---
    ("report-missing", (), ["report", "nowhere"], "does not exist"),
    ("report-empty", ("empty",), ["report", "empty"], "no finished retain run"),
    ("report-user-folder", ("proj",), ["report", "proj"], "no finished retain run"),
    ("report-nonsense", ("nonsense",), ["report", "nonsense"], "is not a run's results (no format"),
    ("report-bad-matrix", ("badmatrix",), ["report", "badmatrix"], "(format retain.run/1"),
    ("report-truncated", ("truncated",), ["report", "truncated"], "truncated"),
    ("report-out-file", ("done", "file"), ["report", "done", "--out", "afile"], "is a file"),
    (
        "report-out-foreign",
        ("done", "proj"),
        ["report", "done", "--out", "proj"],
        "retain never writes over files it did not write",
    ),
    ("report-out-proc", ("done",), ["report", "done", "--out", "/proc/retain-x"], "/proc"),
    ("report-several-no-out", ("done", "done2"), ["report", "done", "done2"], "--out DIR"),
    (
        "report-unfinished-beside-finished",
        ("done", "unfinished"),
        ["report", "unfinished", "done", "--out", "cmp"],
        "'unfinished' is an unfinished run",
    ),
    (
        "run-out-under-a-file",
        ("cfg", "file"),
        ["run", "cfg.yaml", "--out", "afile/x"],
        "which is a file, not a folder",
    ),
    # --- demo ---
    ("demo-unknown-setting", (), ["demo", "training.lrr=1"], "training.lrr"),
    ("demo-seeds", (), ["demo", "--seeds=-1,"], "out of range"),
    ("demo-out-file", ("file",), ["demo", "--out", "afile"], "is a file"),
    ("demo-out-foreign", ("proj",), ["demo", "--out", "proj", "--overwrite"], "not a retain sweep"),
    # --- audit ---
    ("audit-unknown-model", (), ["audit", "--base", "smollm2-13m", "--tuned", "x"], "did you mean"),
    ("audit-missing-folder", (), ["audit", "--base", "{lm}", "--tuned", "./no/such"], "no such"),
    ("audit-unknown-suite", (), [*AUDIT_LM[:5], "--suite", "genral"], "did you mean 'general'"),
    ("audit-tolerance", (), [*AUDIT_LM, "--tolerance", "-1"], "tolerance must be"),
    ("audit-tolerance-percent", (), [*AUDIT_LM, "--tolerance", "5"], "did you mean 0.05"),
    ("audit-out-file", ("file",), [*AUDIT_LM, "--out", "afile"], "is a file"),
    ("audit-out-foreign", ("proj",), [*AUDIT_LM, "--out", "proj", "--overwrite"], "never deleted"),
    ("audit-out-run", ("done",), [*AUDIT_LM, "--out", "done", "--overwrite"], "not an audit"),
    ("audit-out-link", ("link",), [*AUDIT_LM, "--out", "link"], "symbolic link"),
    (
        "audit-encoder-general",
        (),
        ["audit", "--base", "{bert}", "--tuned", "{bert}", "--suite", "general"],
        "is not a causal language model",
    ),
    ("audit-missing-tuned-arg", (), ["audit", "--base", "{lm}"], "required: --tuned"),
    # --- lm-evaluation-harness tasks (retain audit --suite lm-eval:...) ---
    (
        "audit-lm-eval-unknown-task",
        (),
        [*AUDIT_LM[:5], "--suite", "lm-eval:arc_easyy"],
        "did you mean 'arc_easy'",
    ),
    (
        "audit-lm-eval-data-offline",
        (),
        [*AUDIT_LM[:5], "--suite", "lm-eval:arc_easy", "--limit", "5"],
        "cannot be loaded",
    ),
    (
        "audit-lm-eval-limit-0",
        (),
        [*AUDIT_LM[:5], "--suite", "lm-eval:arc_easy", "--limit", "0"],
        "--limit must be at least 1",
    ),
    (
        "audit-limit-without-lm-eval",
        (),
        [*AUDIT_LM, "--limit", "5"],
        "--limit applies to lm-eval tasks",
    ),
    (
        "audit-lm-eval-include-missing",
        (),
        [*AUDIT_LM[:5], "--suite", "lm-eval:x", "--lm-eval-include", "no/tasks"],
        "is not a folder",
    ),
    (
        "audit-lm-eval-empty",
        (),
        [*AUDIT_LM[:5], "--suite", "lm-eval:"],
        "names no task",
    ),
    ("audit-no-tokenizer", ("notok",), [*AUDIT_LM[:3], "--tuned", "notok"], "no tokenizer files"),
    ("audit-truncated", ("trunc",), [*AUDIT_LM[:3], "--tuned", "trunc"], "truncated or corrupt"),
    ("audit-garbage", ("garbage",), [*AUDIT_LM[:3], "--tuned", "garbage"], "truncated or corrupt"),
    # --- diagnose ---
    ("diagnose-only-bogus", (), [*DIAG, "--only", "bogus"], "bogus"),
    (
        "diagnose-unknown-model",
        (),
        ["diagnose", "--base", "smollm2-13m", "--tuned", "x"],
        "did you",
    ),
    ("diagnose-missing-data", (), [*DIAG, "--data", "no_such_data"], "no_such_data"),
    ("diagnose-only-needs-data", (), [*DIAG, "--only", "importance"], "--data"),
    ("diagnose-max-memory-zero", (), [*DIAG, "--max-memory", "0"], "must be > 0 GiB"),
    (
        "diagnose-mixed-kinds",
        (),
        ["diagnose", "--base", "{lm}", "--tuned", "{bert}"],
        "one architecture",
    ),
    ("diagnose-out-foreign", ("proj",), [*DIAG, "--out", "proj", "--overwrite"], "never deleted"),
    ("diagnose-out-file", ("file",), [*DIAG, "--out", "afile"], "is a file"),
    ("diagnose-out-cwd", (), [*DIAG, "--out", ".", "--overwrite"], "working directory"),
    ("diagnose-no-tokenizer", ("notok",), [*DIAG[:3], "--tuned", "notok"], "no tokenizer files"),
    ("diagnose-truncated", ("trunc",), [*DIAG[:3], "--tuned", "trunc"], "truncated or corrupt"),
    # --- the command line itself ---
    ("unknown-command", (), ["trian", "cfg.yaml"], "invalid choice"),
    ("unknown-option", ("cfg",), ["run", "cfg.yaml", "--lr", "3"], "unrecognized arguments"),
]


def _tree(root: Path) -> dict[str, tuple[str, str]]:
    """Every entry below ``root``: kind and content digest (files), target (links), mode."""
    entries: dict[str, tuple[str, str]] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            key = path.relative_to(root).as_posix()
            mode = oct(path.lstat().st_mode)
            if path.is_symlink():
                entries[key] = ("link " + os.readlink(path), mode)
            elif path.is_dir():
                entries[key] = ("dir", mode)
            else:
                entries[key] = (hashlib.sha256(path.read_bytes()).hexdigest(), mode)
    return entries


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real finished run of ``CONFIG`` (a few seconds), copied into workspaces as ``done``."""
    root = tmp_path_factory.mktemp("finished")
    _config(root)
    assert main(["run", str(root / "cfg.yaml"), "--out", str(root / "done")]) == 0
    return root / "done"


@pytest.fixture(scope="module")
def audit_output(tmp_path_factory: pytest.TempPathFactory, tiny_lm_dirs: tuple[Path, Path]) -> Path:
    root = tmp_path_factory.mktemp("audited")
    base, tuned = tiny_lm_dirs
    argv = ["audit", "--base", str(base), "--tuned", str(tuned), "--quick", "--out"]
    assert main([*argv, str(root / "audited")]) == 0
    return root / "audited"


def test_there_are_enough_rows_and_every_command_has_some() -> None:
    assert len(ROWS) >= 60
    assert len({row[0] for row in ROWS}) == len(ROWS)
    commands = {row[2][0] for row in ROWS}
    assert {"run", "validate", "sweep", "report", "demo", "audit", "diagnose"} <= commands


@pytest.mark.parametrize(
    ("setup", "argv", "expected"), [r[1:] for r in ROWS], ids=[r[0] for r in ROWS]
)
def test_a_bad_input_gives_one_line_exit_2_and_changes_nothing(
    setup: tuple[str, ...],
    argv: list[str],
    expected: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    request: pytest.FixtureRequest,
) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    for name in setup:
        if name in ("done", "done2"):
            shutil.copytree(request.getfixturevalue("finished_run"), ws / name, symlinks=True)
        elif name == "done-notes":
            (ws / "done" / "notes.txt").write_text("mine\n")
        elif name == "audited":
            shutil.copytree(request.getfixturevalue("audit_output"), ws / "audited")
        elif name in ("notok", "trunc", "garbage"):
            _damaged_model(request.getfixturevalue("tiny_lm_dirs")[1], ws / name)
        else:
            SETUPS[name](ws)
    places: dict[str, str] = {}
    if any("{lm" in a for a in argv):
        base, tuned = request.getfixturevalue("tiny_lm_dirs")
        places.update(lm=str(base), lm_tuned=str(tuned))
    if any("{bert}" in a for a in argv):
        places["bert"] = str(request.getfixturevalue("tiny_bert_dir"))
    for key, value in places.items():
        argv = [a.replace("{" + key + "}", value) for a in argv]
    monkeypatch.chdir(ws)
    before = _tree(tmp_path)
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own errors
        code = int(exit_.code or 0)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("retain: error:")]
    assert code == 2, err
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert expected in lines[0], lines[0]
    assert _tree(tmp_path) == before
