"""Parameter drift: zero for an unchanged model, hand-computed RMS and relative drift, new heads
excluded, LoRA compared through its merged weights."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from retain.diagnostics.drift import effective_parameters, layer_of, parameter_drift
from retain.errors import RetainError
from retain.experiment.layer_drift import LayerDrift
from training_helpers import tiny_classifier


def test_unchanged_model_has_zero_drift_everywhere() -> None:
    model = tiny_classifier()
    report = parameter_drift(model, copy.deepcopy(model))
    assert report.total.rms == 0.0
    assert report.total.relative == 0.0
    assert all(g.rms == 0.0 and g.relative in (0.0, None) for g in report.layers + report.modules)
    assert report.total.numel == sum(p.numel() for p in model.parameters())


def test_hand_computed_rms_and_relative_drift_per_layer_and_total() -> None:
    base = {"layers.0.w": torch.tensor([3.0, 4.0]), "layers.1.w": torch.tensor([1.0, 0.0, 0.0])}
    tuned = {"layers.0.w": torch.tensor([3.0, 5.0]), "layers.1.w": torch.tensor([1.0, 2.0, 2.0])}
    report = parameter_drift(base, tuned)
    first, second = report.layers
    assert (first.name, second.name) == ("layers.0", "layers.1")
    assert first.rms == pytest.approx(math.sqrt(1 / 2))
    assert first.relative == pytest.approx(1 / 5)
    assert second.rms == pytest.approx(math.sqrt(8 / 3))
    assert second.relative == pytest.approx(math.sqrt(8) / 1)
    # The total is over all scalars together, not a mean of the layers' figures.
    assert report.total.rms == pytest.approx(math.sqrt(9 / 5))
    assert report.total.relative == pytest.approx(3 / math.sqrt(26))


def test_new_heads_and_changed_shapes_are_excluded_and_listed() -> None:
    base = {"encoder.w": torch.ones(2), "head.weight": torch.ones(3, 2)}
    tuned = {
        "encoder.w": torch.ones(2) * 2,
        "head.weight": torch.ones(5, 2),
        "heads.trec.weight": torch.ones(6, 2),
    }
    report = parameter_drift(base, tuned)
    assert [g.name for g in report.parameters] == ["encoder.w"]
    assert "new head" in report.excluded["heads.trec.weight"]
    assert "shape changed" in report.excluded["head.weight"]
    both = {**base, "other.w": torch.ones(2)}
    excluded = parameter_drift(both, {**tuned, "other.w": torch.ones(2)}, exclude=r"^encoder")
    assert [g.name for g in excluded.parameters] == ["other.w"]
    assert "matches exclude" in excluded.excluded["encoder.w"]


def test_tied_tensors_of_a_state_dict_count_once() -> None:
    from transformers import LlamaForCausalLM

    from tiny_models import tiny_llama_config

    torch.manual_seed(0)
    base = LlamaForCausalLM(tiny_llama_config(50, tie_word_embeddings=True))
    tuned = copy.deepcopy(base)
    with torch.no_grad():
        tuned.model.embed_tokens.weight.add_(1.0)
    from_models = parameter_drift(base, tuned)
    from_state = parameter_drift(base.state_dict(), tuned.state_dict())
    assert from_state.total == from_models.total
    assert "lm_head.weight" not in {g.name for g in from_state.parameters}


def test_nothing_comparable_and_bad_regex_are_one_line_errors() -> None:
    with pytest.raises(RetainError, match="no parameter of the tuned model matches"):
        parameter_drift({"a": torch.ones(1)}, {"b": torch.ones(1)})
    with pytest.raises(RetainError, match="not a regular expression"):
        parameter_drift({"a": torch.ones(1)}, {"a": torch.ones(1)}, exclude="(")


def lora_model(seed: int = 0) -> nn.Module:
    model = tiny_classifier(seed)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"])
    peft = get_peft_model(model, config)
    torch.manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)  # B starts at 0: give the adapter an update
    return peft


def test_lora_effective_weights_equal_peft_merge_and_plain_names() -> None:
    peft = lora_model()
    effective = effective_parameters(peft)
    merged = copy.deepcopy(peft).merge_and_unload()
    reference = dict(merged.named_parameters())
    assert set(effective) == set(reference)
    for name, value in effective.items():
        torch.testing.assert_close(value, reference[name].detach(), rtol=1e-6, atol=1e-6)


def test_lora_drift_lands_on_the_targeted_modules_only() -> None:
    base = tiny_classifier()
    report = parameter_drift(base, lora_model())
    moved = {g.name for g in report.modules if g.rms > 0}
    assert moved == {
        f"bert.encoder.layer.{i}.attention.self.{m}" for i in range(2) for m in ("query", "value")
    }
    layer_drift = LayerDrift(base)
    values = dict(zip(layer_drift.layers, layer_drift.measure(lora_model()), strict=True))
    assert values["bert.encoder.layer.0"] > 0
    assert values["bert.embeddings.word_embeddings"] == 0


def test_layer_names() -> None:
    assert layer_of("model.layers.11.mlp.up_proj.weight") == "model.layers.11"
    assert layer_of("lm_head.weight") == "lm_head"
