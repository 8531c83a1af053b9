"""The same user script alone and under ``torchrun`` with 2 CPU processes: the same weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

CHILD = Path(__file__).with_name("launch_child.py")


def launch(out: Path, *prefix: str) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*prefix, str(CHILD), str(out)], env=env, timeout=300, check=False)
    assert done.returncode == 0


def test_torchrun_two_processes_equal_one(tmp_path: Path) -> None:
    launch(tmp_path / "one", sys.executable)
    torchrun = (sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2")
    launch(tmp_path / "two", *torchrun, "--master_port", "29517")
    one = load_file(str(tmp_path / "one" / "weights.safetensors"))
    two = load_file(str(tmp_path / "two" / "weights.safetensors"))
    assert one.keys() == two.keys()
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=0, atol=1e-5, msg=key)
    a = json.loads((tmp_path / "one" / "result.json").read_text())
    b = json.loads((tmp_path / "two" / "result.json").read_text())
    # R agrees too (to one test example of 360, should a borderline prediction flip).
    torch.testing.assert_close(
        torch.tensor(b["matrix"]), torch.tensor(a["matrix"]), rtol=0, atol=1.01 / 360
    )
