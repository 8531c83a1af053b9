"""A sharded (FSDP2, 2 gloo processes) run killed mid-task resumes to the uninterrupted run's
weights and results, bit for bit; its checkpoints hold no pickle and refuse another world size.

The run (``fsdp_resume_child.py``) trains 2 tasks through ``fit_sequence(shard=shard_model)`` with
EWC (under a forgetting budget that tunes its strength), replay, A-GEM and a forgetting monitor,
and a checkpoint every 3 steps; the killed copy ends
every process abruptly after its 17th optimizer step (the 7th of task 1, which the monitor stops
at its 8th, restoring its best within-budget weights), so the resume starts from the step-16
checkpoint (DCP shards of the weights and AdamW state, per-rank strategy state, monitor
snapshot and RNG) and replays a step.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

CHILD = Path(__file__).with_name("fsdp_resume_child.py")


def run(
    out: Path, processes: int, *extra: str, exit_at: int = 0
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "RETAIN_TEST_EXIT_AT": str(exit_at),
    }
    prefix = [sys.executable]
    if processes > 1:
        port = str(29560 + exit_at % 20 + (5 if extra else 0))
        prefix += ["-m", "torch.distributed.run", "--nproc-per-node", str(processes)]
        prefix += ["--master-port", port]
    command = [*prefix, str(CHILD), str(out), *extra]
    return subprocess.run(
        command, env=env, timeout=600, capture_output=True, text=True, check=False
    )


def comparable(out: Path) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((out / "result.json").read_text())
    for key in ("seconds", "resumed", "resume_notes"):
        result.pop(key)
    return result


def test_a_killed_sharded_run_resumes_bit_identically(tmp_path: Path) -> None:
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    assert run(reference, 2).returncode == 0
    assert run(killed, 2, exit_at=17).returncode != 0
    assert not (killed / "result.json").exists()
    newest = killed / "checkpoints" / "steps" / "step-16"
    manifest = json.loads((newest / "checkpoint.json").read_text())
    assert manifest["sharded"] is True
    assert manifest["world_size"] == 2
    names = sorted(manifest["files"])
    assert "shards/shard-00001-model-00001-of-00001.safetensors" in names
    assert {"strategies.0.safetensors", "strategies.1.safetensors"} <= set(names)
    assert not any(n.endswith((".pt", ".bin", ".pkl", ".distcp", ".metadata")) for n in names)

    other = run(killed, 1, "--resume")  # another world size: refused, nothing changed
    assert other.returncode == 2
    assert "holds FSDP2 shards of 2 process(es); this run has 1 process(es)" in other.stdout
    assert not (killed / "result.json").exists()

    assert run(killed, 2, "--resume").returncode == 0
    resumed = json.loads((killed / "result.json").read_text())["resumed"]
    assert resumed[-1].endswith("steps/step-16")
    logs = json.loads((reference / "result.json").read_text())["logs"]
    assert logs[1]["stopped"]
    assert logs[1]["monitor"]["restored"]
    assert comparable(killed) == comparable(reference)
    a = load_file(str(reference / "weights.safetensors"))
    b = load_file(str(killed / "weights.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
