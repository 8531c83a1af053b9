"""lora and peft strategies: what trains, what stays frozen, merging, export, and the errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel
from torch import nn

from retain.data.task import Classification, Task
from retain.errors import RetainError
from retain.strategies.base import build_strategy
from retain.strategies.peft_adapters import LoRA, PeftStrategy
from retain.training.loop import TrainConfig, train_task
from tiny_models import tiny_bert_config


def tiny_classifier(seed: int = 0) -> Any:
    from transformers import BertForSequenceClassification

    torch.manual_seed(seed)
    config = tiny_bert_config(
        vocab_size=100, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=3
    )
    return BertForSequenceClassification(config)


def random_task(name: str, seed: int, n: int = 32, length: int = 8) -> Task:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 100, (n, length), generator=g)
    labels = torch.randint(0, 3, (n,), generator=g)
    return Task(name, [{"input_ids": ids[i], "labels": labels[i]} for i in range(n)])


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        out: torch.Tensor = model(input_ids=ids).logits
    return out


CONFIG = TrainConfig(lr=1e-2, batch_size=8, epochs=1)


def test_lora_trains_only_adapters_and_head_merges_and_exports(tmp_path: Path) -> None:
    strategy = LoRA(r=4)
    model = strategy.prepare(tiny_classifier())
    assert isinstance(model, PeftModel)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    expected = {n for n, _ in model.named_parameters() if ".lora_" in n or ".modules_to_save." in n}
    assert trainable == expected
    # PEFT's BERT default targets query and value: 2 layers x 2 modules x (A, B), plus the head.
    assert len([n for n in trainable if ".lora_" in n]) == 8
    assert {n.rsplit(".", 1)[-1] for n in trainable if "classifier" in n} == {"weight", "bias"}

    before = snapshot(model)
    log = train_task(model, random_task("a", seed=1), strategy, CONFIG)
    assert log.steps == 4
    for name, p in model.named_parameters():
        changed = not torch.equal(p.detach(), before[name])
        assert changed == (name in trainable), name

    ids = random_task("probe", seed=2).batches(32)[0]["input_ids"]
    merged = strategy.merged(model)
    assert not isinstance(merged, PeftModel)
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(logits(merged, ids), logits(model, ids), atol=1e-5, rtol=0)
    assert isinstance(model, PeftModel)  # the training model is untouched
    assert any(".lora_" in n for n, _ in model.named_parameters())
    with model.disable_adapter():
        base_out = logits(model, ids)
    assert (base_out - logits(merged, ids)).abs().max() > 1e-3  # merging changed the weights

    from tiny_models import bert_tokenizer

    folder = strategy.export(model, tmp_path / "export", tokenizer=bert_tokenizer())
    assert (folder / "model.safetensors").is_file()
    from transformers import BertForSequenceClassification

    from retain.assets.models import check_model_folder

    reloaded = BertForSequenceClassification.from_pretrained(folder)
    torch.testing.assert_close(logits(reloaded, ids), logits(model, ids), atol=1e-5, rtol=0)
    check_model_folder(str(folder))  # with its tokenizer, an audit accepts the exported folder


def test_peft_ia3_trains_only_its_scalings() -> None:
    base = tiny_classifier()
    ids = random_task("probe", seed=2).batches(32)[0]["input_ids"]
    start = logits(base, ids)
    strategy = build_strategy("peft", method="ia3")
    assert isinstance(strategy, PeftStrategy)
    model = strategy.prepare(base)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(".ia3_l." in n for n in trainable)
    assert all(".ia3_l." in n or ".modules_to_save." in n for n in trainable)
    torch.testing.assert_close(logits(model, ids), start, atol=1e-6, rtol=0)  # IA3 starts at 1
    before = snapshot(model)
    train_task(model, random_task("a", seed=1), strategy, CONFIG)
    for name, p in model.named_parameters():
        assert torch.equal(p.detach(), before[name]) == (name not in trainable), name


def test_peft_unknown_method_and_config_key() -> None:
    with pytest.raises(RetainError, match="unknown PEFT method 'lorra'; did you mean 'lora'"):
        PeftStrategy("lorra")
    with pytest.raises(RetainError, match=r"no field 'rnk'.*valid: .*\br\b.*lora_alpha"):
        PeftStrategy("lora", {"rnk": 4})
    with pytest.raises(RetainError, match="no field 'task_type'"):
        PeftStrategy("lora", {"task_type": "SEQ_CLS"})  # it is a strategy parameter instead
    with pytest.raises(RetainError, match="lora r must be an integer >= 1"):
        LoRA(r=0)


def test_lora_target_modules_matching_nothing() -> None:
    strategy = LoRA(target_modules=["attention_qkv"])
    with pytest.raises(RetainError, match=r"\['attention_qkv'\] match no module .*query"):
        strategy.prepare(tiny_classifier())


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))


def test_lora_on_plain_mlp_with_explicit_targets(tmp_path: Path) -> None:
    with pytest.raises(
        RetainError, match=r"no default target_modules for Sequential.*include 0, 2"
    ):
        LoRA().prepare(mlp())

    base = mlp()
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(3))
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    start = base(x).detach()
    strategy = LoRA(r=2, target_modules=["0", "2"])
    model = strategy.prepare(base)
    assert torch.equal(model(x).detach(), start)  # B = 0 at init: the adapter adds nothing
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert len(trainable) == 4
    assert all(".lora_" in n for n in trainable)

    task = Task(
        "mlp",
        [{"x": x[i], "labels": y[i]} for i in range(64)],
        objective=Classification(forward=lambda m, batch: m(batch["x"])),
    )
    before = snapshot(model)
    log = train_task(model, task, strategy, TrainConfig(lr=3e-2, batch_size=16, epochs=5))
    assert log.losses[-1] < log.losses[0]
    for name, p in model.named_parameters():
        assert torch.equal(p.detach(), before[name]) == (name not in trainable), name

    merged = strategy.merged(model)
    assert isinstance(merged, nn.Sequential)
    torch.testing.assert_close(merged(x), model(x), atol=1e-5, rtol=0)
    folder = strategy.export(model, tmp_path / "mlp")
    from safetensors.torch import load_model

    fresh = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
    load_model(fresh, str(folder / "model.safetensors"))
    torch.testing.assert_close(fresh(x), model(x), atol=1e-5, rtol=0)
