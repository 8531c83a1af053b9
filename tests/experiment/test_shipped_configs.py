"""Every shipped config (the whole ``configs/`` folder, walked recursively) validates for real:
the model loads, the datasets have their columns, every strategy builds, every regex matches."""

from __future__ import annotations

from pathlib import Path

import pytest

from retain.experiment.build import validate_experiment
from retain.experiment.config import load_config
from retain.experiment.shipped import SHIPPED_DIR, shipped_configs

REPO_CONFIGS = Path(__file__).resolve().parents[2] / "configs"
FILES = sorted(REPO_CONFIGS.rglob("*.yaml"))


def test_the_repo_folder_is_the_shipped_folder() -> None:
    assert REPO_CONFIGS.resolve() == SHIPPED_DIR
    names = {p.relative_to(REPO_CONFIGS).with_suffix("").as_posix() for p in FILES}
    assert names == set(shipped_configs())
    assert {"demo", "minilm_sequence", "smollm2_domain", "permuted_mnist"} <= names
    assert len(FILES) == sum(1 for _ in REPO_CONFIGS.rglob("*.y*ml"))  # no .yml left out


@pytest.mark.slow
@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_shipped_config_validates(path: Path) -> None:
    config = load_config(path)
    lines = validate_experiment(config)
    assert any(line.startswith(f"model {config.model.name}") for line in lines)
    assert sum(line.startswith("task ") for line in lines) == len(config.tasks)


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_shipped_config_has_no_likely_mistake(path: Path) -> None:
    from retain.experiment.config_warnings import config_warnings

    assert config_warnings(load_config(path)) == []
