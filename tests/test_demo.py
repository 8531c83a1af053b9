"""The demo pipeline end to end on the real SmolLM2, shortened to a few steps (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from retain.cli import main
from retain.demo import DemoConfig, finetune_causal_lm
from retain.errors import RetainError


@pytest.mark.slow
def test_demo_fine_tunes_then_audits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    code = main(["demo", "--steps", "3", "--quick", "--fresh", "--out", str(out)])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    ppl = next(c for c in results["capabilities"] if c["name"] == "general_text")
    # Three steps at lr 3e-4 on SMS messages already move general-text perplexity.
    assert ppl["after"] != pytest.approx(ppl["before"], rel=1e-4)
    assert results["base"]["name"] == "smollm2-135m"
    tuned = Path(results["tuned"]["path"])
    assert (tuned / "model.safetensors").exists()
    assert json.loads((tuned / "retain_finetune.json").read_text())["steps"] == 3
    assert results["verdict"]["text"] in capsys.readouterr().out


def test_demo_config_rejects_bad_values() -> None:
    with pytest.raises(RetainError, match="lr must be"):
        DemoConfig(lr=0)
    with pytest.raises(RetainError, match="steps must be at least 1"):
        DemoConfig(steps=0)


def test_finetune_lowers_the_loss_on_its_own_texts(tiny_lm_dirs: tuple[Path, Path]) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base, _ = tiny_lm_dirs
    model = AutoModelForCausalLM.from_pretrained(base)
    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.eos_token = "[SEP]"
    texts = ["call me back later", "see you at noon", "ok lah see you"]
    losses = finetune_causal_lm(
        model, tokenizer, texts, lr=1e-2, steps=30, batch_size=3, max_length=16
    )
    assert len(losses) == 30
    assert losses[-1] < 0.5 * losses[0]
    assert model.training is False


@pytest.mark.slow
def test_full_demo_reproduces_the_readme_figures(tmp_path: Path) -> None:
    """The README's numbers: 40 steps at lr 3e-4 raise general-text perplexity by 20-35 %."""
    from retain.demo import run_demo

    results = run_demo(DemoConfig(out=tmp_path / "demo"))
    by_name = {c["name"]: c for c in results["capabilities"]}
    ppl = by_name["general_text"]
    assert ppl["before"] == pytest.approx(21.44, rel=0.005)
    assert 0.20 <= ppl["relative_change"] <= 0.35
    assert by_name["sentiment_zero_shot"]["before"] == pytest.approx(0.7675, abs=0.02)
    assert results["verdict"]["degraded"] is True
