"""What retain's safety checks cost, measured side by side in one run (ratios, not absolute times).

Run: ``HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_safety.py`` (about 1 minute on 2 cores).

1. The divergence guard's gradient check (:func:`retain.training.divergence.gradient_norm`, one
   read of every gradient when ``max_grad_norm`` is off) against a plain AdamW optimizer step of
   the real all-MiniLM-L6-v2 with a 6-way head, batch 32 x 64 tokens; rounds interleaved, medians.
2. Validating a real ``results.json`` against its JSON Schema (:func:`retain.schema.write_record`
   does it before every record it writes) against writing that file atomically.
3. The ownership scan ``--overwrite`` makes (:func:`retain.output_dirs.foreign_entries`) of a
   finished run directory against deleting that directory.
"""

from __future__ import annotations

import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench_strategies import BATCH, minilm, random_task
from retain.atomic_files import write_json
from retain.data.task import Classification, batch_loss
from retain.output_dirs import foreign_entries
from retain.schema import validate_record
from retain.training.divergence import gradient_norm


def bench_gradient_check(rounds: int = 8) -> None:
    model = minilm().train()
    batch = random_task(BATCH).batches(BATCH)[0]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    steps, checks = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        batch_loss(Classification(), model, batch).backward()
        optimizer.step()
        steps.append(time.perf_counter() - start)
        start = time.perf_counter()
        gradient_norm(model, None)
        checks.append(time.perf_counter() - start)
        optimizer.zero_grad(set_to_none=True)
    step, check = statistics.median(steps), statistics.median(checks)
    print(
        f"gradient check: {check * 1e3:.1f} ms against a training step of {step * 1e3:.0f} ms "
        f"({check / step:.2%} of a step; 0 with max_grad_norm, which computes the norm anyway)"
    )


def _finished_run(root: Path) -> Path:
    from retain.experiment.config import config_from_dict
    from retain.experiment.runner import RunSpec, run_experiment

    config = config_from_dict(
        {
            "name": "bench",
            "model": {"name": "mlp", "kind": "mlp", "hidden": [64]},
            "tasks": [
                {"dataset": "digits", "permutation": k, "train": 300, "test": 100} for k in range(5)
            ],
            "training": {"lr": 1e-2, "batch_size": 20, "max_steps": 40},
            "checkpoints": {"every": 10},
            "monitor": {"max_degradation": 0.5, "eval_every": 5},
        }
    )
    out = root / "run"
    run_experiment(RunSpec(config, out=out, progress=False))
    return out


def bench_files(rounds: int = 20) -> None:
    root = Path(tempfile.mkdtemp())
    run = _finished_run(root)
    results = json.loads((run / "results.json").read_text())
    validate_record(results, source="results.json")  # schemas loaded and compiled once
    validations, writes = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        validate_record(results, source="results.json")
        validations.append(time.perf_counter() - start)
        start = time.perf_counter()
        write_json(root / "copy.json", results)
        writes.append(time.perf_counter() - start)
    v, w = statistics.median(validations), statistics.median(writes)
    size = (run / "results.json").stat().st_size
    print(
        f"schema validation of a {size / 1024:.0f} KiB results.json (5 tasks, monitor): "
        f"{v * 1e3:.1f} ms against {w * 1e3:.1f} ms to write it atomically ({v / w:.1f}x)"
    )
    scans, deletes = [], []
    for _ in range(5):
        copy = root / "copy"
        shutil.copytree(run, copy)
        start = time.perf_counter()
        found = foreign_entries(copy, "run")
        scans.append(time.perf_counter() - start)
        start = time.perf_counter()
        shutil.rmtree(copy)
        deletes.append(time.perf_counter() - start)
    assert found == []
    files = sum(1 for p in run.rglob("*") if p.is_file())
    s, d = statistics.median(scans), statistics.median(deletes)
    print(
        f"--overwrite ownership scan of a run folder ({files} files): {s * 1e3:.1f} ms against "
        f"{d * 1e3:.1f} ms to delete it ({s / d:.2f}x)"
    )
    shutil.rmtree(root)


if __name__ == "__main__":
    torch.set_num_threads(2)
    bench_gradient_check()
    bench_files()
