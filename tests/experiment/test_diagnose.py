"""``run_diagnose`` and ``retain diagnose`` on tiny models, and the headline property on the real
SmolLM2: a fine-tune at lr 3e-4 drifts further and shifts its outputs more than one at 1e-4."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from retain.cli import main
from retain.errors import RetainError
from retain.experiment.diagnose import DiagnoseConfig, run_diagnose

TINY: dict[str, Any] = {
    "samples": 4,
    "fisher_samples": 4,
    "batches": 2,
    "batch_size": 2,
    "max_length": 16,
    "max_tokens": 64,
}


def test_every_diagnostic_of_a_tiny_causal_lm(tiny_lm_dirs: tuple[Path, Path]) -> None:
    base, tuned = tiny_lm_dirs
    results = run_diagnose(
        DiagnoseConfig(base=str(base), tuned=str(tuned), data="sms_spam", **TINY)
    )
    assert results.skipped == {}
    assert results.drift.total.relative > 0
    assert [layer.name for layer in results.drift.layers][:2] == [
        "model.embed_tokens",
        "model.layers.0",
    ]
    assert len(results.representation) == 3  # embeddings + 2 blocks
    assert results.representation[0].cka < 1  # the embeddings were perturbed too
    assert results.output.kl_mean > 0
    quadrants = results.importance.quadrants.to_json()
    assert sum(quadrants.values()) == results.importance.numel
    assert len(results.interference.pair_cosines) == 2
    assert -1 <= results.interference.cosine <= 1


def test_the_same_model_shows_no_change(tiny_lm_dirs: tuple[Path, Path]) -> None:
    base, _ = tiny_lm_dirs
    results = run_diagnose(
        DiagnoseConfig(
            base=str(base), tuned=str(base), only=("drift", "representation", "output"), **TINY
        )
    )
    assert results.drift.total.rms == 0.0
    assert all(layer.cka == pytest.approx(1.0, abs=1e-6) for layer in results.representation)
    assert results.output.kl_mean == pytest.approx(0.0, abs=1e-6)
    assert results.importance is None
    assert results.interference is None


def test_a_tiny_memory_budget_changes_only_the_passes(tiny_lm_dirs: tuple[Path, Path]) -> None:
    base, tuned = tiny_lm_dirs
    kwargs: dict[str, Any] = {
        "base": str(base),
        "tuned": str(tuned),
        "data": "sms_spam",
        "only": ("output", "importance"),
        **TINY,
    }
    default = run_diagnose(DiagnoseConfig(**kwargs))
    small = run_diagnose(DiagnoseConfig(**kwargs, max_memory_gb=1e-9))  # 1 byte: one at a time
    assert small.output is not None
    assert default.output is not None
    assert small.output.kl_sample == pytest.approx(default.output.kl_sample, rel=1e-5, abs=1e-7)
    assert small.importance is not None
    assert default.importance is not None
    assert small.importance.overlap == pytest.approx(default.importance.overlap, rel=1e-5)


def test_an_encoder_gets_drift_and_cka_and_the_rest_is_skipped_with_reasons(
    tiny_bert_dir: Path,
) -> None:
    results = run_diagnose(
        DiagnoseConfig(base=str(tiny_bert_dir), tuned=str(tiny_bert_dir), data="trec", **TINY)
    )
    assert results.drift.total.rms == 0.0
    assert len(results.representation) == 3
    assert set(results.skipped) == {"importance", "interference", "output"}
    assert "causal language model" in results.skipped["output"]


def test_bad_settings_are_one_line_errors() -> None:
    with pytest.raises(RetainError, match="unknown diagnostic 'cka'"):
        DiagnoseConfig(base="a", tuned="b", only=("cka",))
    with pytest.raises(RetainError, match="top must be"):
        DiagnoseConfig(base="a", tuned="b", top=10)
    with pytest.raises(RetainError, match="samples must be >= 1"):
        DiagnoseConfig(base="a", tuned="b", samples=0)
    with pytest.raises(RetainError, match="not a regular expression"):
        DiagnoseConfig(base="a", tuned="b", exclude="([")
    assert DiagnoseConfig(base="a", tuned="b", only="drift").only == ("drift",)
    with pytest.raises(RetainError, match=r"max_memory_gb \(--max-memory\) must be > 0"):
        DiagnoseConfig(base="a", tuned="b", max_memory_gb=0)


def test_what_cannot_run_is_refused_before_any_work(
    tiny_lm_dirs: tuple[Path, Path], tiny_bert_dir: Path, tmp_path: Path
) -> None:
    base, tuned = tiny_lm_dirs
    with pytest.raises(RetainError, match="diagnostic 'importance' cannot run: it needs the new"):
        run_diagnose(DiagnoseConfig(base=str(base), tuned=str(tuned), only=("importance",)))
    with pytest.raises(RetainError, match="'output' cannot run: it needs a causal language"):
        run_diagnose(
            DiagnoseConfig(base=str(tiny_bert_dir), tuned=str(tiny_bert_dir), only=("output",))
        )
    with pytest.raises(RetainError, match=r"is a causal-lm model and tuned .* an encoder model"):
        run_diagnose(DiagnoseConfig(base=str(base), tuned=str(tiny_bert_dir)))
    with pytest.raises(RetainError, match="'mnist' holds image-classification data, not text"):
        run_diagnose(DiagnoseConfig(base=str(base), tuned=str(tuned), general="mnist"))


def test_cli_writes_the_run_directory_and_refuses_bad_input(
    tiny_lm_dirs: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base, tuned = tiny_lm_dirs
    args = ["diagnose", "--base", str(base), "--tuned", str(tuned), "--samples", "4"]
    args += ["--batch-size", "2", "--max-length", "16", "--only", "drift,representation,output"]
    out = tmp_path / "diag"
    assert main([*args, "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["kind"] == "diagnose"
    assert (out / "report.html").is_file()
    assert "drift" in capsys.readouterr().out
    assert main([*args, "--out", str(out)]) == 2  # exists: refused, nothing changed
    assert "already exists" in capsys.readouterr().err
    assert main(["diagnose", "--base", str(base), "--tuned", str(tmp_path / "nope")]) == 2
    assert "no such model folder" in capsys.readouterr().err
    assert main([*args, "--only", "drift,cka", "--out", str(tmp_path / "x")]) == 2
    assert "unknown diagnostic 'cka'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    assert main([*args, "--data", "no_such_data", "--only", "importance"]) == 2
    capsys.readouterr()
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("months of work")
    assert main([*args, "--out", str(precious), "--overwrite"]) == 2
    assert "never deleted, even with --overwrite" in capsys.readouterr().err
    assert (precious / "thesis.tex").read_text() == "months of work"
    assert main([*args, "--out", str(out), "--overwrite"]) == 0  # an earlier diagnose: replaced
    monkeypatch.chdir(out)
    assert main([*args, "--out", ".", "--overwrite"]) == 2
    assert "working directory" in capsys.readouterr().err


def fine_tune(lr: float, out: Path) -> None:
    from retain.assets.datasets import load_dataset
    from retain.assets.models import load_model
    from retain.data.text import causal_lm_task
    from retain.training.loop import TrainConfig, train_task

    torch.manual_seed(0)
    loaded = load_model("smollm2-135m")
    texts = load_dataset("sms_spam")["train"]["text"][:200]
    task = causal_lm_task("sms", loaded.tokenizer, texts, block_size=48)
    config = TrainConfig(lr=lr, batch_size=8, max_steps=4, epochs=4, seed=0)
    train_task(loaded.model, task, None, config, progress=False)
    loaded.model.save_pretrained(out)
    loaded.tokenizer.save_pretrained(out)


@pytest.mark.slow
def test_smollm2_at_a_larger_learning_rate_drifts_and_shifts_more(tmp_path: Path) -> None:
    figures = {}
    for lr in (1e-4, 3e-4):
        folder = tmp_path / f"lr{lr:g}"
        fine_tune(lr, folder)
        results = run_diagnose(
            DiagnoseConfig(
                base="smollm2-135m",
                tuned=str(folder),
                only=("drift", "output"),
                samples=8,
                batch_size=4,
                max_length=64,
            )
        )
        figures[lr] = (results.drift.total.relative, results.output.kl_mean)
    print(f"relative drift, KL (nats): {figures}")
    (drift_low, kl_low), (drift_high, kl_high) = figures[1e-4], figures[3e-4]
    assert 0 < drift_low < drift_high
    assert 0 < kl_low < kl_high


def test_a_local_file_with_its_own_text_column_is_the_new_task(
    tiny_lm_dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    base, tuned = tiny_lm_dirs
    data = tmp_path / "notes.csv"
    rows = [f"note {i}: the meeting moved to room {i % 7} at {i % 12} pm" for i in range(40)]
    data.write_text("body\n" + "\n".join(rows) + "\n")
    settings = {**TINY, "only": ("importance",), "data": str(data), "text_column": "body"}
    results = run_diagnose(DiagnoseConfig(base=str(base), tuned=str(tuned), **settings))
    assert results.importance.numel > 0
    with pytest.raises(RetainError, match="its columns are: body \\(pass --text-column naming"):
        run_diagnose(
            DiagnoseConfig(base=str(base), tuned=str(tuned), **{**settings, "text_column": None})
        )
    with pytest.raises(RetainError, match="no column 'x'"):
        run_diagnose(
            DiagnoseConfig(base=str(base), tuned=str(tuned), **{**settings, "text_column": "x"})
        )
