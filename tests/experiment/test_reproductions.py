"""Every command of ``docs/reproductions.md`` runs, shortened (a few examples and steps, one
seed), so a broken command fails CI: the page's ``retain sweep CONFIG ...`` lines are read from
the page itself, and each sweep must compare every variant of its config."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from retain.cli import main
from retain.experiment.config import load_config
from retain.experiment.sweep import sweep_variants
from retain.records.comparison import ComparisonRecord

pytestmark = pytest.mark.slow

PAGE = Path(__file__).resolve().parents[2] / "docs" / "reproductions.md"


def _tasks(count: int, train: int, test: int) -> list[str]:
    return [f"tasks.{i}.{key}" for i in range(count) for key in (f"train={train}", f"test={test}")]


#: Per config, the overrides that shorten its runs to seconds.
SHORT: dict[str, list[str]] = {
    "permuted_mnist": [*_tasks(5, 200, 100), "training.epochs=1"],
    "reproductions/l2sp_encoder": [*_tasks(1, 32, 16), "training.max_steps=2"],
    "reproductions/ulmfit_encoder": [
        *_tasks(3, 32, 16),
        "training.max_steps=10",
    ],  # STLR: steps x 0.1 >= 1
    "reproductions/replay_general": [
        *_tasks(1, 16, 8),
        "training.max_steps=2",
        "suite.probes.0.n=2",
        "suite.probes.0.max_length=64",
        "sweep.variants.replay-quarter.0.source.n=32",
        "sweep.variants.replay-half.0.source.n=32",
    ],
    "reproductions/lora_vs_full": [
        *_tasks(1, 16, 8),
        "training.max_steps=2",
        "suite.probes.0.n=2",
        "suite.probes.0.max_length=64",
    ],
}


def page_commands() -> list[list[str]]:
    """The ``retain sweep`` command lines of the page's code blocks, as argument lists."""
    blocks = re.findall(r"```bash\n(.*?)```", PAGE.read_text(encoding="utf-8"), flags=re.S)
    lines = [line.strip() for block in blocks for line in block.splitlines()]
    return [shlex.split(line)[1:] for line in lines if line.startswith("retain sweep ")]


def test_the_page_runs_every_reproduction_config() -> None:
    configs = [args[1] for args in page_commands()]
    assert sorted(configs) == sorted(SHORT)


@pytest.mark.parametrize("args", page_commands(), ids=lambda args: args[1])
def test_a_reproduction_command_runs_shortened(args: list[str], tmp_path: Path) -> None:
    config = args[1]
    kept = list(args)
    if "--seeds" in kept:  # one seed here
        at = kept.index("--seeds")
        del kept[at : at + 2]
    out = tmp_path / "sweep"
    assert main([*kept, *SHORT[config], "--seeds", "0,", "--out", str(out)]) == 0
    compared = ComparisonRecord.load(out / "comparison.json")
    expected = sweep_variants(load_config(config), None, [])
    assert [row.variant for row in compared.rows] == list(expected)
