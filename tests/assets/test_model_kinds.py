"""Models load as the kind they were saved as; a wrong kind or an ill-fitting adapter fails."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from retain.assets.models import check_model_reference, default_kind, load_model
from retain.errors import RetainError
from retain.experiment.audit import AuditConfig, run_audit


def test_registry_and_saved_architecture_give_the_default_kind(
    tiny_bert_dir: Path, tiny_lm_dirs: tuple[Path, Path]
) -> None:
    assert default_kind("minilm-l6") == "encoder"
    assert default_kind("smollm2-135m") == "causal-lm"
    assert default_kind(str(tiny_bert_dir)) == "encoder"
    assert default_kind(str(tiny_lm_dirs[0])) == "causal-lm"
    assert type(load_model(str(tiny_bert_dir)).model).__name__ == "BertModel"


def test_an_encoder_is_refused_where_a_causal_lm_is_needed(tiny_bert_dir: Path) -> None:
    with pytest.raises(RetainError, match=r"is not a causal language model.*--suite encoder"):
        check_model_reference("minilm-l6", kind="causal-lm")
    with pytest.raises(RetainError, match="is not a causal language model"):
        load_model(str(tiny_bert_dir), kind="causal-lm")
    with pytest.raises(RetainError, match="is not a causal language model"):
        run_audit(AuditConfig("minilm-l6", "minilm-l6", suite="general"))


def test_missing_head_weights_are_an_error_not_a_random_layer(tiny_bert_dir: Path) -> None:
    with pytest.raises(RetainError, match=r"lacks \d+ weights a masked-lm model needs"):
        load_model(str(tiny_bert_dir), kind="masked-lm")


def _classifier_adapter(base: Path, out: Path, task_type: str | None) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=3)
    peft = get_peft_model(
        model, LoraConfig(r=4, target_modules=["query", "value"], task_type="SEQ_CLS")
    )
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(std=1.0)
    peft.save_pretrained(out)
    if task_type != "SEQ_CLS":
        config = json.loads((out / "adapter_config.json").read_text())
        config["task_type"] = task_type
        (out / "adapter_config.json").write_text(json.dumps(config))
    return out


def test_a_classifier_adapter_is_applied_on_its_head_and_audited(
    tiny_bert_dir: Path, tmp_path: Path
) -> None:
    adapter = _classifier_adapter(tiny_bert_dir, tmp_path / "lora", "SEQ_CLS")
    results = run_audit(
        AuditConfig(str(tiny_bert_dir), str(adapter), suite="encoder", size="quick")
    )
    assert results.tuned.origin == "adapter"
    assert results.tuned.class_ == "BertForSequenceClassification"
    # The adapter really changed the encoder, so some representation probe must move.
    assert any(c.change != 0 for c in results.capabilities)


def test_an_adapter_whose_weights_fit_nothing_is_refused(
    tiny_bert_dir: Path, tmp_path: Path
) -> None:
    adapter = _classifier_adapter(tiny_bert_dir, tmp_path / "lora", None)
    with pytest.raises(RetainError, match="does not fit base"):
        load_model(str(adapter), kind="encoder")


def test_an_adapter_without_weights_fails_before_work(tiny_bert_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "no_weights"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    with pytest.raises(RetainError, match=r"has no adapter_model\.safetensors"):
        check_model_reference(str(folder))
    (folder / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(RetainError, match="does not record its base model"):
        check_model_reference(str(folder))


def test_an_unknown_kind_suggests_the_right_one() -> None:
    from retain.assets.models import load_model
    from retain.errors import RetainError

    with pytest.raises(RetainError, match="did you mean 'sequence-classification'"):
        load_model("minilm-l6", kind="seq-classification")  # type: ignore[arg-type]
