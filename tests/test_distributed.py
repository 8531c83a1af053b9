"""Only the main process writes: rank detection from the environment (no process group)."""

from __future__ import annotations

from pathlib import Path

import pytest

from retain.distributed import is_main_process
from retain.experiment.audit import AuditConfig, run_audit


def test_rank_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert is_main_process()
    monkeypatch.setenv("RANK", "0")
    assert is_main_process()
    monkeypatch.setenv("RANK", "3")
    assert not is_main_process()


@pytest.mark.parametrize("world", [None, "1", "not-a-number"])
def test_a_stray_rank_without_a_world_is_the_main_process(
    monkeypatch: pytest.MonkeyPatch, world: str | None
) -> None:
    """A ``RANK`` left in a shell must not make a lone process write nothing."""
    monkeypatch.setenv("RANK", "1")
    if world is None:
        monkeypatch.delenv("WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("WORLD_SIZE", world)
    assert is_main_process()


def test_non_main_rank_evaluates_but_writes_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_lm_dirs: tuple[Path, Path]
) -> None:
    base, tuned = tiny_lm_dirs
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    results = run_audit(AuditConfig(str(base), str(tuned), out=tmp_path / "o", size="quick"))
    assert results.capabilities
    assert list(tmp_path.iterdir()) == []


def test_rank_share_counts_every_item_once_with_equal_rounds_on_every_rank(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import retain.distributed as dist_module

    for n in (0, 1, 2, 5, 6, 7):
        items = list(range(n))
        shares = []
        for rank in range(3):
            monkeypatch.setattr(dist_module, "rank_and_world", lambda r=rank: (r, 3))
            shares.append(dist_module.rank_share(items))
        assert {len(s) for s in shares} == {-(-n // 3)}, n  # the same forwards on every rank
        counted = sorted(item for share in shares for item, keep in share if keep)
        assert counted == items, n
