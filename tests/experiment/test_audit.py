"""``run_audit`` on tiny random causal LMs saved as folders, and on a PEFT adapter folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from retain.errors import RetainError, UnknownNameError
from retain.experiment.audit import AuditConfig, run_audit
from retain.experiment.run_dir import check_output_dir


def test_audit_of_two_folders_writes_results_and_report(
    tiny_lm_dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    base, tuned = tiny_lm_dirs
    out = tmp_path / "audit"
    record = run_audit(AuditConfig(str(base), str(tuned), out=out, size="quick"))
    shown = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert shown == ["plots", "report.html", "report.md", "results.json"]
    saved = json.loads((out / "results.json").read_text())
    assert saved["capabilities"] == json.loads(json.dumps(record.to_json()["capabilities"]))
    by_name = {c["name"]: c for c in saved["capabilities"]}
    ppl = by_name["general_text"]
    assert ppl["higher_is_better"] is False
    assert ppl["change"] == pytest.approx(ppl["after"] - ppl["before"])
    assert ppl["relative_change"] == pytest.approx(ppl["change"] / ppl["before"])
    # A random model perturbed by large noise is a different model: the score must move.
    assert ppl["after"] != ppl["before"]
    assert by_name["sentiment_zero_shot"]["higher_is_better"] is True
    assert saved["verdict"]["text"].startswith(("FORGOT", "RETAINED"))
    report = (out / "report.md").read_text()
    assert saved["verdict"]["text"] in report
    assert "| general_text | perplexity | lower |" in report
    # report.html and its plot were written in the temporary folder too: nothing else is left.
    page = (out / "report.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert "data:image/png;base64," in page
    assert [p.name for p in (out / "plots").iterdir()] == ["interval_forest.png"]
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [
        ".retain-output.json"
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["audit"]  # no .audit.tmp-* or lock
    check_output_dir(out, overwrite=True, kind="audit")  # all retain's: --overwrite replaces it


def test_audit_of_a_model_against_itself_changes_nothing(tiny_lm_dirs: tuple[Path, Path]) -> None:
    base, _ = tiny_lm_dirs
    record = run_audit(AuditConfig(str(base), str(base), size="quick"))
    assert all(c.change == 0 for c in record.capabilities)
    assert record.verdict.degraded is False
    # The same model twice: every paired interval is exactly [0, 0], so the verdict is sure.
    assert record.verdict.outcome == "RETAINED"
    for cap in record.capabilities:
        assert cap.verdict == "WITHIN"
        assert cap.interval is not None
        assert (cap.interval.low, cap.interval.high) == (0.0, 0.0)


def test_audit_loads_a_peft_adapter_on_its_base(
    tiny_lm_dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base, _ = tiny_lm_dirs
    model = AutoModelForCausalLM.from_pretrained(base)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # LoRA B starts at zero; make the adapter actually change the model
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=1.0)
    peft_model.save_pretrained(tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(base)
    record = run_audit(AuditConfig(str(base), str(tmp_path / "adapter"), size="quick"))
    assert record.tuned.origin == "adapter"
    ppl = next(c for c in record.capabilities if c.name == "general_text")
    assert ppl.after != ppl.before


def test_bad_inputs_fail_before_any_work(tiny_lm_dirs: tuple[Path, Path], tmp_path: Path) -> None:
    base, _ = tiny_lm_dirs
    with pytest.raises(UnknownNameError, match="did you mean 'general'"):
        run_audit(AuditConfig(str(base), str(base), suite="genral", out=tmp_path / "o"))
    with pytest.raises(RetainError, match="no such model folder"):
        run_audit(AuditConfig(str(base), "./missing-model", out=tmp_path / "o"))
    with pytest.raises(RetainError, match="tolerance"):
        AuditConfig(str(base), str(base), tolerance=2.0)
    assert not (tmp_path / "o").exists()


def test_device_names_are_checked() -> None:
    from retain.experiment.audit import resolve_device

    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(RetainError, match="unknown device 'gpu0'"):
        AuditConfig("a", "b", device="gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(RetainError, match="CUDA is not available"):
            AuditConfig("a", "b", device="cuda")


def test_a_folder_without_a_model_or_an_unreachable_hub_id_fails_first(
    tiny_lm_dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    base, _ = tiny_lm_dirs
    (tmp_path / "empty").mkdir()
    with pytest.raises(RetainError, match="holds no model"):
        run_audit(AuditConfig(str(base), str(tmp_path / "empty")))
    # Offline (tests set HF_HUB_OFFLINE=1) a hub id cannot resolve: fail before evaluating base.
    with pytest.raises(UnknownNameError, match="as a hub id it could not be loaded"):
        run_audit(AuditConfig(str(base), "someorg/somemodel"))


def test_different_tokenizers_are_flagged(tiny_lm_dirs: tuple[Path, Path], tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base, tuned = tiny_lm_dirs
    other = tmp_path / "other_tokenizer"
    tokenizer = AutoTokenizer.from_pretrained(tuned)
    tokenizer.add_tokens(["<extra_token>"])  # a fine-tune that added a token to its vocabulary
    model = AutoModelForCausalLM.from_pretrained(tuned)
    model.resize_token_embeddings(len(tokenizer))
    model.save_pretrained(other)
    tokenizer.save_pretrained(other)
    record = run_audit(AuditConfig(str(base), str(other), size="quick", out=tmp_path / "o"))
    assert any("different tokenizers" in w for w in record.warnings)
    assert "different tokenizers" in (tmp_path / "o" / "report.md").read_text()
    assert run_audit(AuditConfig(str(base), str(tuned), size="quick")).warnings == []


def _no_scoring(tmp_path: Path, base: Path, tuned: Path) -> list[str]:
    """Run an audit that must fail; the progress lines it printed (none may report scoring)."""
    lines: list[str] = []
    with pytest.raises(RetainError) as caught:
        run_audit(
            AuditConfig(str(base), str(tuned), size="quick", out=tmp_path / "o"), lines.append
        )
    assert not any("evaluating" in line for line in lines), lines
    assert not (tmp_path / "o").exists()
    lines.append(str(caught.value))
    return lines


def test_a_tuned_model_that_fails_to_load_fails_before_the_base_is_scored(
    tiny_lm_dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    from transformers import AutoTokenizer

    base, tuned = tiny_lm_dirs
    grown = tmp_path / "grown_tokenizer"
    shutil.copytree(tuned, grown)
    tokenizer = AutoTokenizer.from_pretrained(grown)
    tokenizer.add_tokens(["<new>"])  # added to the tokenizer, embedding not resized
    tokenizer.save_pretrained(grown)
    lines = _no_scoring(tmp_path, base, grown)
    assert lines[:2] == [f"base: loading {base}", f"tuned: loading {grown}"]
    assert "has 30523 tokens but the model's input embedding has only 30522 rows" in lines[-1]


def test_a_tuned_folder_without_tokenizer_or_with_damaged_weights_fails_before_loading(
    tiny_lm_dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    base, tuned = tiny_lm_dirs
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tuned / name, bare / name)
    lines = _no_scoring(tmp_path, base, bare)
    assert lines == [
        f"model folder '{bare}' has no tokenizer files (tokenizer.json, tokenizer_config.json, "
        "vocab.txt ...); copy the tokenizer files from the base model into it, or save the "
        "tokenizer with save_pretrained"
    ]
    damaged = tmp_path / "damaged"
    shutil.copytree(tuned, damaged)
    weights = damaged / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    lines = _no_scoring(tmp_path, base, damaged)
    assert lines == [
        f"'{weights}' is truncated or corrupt (incomplete metadata, file not fully covered); "
        "re-save or re-download the model"
    ]


def test_the_same_model_twice_is_said_to_be_noise(tiny_lm_dirs: tuple[Path, Path]) -> None:
    base, _ = tiny_lm_dirs
    record = run_audit(AuditConfig(str(base), str(base / "." / ""), size="quick"))
    assert record.warnings == [
        "base and tuned are the same model: every change measured is evaluation noise"
    ]
