"""Checkpoints: a resumed run equals the uninterrupted one bit for bit; ties, atomicity, errors,
``keep``, the RNG round trip, and two gloo ranks with one RNG file each."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors import safe_open
from torch import nn
from torch.optim import Optimizer
from transformers import BertForSequenceClassification, LlamaForCausalLM

from retain.data.task import Task, batch_loss
from retain.errors import RetainError
from retain.strategies.base import StateDict, Strategy
from retain.strategies.chain import Chain, chain
from retain.training.checkpoint import (
    capture_rng,
    latest_checkpoint,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)
from retain.training.loop import TrainConfig, make_optimizer, train_task
from tiny_models import tiny_bert_config, tiny_llama_config
from training_helpers import random_task, tiny_classifier

FIX = "resume with the same model and strategies"


def dropout_classifier(seed: int) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = tiny_bert_config(
        100, num_labels=3, hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.2
    )
    return BertForSequenceClassification(config)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def run_steps(
    model: nn.Module,
    data: Task,
    optimizer: Optimizer,
    scheduler: Any,
    strat: Chain,
    first: int,
    n: int,
) -> None:
    """``n`` optimizer steps whose batches (torch), loss weights (numpy, random) and dropout masks
    all come from the global RNGs, so only a restored RNG reproduces them."""
    model.train()
    for step in range(first, first + n):
        picked = torch.randperm(len(data.examples))[:8].tolist()
        batch = data.collate([data.examples[i] for i in picked])
        weight = (1 + 0.1 * float(np.random.rand())) * (1 + 0.1 * random.random())
        (batch_loss(data.objective, model, batch) * weight).backward()  # type: ignore[no-untyped-call]
        strat.after_backward(model)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        strat.on_step(step + 1, model)


def assert_same(a: Any, b: Any, where: str = "") -> None:
    """Equal trees: same types, same keys, tensors equal in dtype and every bit."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} vs {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype, where
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), where  # key order carries no meaning
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}.{i}")
    else:
        assert a == b, f"{where}: {a!r} vs {b!r}"


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def ewc_replay_warmup() -> Chain:
    return chain(
        {"name": "ewc", "strength": 100.0, "fisher_batch_size": 8},
        {"name": "replay", "ratio": 0.5, "buffer_size": 8},
        {"name": "warmup", "warmup_steps": 2},
    )


def test_resume_is_bit_identical_with_adamw_warmup_dropout_ewc_and_replay(tmp_path: Path) -> None:
    first, second = random_task("a", n=16, seed=1), random_task("b", n=16, seed=2)
    config = TrainConfig(lr=1e-3, batch_size=8, weight_decay=0.01)

    seed_everything(0)
    strat = ewc_replay_warmup()
    model = strat.prepare(dropout_classifier(0))
    train_task(model, first, strat, config)  # Fisher and replay buffer exist from here on
    data = strat.begin_task(model, second)
    assert len(data.examples) == 32  # 16 examples plus 16 replayed from the first task
    optimizer = make_optimizer(model, strat, config)
    scheduler = strat.lr_scheduler(optimizer, 6)
    assert scheduler is not None  # warmup's LambdaLR
    run_steps(model, data, optimizer, scheduler, strat, 0, 3)
    position = {"task": 1, "step": 3, "global_step": 5}
    path = save_checkpoint(
        tmp_path,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        strategies=strat,
        position=position,
    )
    at_save = snapshot(model)
    run_steps(model, data, optimizer, scheduler, strat, 3, 3)
    assert any(not torch.equal(at_save[k], v) for k, v in model.state_dict().items())

    def resume(rng: bool) -> tuple[nn.Module, Optimizer, Any, Chain]:
        seed_everything(123)  # everything fresh, from other seeds
        strat2 = ewc_replay_warmup()
        model2 = strat2.prepare(dropout_classifier(1))
        got, _ = load_checkpoint(path, model=model2, strategies=strat2, rng=False)
        assert got == position
        data2 = strat2.begin_task(model2, second)  # the same mix, from the restored buffer
        assert_same(list(data2.examples), list(data.examples), "mix")
        optimizer2 = make_optimizer(model2, strat2, config)
        scheduler2 = strat2.lr_scheduler(optimizer2, 6)
        load_checkpoint(path, model=model2, optimizer=optimizer2, scheduler=scheduler2, rng=rng)
        run_steps(model2, data2, optimizer2, scheduler2, strat2, got["step"], 3)
        return model2, optimizer2, scheduler2, strat2

    model2, optimizer2, scheduler2, strat2 = resume(rng=True)
    assert_same(snapshot(model2), snapshot(model), "model")
    assert_same(optimizer2.state_dict(), optimizer.state_dict(), "optimizer")
    assert_same(scheduler2.state_dict(), scheduler.state_dict(), "scheduler")
    assert_same(strat2.state_dict(), strat.state_dict(), "strategies")
    # control: without the RNG the dropout masks and batches differ, so the test can fail
    unseeded, *_ = resume(rng=False)
    assert any(not torch.equal(v, unseeded.state_dict()[k]) for k, v in model.state_dict().items())


def test_resume_is_bit_identical_with_sgd_momentum_and_step_lr(tmp_path: Path) -> None:
    data = random_task("a", n=16, seed=3)
    none = Chain([])

    def build(seed: int) -> tuple[nn.Module, Optimizer, Any]:
        model = dropout_classifier(seed)
        optimizer = torch.optim.SGD(
            model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01
        )
        return model, optimizer, torch.optim.lr_scheduler.StepLR(optimizer, 2, gamma=0.5)

    seed_everything(0)
    model, optimizer, scheduler = build(0)
    run_steps(model, data, optimizer, scheduler, none, 0, 2)
    path = save_checkpoint(
        tmp_path, model=model, optimizer=optimizer, scheduler=scheduler, position={"step": 2}
    )
    assert path.name == "step-1"  # no global_step: named by the save's sequence number
    run_steps(model, data, optimizer, scheduler, none, 2, 3)
    seed_everything(9)
    model2, optimizer2, scheduler2 = build(1)
    position, _ = load_checkpoint(path, model=model2, optimizer=optimizer2, scheduler=scheduler2)
    run_steps(model2, data, optimizer2, scheduler2, none, position["step"], 3)
    assert_same(snapshot(model2), snapshot(model), "model")
    assert_same(optimizer2.state_dict(), optimizer.state_dict(), "optimizer")
    assert_same(scheduler2.state_dict(), scheduler.state_dict(), "scheduler")


def tied_llama(seed: int, tie: bool = True) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_llama_config(50, tie_word_embeddings=tie))


def test_tied_weights_are_stored_once_and_stay_tied(tmp_path: Path) -> None:
    model = tied_llama(0)
    wrapped = nn.DataParallel(model)  # wrappers are looked through: keys have no "module."
    path = save_checkpoint(tmp_path, model=wrapped, position={"global_step": 1})
    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
    assert "model.embed_tokens.weight" in keys
    assert "lm_head.weight" not in keys
    manifest = json.loads((path / "checkpoint.json").read_text())
    assert manifest["model"]["aliases"] == {"lm_head.weight": "model.embed_tokens.weight"}
    other = tied_llama(1)
    assert not torch.equal(other.lm_head.weight, model.lm_head.weight)
    load_checkpoint(path, model=other)
    assert other.lm_head.weight is other.model.embed_tokens.weight
    assert_same(snapshot(other), snapshot(model), "model")
    with pytest.raises(RetainError, match="tied tensors differ"):
        load_checkpoint(path, model=tied_llama(0, tie=False))


class Killed(Strategy):
    """A strategy whose state_dict copies the staging folder (what a kill at that moment leaves
    on disk) and then fails."""

    name = "killed"

    def __init__(self, directory: Path, copy_to: Path) -> None:
        self.directory, self.copy_to = directory, copy_to

    def state_dict(self) -> StateDict:
        (staging,) = self.directory.glob(".staging-*")
        shutil.copytree(staging, self.copy_to)
        raise RuntimeError("killed while writing")


def test_a_failed_or_killed_save_leaves_the_previous_checkpoint(tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    model = tiny_classifier(0)
    optimizer = torch.optim.AdamW(model.parameters())
    first = save_checkpoint(root, model=model, optimizer=optimizer, position={"global_step": 1})
    half = tmp_path / "half"
    with pytest.raises(RuntimeError, match="killed while writing"):
        save_checkpoint(
            root,
            model=model,
            optimizer=optimizer,
            strategies=[Killed(root, half)],
            position={"global_step": 2},
        )
    assert sorted(p.name for p in root.iterdir()) == ["step-1"]  # staging folder removed
    assert {"model.safetensors", "optimizer.safetensors"} <= {p.name for p in half.iterdir()}
    assert not (half / "checkpoint.json").exists()
    # what a kill leaves: the staging folder; plus a visible folder without a manifest and a
    # complete-looking copy with a truncated file: none of them is picked
    shutil.copytree(half, root / ".staging-step-2")
    shutil.copytree(half, root / "step-3")
    shutil.copytree(first, root / "step-4")
    with (root / "step-4" / "model.safetensors").open("r+b") as f:
        f.truncate(100)
    assert latest_checkpoint(root) == first
    with pytest.raises(RetainError, match="truncated or corrupt"):
        load_checkpoint(root / "step-4", model=model)
    after = save_checkpoint(root, model=model, position={"global_step": 5})
    assert latest_checkpoint(root) == after
    assert not (root / ".staging-step-2").exists()  # the next save removes stale staging


def test_mismatches_and_damage_raise_one_line_errors(tmp_path: Path) -> None:
    model = tiny_classifier(0)
    optimizer = torch.optim.AdamW(model.parameters())
    path = save_checkpoint(
        tmp_path,
        model=model,
        optimizer=optimizer,
        strategies=chain("ewc"),
        position={"global_step": 1},
    )
    other = BertForSequenceClassification(tiny_bert_config(100, num_labels=4))
    before = snapshot(other)
    n_saved = sum(p.numel() for p in model.state_dict().values())
    n_other = sum(p.numel() for p in other.state_dict().values())
    with pytest.raises(RetainError) as info:
        load_checkpoint(path, model=other, optimizer=torch.optim.AdamW(other.parameters()))
    message = str(info.value)
    assert "\n" not in message
    assert message == (
        f"checkpoint {str(path)!r} was saved from a model with {n_saved:,} parameters in "
        f"{len(model.state_dict())} tensors; this model has {n_other:,} in "
        f"{len(other.state_dict())} ('classifier.weight' is [3, 32] float32 there, [4, 32] "
        f"float32 here); {FIX}"
    )
    assert_same(snapshot(other), before, "untouched")
    with pytest.raises(RetainError, match=r"strategies \['ewc'\]; these are \['l2sp'\]"):
        load_checkpoint(path, model=model, strategies=chain("l2sp"))
    with pytest.raises(RetainError, match="holds AdamW optimizer state, not SGD"):
        load_checkpoint(path, model=model, optimizer=torch.optim.SGD(model.parameters(), lr=1))
    with pytest.raises(RetainError, match="holds no scheduler state"):
        load_checkpoint(path, model=model, scheduler=torch.optim.lr_scheduler.StepLR(optimizer, 1))
    damaged = tmp_path / "damaged"
    shutil.copytree(path, damaged)
    data = bytearray((damaged / "model.safetensors").read_bytes())
    data[len(data) // 2] ^= 1  # one flipped bit in a weight
    (damaged / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(RetainError, match=r"model\.safetensors' is missing, truncated or corrupt"):
        load_checkpoint(damaged, model=model)
    load_checkpoint(damaged, model=None, optimizer=optimizer)  # reads and checks what it needs
    (path / "optimizer.safetensors").unlink()
    assert latest_checkpoint(tmp_path) is None  # an incomplete folder is not a checkpoint
    with pytest.raises(RetainError, match=r"optimizer\.safetensors' is missing"):
        load_checkpoint(path, model=model, optimizer=optimizer)
    with pytest.raises(RetainError, match=r"manifest .* is missing or corrupt"):
        load_checkpoint(tmp_path, model=model)
    with pytest.raises(RetainError, match=r"'position\.when' has type object"):
        save_checkpoint(tmp_path, model=model, position={"when": object()})
    with pytest.raises(RetainError, match="keep must be"):
        save_checkpoint(tmp_path, model=model, position={}, keep=0)


def test_keep_leaves_the_newest_saves(tmp_path: Path) -> None:
    model = nn.Linear(2, 2)
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, model=model, position={"global_step": step}, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-3", "step-4"]
    assert latest_checkpoint(tmp_path) == tmp_path / "step-4"
    # a run restarted from scratch in the same folder: its save is the newest, by save order
    fresh = save_checkpoint(tmp_path, model=model, position={"global_step": 1}, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-1", "step-4"]
    assert latest_checkpoint(tmp_path) == fresh
    assert latest_checkpoint(tmp_path / "absent") is None


def draws() -> list[Any]:
    return [
        torch.rand(4),
        torch.randn(3),
        [random.random() for _ in range(3)],
        random.gauss(0, 1),
        np.random.rand(3).tolist(),
        np.random.randn(3).tolist(),
    ]


def test_rng_round_trip_in_memory_and_through_a_checkpoint(tmp_path: Path) -> None:
    seed_everything(4)
    random.gauss(0, 1)  # leaves a cached second normal in random and numpy
    np.random.randn()
    state = capture_rng()
    assert state["python"]["gauss_next"] is not None
    assert state["numpy"]["has_gauss"] == 1
    expected = draws()
    seed_everything(5)
    assert str(draws()) != str(expected)
    restore_rng(state)
    assert_same(draws(), expected, "in memory")
    model = nn.Linear(2, 2)  # built before the restore: building draws from the RNG
    restore_rng(state)
    path = save_checkpoint(tmp_path, model=model, position={})
    seed_everything(6)
    load_checkpoint(path, model=None)
    assert_same(draws(), expected, "from disk")


WORKER = textwrap.dedent(
    """
    import json, random, sys
    import numpy as np, torch
    from retain.errors import RetainError
    from retain.strategies.base import Strategy
    from retain.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint

    class Failing(Strategy):
        name = "failing"

        def state_dict(self):
            raise RuntimeError("disk full")

    rank, folder = int(sys.argv[1]), sys.argv[2]
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{folder}/store", rank=rank, world_size=2
    )
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)  # the loop syncs gradients itself; no DDP wrapper needed
    torch.manual_seed(100 + rank); random.seed(100 + rank); np.random.seed(100 + rank)
    path = save_checkpoint(f"{folder}/ckpt", model=model, position={"global_step": 7})
    draw = lambda: [torch.rand(3).tolist(), random.random(), np.random.rand(2).tolist()]
    after_save = draw()
    with torch.no_grad():
        model.weight.zero_()
    torch.manual_seed(0); random.seed(0); np.random.seed(0)
    position, _ = load_checkpoint(path, model=model)
    after_load = draw()
    try:  # rank 0 fails writing the strategy state; rank 1 must hear of it, not hang
        save_checkpoint(f"{folder}/ckpt", model=model, strategies=[Failing()], position={})
        error = None
    except Exception as exc:
        error = type(exc).__name__
    result = {"path": str(path), "after_save": after_save, "after_load": after_load,
              "weight": model.weight.tolist(), "error": error,
              "latest": str(latest_checkpoint(f"{folder}/ckpt"))}
    with open(f"{folder}/rank{rank}.json", "w") as f:
        json.dump(result, f)
    torch.distributed.destroy_process_group()
    """
)


def test_two_gloo_ranks_write_and_restore_their_own_rng(tmp_path: Path) -> None:
    workers = [
        subprocess.Popen([sys.executable, "-c", WORKER, str(rank), str(tmp_path)])
        for rank in (0, 1)
    ]
    try:
        assert [w.wait(timeout=120) for w in workers] == [0, 0]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    path = Path(results[0]["path"])
    names = {p.name for p in path.iterdir()}
    assert {"rng.0.safetensors", "rng.1.safetensors", "model.safetensors"} <= names
    assert "rng.safetensors" not in names
    assert json.loads((path / "checkpoint.json").read_text())["world_size"] == 2
    torch.manual_seed(0)
    weight = nn.Linear(4, 3).weight.tolist()
    for r in results:
        assert r["after_load"] == r["after_save"]  # each rank got its own RNG back
        assert r["weight"] == weight
        assert r["latest"] == str(path)  # the failed save left the previous checkpoint
    assert results[0]["after_save"] != results[1]["after_save"]
    assert [r["error"] for r in results] == ["RuntimeError", "RetainError"]
    assert sorted(p.name for p in path.parent.iterdir()) == ["step-7"]
    with pytest.raises(RetainError, match=r"saved by 2 process\(es\); this run has 1"):
        load_checkpoint(path, model=nn.Linear(4, 3))
    load_checkpoint(path, model=nn.Linear(4, 3), rng=False)
