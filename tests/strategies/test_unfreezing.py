"""Gradual unfreezing: the schedule, frozen weights staying put, both hosts, and resume."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
import torch
from torch import nn

from retain.data.task import Classification, Task
from retain.errors import RetainError
from retain.strategies.base import build_strategy
from retain.strategies.chain import Chain, chain
from retain.strategies.state import load_strategy_state, save_strategy_state
from retain.strategies.unfreezing import GradualUnfreezing
from retain.training.loop import TrainConfig, make_optimizer, train_task
from tiny_models import tiny_bert_config

EMBED, BLOCK0, BLOCK1, HEAD = "embeddings", "block.0", "block.1", "head"


def _tiny_bert() -> nn.Module:
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    return BertForSequenceClassification(tiny_bert_config(100))


def _task(n: int = 16) -> Task:
    g = torch.Generator().manual_seed(1)
    examples = [
        {
            "input_ids": torch.randint(0, 100, (8,), generator=g),
            "attention_mask": torch.ones(8, dtype=torch.long),
            "labels": torch.randint(0, 2, (), generator=g),
        }
        for _ in range(n)
    ]
    return Task("toy", examples, Classification())


def _part(name: str) -> str:
    """Which part of BERT a parameter belongs to, from its name alone."""
    name = name.removeprefix("base_model.model.")
    if name.startswith("bert.embeddings."):
        return EMBED
    if name.startswith("bert.encoder.layer."):
        return f"block.{name.split('.')[3]}"
    assert name.startswith(("bert.pooler.", "classifier.")), name
    return HEAD


def _trainable_parts(model: nn.Module) -> set[str]:
    """Parts whose parameters all require grad; fails if a part is half frozen."""
    state: dict[str, set[bool]] = {}
    for name, p in model.named_parameters():
        state.setdefault(_part(name), set()).add(p.requires_grad)
    assert all(len(flags) == 1 for flags in state.values()), state
    return {part for part, flags in state.items() if flags == {True}}


def _expected(units: int, every: int) -> set[str]:
    k = units // every  # L = 2: block.1 first, then block.0, then the embeddings
    return set([HEAD, BLOCK1, BLOCK0, EMBED][: min(k, 3) + 1])


@pytest.mark.parametrize("every", [1, 2])
def test_schedule_over_steps(every: int) -> None:
    model = _tiny_bert()
    strategy = GradualUnfreezing(every=every)
    model = strategy.prepare(model)
    assert _trainable_parts(model) == {HEAD}
    strategy.on_task_start(model, _task())
    for step in range(1, 4 * every + 2):
        strategy.on_epoch_end(1, model)  # unit is "step": epochs change nothing
        strategy.on_step(step, model)
        assert _trainable_parts(model) == _expected(step, every), step
    assert strategy.timeline == [(0, 2), (every, 1), (2 * every, 0), (3 * every, -1)]
    assert strategy.unfrozen_depths == [2, 1, 0, -1]
    assert [r["group"] for r in strategy.describe_timeline()] == [HEAD, BLOCK1, BLOCK0, EMBED]


def test_schedule_over_epochs() -> None:
    model = _tiny_bert()
    strategy = build_strategy("gradual_unfreezing", unit="epoch")
    strategy.prepare(model)
    strategy.on_task_start(model, _task())
    for step in range(1, 6):
        strategy.on_step(step, model)
    assert _trainable_parts(model) == {HEAD}
    strategy.on_epoch_end(1, model)
    assert _trainable_parts(model) == {HEAD, BLOCK1}


def test_frozen_blocks_stay_bitwise_unchanged_in_train_task() -> None:
    model = _tiny_bert()
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    strategy = GradualUnfreezing(every=1)
    model = strategy.prepare(model)
    torch.manual_seed(5)
    train_task(model, _task(), strategy, TrainConfig(lr=1e-2, batch_size=8, max_steps=2))
    # step 1 trains the head; block.1 unfreezes after it and trains at step 2; block.0
    # unfreezes after step 2 and never trains; the embeddings are still frozen.
    moved = {_part(n) for n, p in model.named_parameters() if not torch.equal(p, start[n])}
    assert moved == {HEAD, BLOCK1}
    assert _trainable_parts(model) == {HEAD, BLOCK1, BLOCK0}


def test_make_optimizer_holds_the_frozen_parameters() -> None:
    model = _tiny_bert()
    strategy = GradualUnfreezing()
    strategy.prepare(model)
    optimizer = make_optimizer(model, chain(strategy), TrainConfig())
    held = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert held == {id(p) for p in model.parameters()}


def test_schedule_restarts_with_each_task() -> None:
    model = _tiny_bert()
    strategy = GradualUnfreezing()
    strategy.prepare(model)
    config = TrainConfig(lr=1e-3, batch_size=4, max_steps=3)
    train_task(model, _task(), strategy, config)
    assert _trainable_parts(model) == {HEAD, BLOCK1, BLOCK0, EMBED}
    strategy.on_task_start(model, _task())
    assert _trainable_parts(model) == {HEAD}
    assert len(strategy.timelines) == 2
    assert strategy.timeline == [(0, 2)]


def test_never_unfreezes_what_was_frozen_before_prepare() -> None:
    model = _tiny_bert()
    model.get_parameter("bert.embeddings.word_embeddings.weight").requires_grad_(False)
    model.get_submodule("bert.encoder.layer.0.output").requires_grad_(False)
    strategy = GradualUnfreezing()
    strategy.prepare(model)
    strategy.on_task_start(model, _task())
    for step in range(1, 5):
        strategy.on_step(step, model)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {
        "bert.embeddings.word_embeddings.weight",
        "bert.encoder.layer.0.output.dense.weight",
        "bert.encoder.layer.0.output.dense.bias",
        "bert.encoder.layer.0.output.LayerNorm.weight",
        "bert.encoder.layer.0.output.LayerNorm.bias",
    }


def test_peft_model_unfreezes_only_adapters_and_head() -> None:
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=2, target_modules=["query", "value"], task_type="SEQ_CLS")
    model = get_peft_model(_tiny_bert(), lora)
    trainable_before = {n for n, p in model.named_parameters() if p.requires_grad}
    strategy = GradualUnfreezing()
    strategy.prepare(model)
    now = {n for n, p in model.named_parameters() if p.requires_grad}
    assert now == {n for n in trainable_before if "classifier" in n}
    for step in range(1, 4):
        strategy.on_step(step, model)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == trainable_before


def test_wrapping_after_prepare_is_refused() -> None:
    from peft import LoraConfig, get_peft_model

    strategy = GradualUnfreezing()
    model = strategy.prepare(_tiny_bert())
    model = get_peft_model(model, LoraConfig(r=2, target_modules=["query"]))
    with pytest.raises(RetainError, match="list gradual_unfreezing after lora/peft"):
        strategy.on_task_start(model, _task())


def test_state_round_trip_resumes_mid_task(tmp_path: Path) -> None:
    model = _tiny_bert()
    strategy = GradualUnfreezing(every=2)
    strategy.prepare(model)
    strategy.on_task_start(model, _task())
    for step in range(1, 4):  # after 3 steps: head and block.1
        strategy.on_step(step, model)
    path = save_strategy_state(strategy, tmp_path / "gu.safetensors")

    resumed_model = _tiny_bert()
    resumed = GradualUnfreezing(every=2)
    resumed.prepare(resumed_model)
    assert _trainable_parts(resumed_model) == {HEAD}
    load_strategy_state(resumed, path)
    assert resumed.state_dict() == strategy.state_dict()
    resumed.on_task_start(resumed_model, _task())  # the host restarts the interrupted task
    assert _trainable_parts(resumed_model) == _trainable_parts(model) == {HEAD, BLOCK1}
    for step in range(4, 6):
        strategy.on_step(step, model)
        resumed.on_step(step - 3, resumed_model)  # a host may count steps from 1 again
        assert _trainable_parts(resumed_model) == _trainable_parts(model) == _expected(step, 2)
    assert resumed.timeline == strategy.timeline == [(0, 2), (2, 1), (4, 0)]


def test_state_applies_lazily_at_the_next_step(tmp_path: Path) -> None:
    model = _tiny_bert()
    strategy = GradualUnfreezing()
    strategy.prepare(model)
    for step in range(1, 3):
        strategy.on_step(step, model)
    state = strategy.state_dict()
    resumed_model = _tiny_bert()
    resumed = GradualUnfreezing()
    resumed.load_state_dict(state)  # no prepare: the model is reached at the next hook
    resumed.on_step(3, resumed_model)
    assert _trainable_parts(resumed_model) == _expected(3, 1)


def test_state_saved_between_tasks_restarts_the_next_task() -> None:
    model = _tiny_bert()
    strategy = GradualUnfreezing()
    strategy.prepare(model)
    train_task(model, _task(), strategy, TrainConfig(batch_size=4, max_steps=2))
    resumed_model = _tiny_bert()
    resumed = GradualUnfreezing()
    resumed.prepare(resumed_model)
    resumed.load_state_dict(strategy.state_dict())
    resumed.on_task_start(resumed_model, _task())
    assert _trainable_parts(resumed_model) == {HEAD}
    assert len(resumed.timelines) == 2


def test_bad_state_and_parameters() -> None:
    with pytest.raises(RetainError, match="expected"):
        GradualUnfreezing().load_state_dict({"units": 3})
    with pytest.raises(RetainError, match="every must be a whole number >= 1"):
        GradualUnfreezing(every=0)
    with pytest.raises(RetainError, match="unit must be"):
        GradualUnfreezing(unit="batch")  # type: ignore[arg-type]
    with pytest.raises(RetainError, match="start must be 'head'"):
        GradualUnfreezing(start="embeddings")  # type: ignore[arg-type]


def _trainer(model: nn.Module, tmp_path: Path, **kwargs: object) -> object:
    from transformers import Trainer, TrainingArguments

    from retain.training.hf import RetainCallback

    strategy = kwargs.pop("strategy")
    task = _task(8)
    Chain([strategy]).begin_task(model, task)  # type: ignore[list-item]
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=4,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_strategy="no",
    )
    return Trainer(
        model=model,
        args=args,
        train_dataset=list(task.examples),
        callbacks=[RetainCallback(strategy, task)],  # type: ignore[arg-type]
        **kwargs,  # type: ignore[arg-type]
    )


def test_trainer_with_its_default_optimizer_is_refused(tmp_path: Path) -> None:
    strategy = GradualUnfreezing()
    model = strategy.prepare(_tiny_bert())
    trainer = _trainer(model, tmp_path, strategy=strategy)
    with pytest.raises(RetainError, match="needs the optimizer built from the strategies"):
        trainer.train()  # type: ignore[attr-defined]


def test_trainer_with_make_optimizer(tmp_path: Path) -> None:
    strategy = GradualUnfreezing()
    model = strategy.prepare(_tiny_bert())
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = _trainer(
        model,
        tmp_path,
        strategy=strategy,
        optimizers=(make_optimizer(model, strategy, TrainConfig(lr=1e-2)), None),
    )
    trainer.train()  # type: ignore[attr-defined]
    moved = {_part(n) for n, p in model.named_parameters() if not torch.equal(p, start[n])}
    assert moved == {HEAD, BLOCK1}
    assert _trainable_parts(model) == {HEAD, BLOCK1, BLOCK0}
    assert strategy.timeline == [(0, 2), (1, 1), (2, 0)]


def test_state_loaded_before_prepare_is_applied_by_prepare() -> None:
    model = _tiny_bert()
    strategy = GradualUnfreezing()
    strategy.prepare(model)
    strategy.on_task_start(model, _task())
    strategy.on_step(1, model)
    resumed_model = _tiny_bert()
    resumed = GradualUnfreezing()
    resumed.load_state_dict(strategy.state_dict())
    resumed.prepare(resumed_model)
    assert _trainable_parts(resumed_model) == {HEAD, BLOCK1}
    resumed.on_task_start(resumed_model, _task())  # same task resumed: no restart
    resumed.on_step(2, resumed_model)
    assert _trainable_parts(resumed_model) == {HEAD, BLOCK1, BLOCK0}


def test_distributed_keeps_grads_on_and_drops_frozen_gradients(tmp_path: Path) -> None:
    """Under DDP every parameter must require grad when it is wrapped; frozen depths still
    stay bitwise unchanged because after_backward drops their gradients."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        model = _tiny_bert()
        start = {n: p.detach().clone() for n, p in model.named_parameters()}
        strategy = GradualUnfreezing()
        strategy.prepare(model)
        assert all(p.requires_grad for p in model.parameters())
        wrapped = nn.parallel.DistributedDataParallel(model)
        torch.manual_seed(5)
        train_task(wrapped, _task(), strategy, TrainConfig(lr=1e-2, batch_size=8, max_steps=2))
        # Free the DDP reducer while its gloo group is alive: freeing it after
        # destroy_process_group can hang joining the group's threads (seen once in CI).
        del wrapped
        gc.collect()
    finally:
        dist.destroy_process_group()
    moved = {_part(n) for n, p in model.named_parameters() if not torch.equal(p, start[n])}
    assert moved == {HEAD, BLOCK1}
    assert strategy.unfrozen_depths == [2, 1, 0]


def test_combines_with_layerwise_rates_in_train_task() -> None:
    from retain.strategies.layerwise_lr import LayerwiseLR

    model = _tiny_bert()
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    strategies = chain(LayerwiseLR(decay=0.5), GradualUnfreezing())
    model = strategies.prepare(model)
    torch.manual_seed(5)
    train_task(model, _task(), strategies, TrainConfig(lr=1e-2, batch_size=8, max_steps=2))
    moved = {_part(n) for n, p in model.named_parameters() if not torch.equal(p, start[n])}
    assert moved == {HEAD, BLOCK1}
