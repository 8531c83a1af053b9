"""RetainCallback inside a Hugging Face ``Trainer`` on an FSDP2-sharded model (gloo, CPU).

* ``torchrun`` with 2 processes (``hf_fsdp_child.py``): a tiny Llama trained by the Trainer over
  two tasks reaches the weights of one unsharded process on the same global batches to 1e-6
  (measured: 1.5e-8, float rounding of the two reduction orders), and its per-step losses (to
  1e-5; they differ by one float32 ulp) and final penalty (relative 1e-5), with L2-SP and EWC,
  under Transformers' own FSDP2 (``DistributedConfig``) and under Accelerate's
  (``TrainingArguments(fsdp=True, ...)``) on a model sharded before ``begin_task``; each penalty
  moves the weights by more than 1e-3 from plain Trainer training (measured: 2.4e-2, 2.6e-2).
  A model the Trainer shards itself after ``begin_task``, and a strategy that declares
  ``unsharded_only``, are refused with one line (and train in one process).
* on a one-process gloo group: what ``on_train_begin`` refuses or warns about, and the module
  the hooks receive inside a ``torch.compile`` or DDP wrapper.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from transformers import TrainerControl, TrainerState

from retain.data.task import Task
from retain.errors import RetainError
from retain.strategies.chain import chain
from retain.strategies.l2sp import L2SP
from retain.strategies.mas import MAS
from retain.training.hf import RetainCallback

CHILD = Path(__file__).with_name("hf_fsdp_child.py")
#: Trained in both runs; the baseline of the "moved" check is ``none``.
TRAINED = ["none", "l2sp", "ewc", "accelerate_l2sp"]
#: Refused under FSDP2 (the start of the message), trained in one process.
REFUSED = {
    "accelerate_whole_l2sp": "the Trainer sharded the model (FSDP2) after strategies.begin_task",
    "accelerate_whole_mas": f"mas cannot train an FSDP-sharded model yet: {MAS.unsharded_only}",
}


def launch(out: Path, *prefix: str) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [*prefix, str(CHILD), str(out), *TRAINED, *REFUSED]
    done = subprocess.run(command, env=env, timeout=600, check=False)
    assert done.returncode == 0


def result(out: Path, variant: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((out / variant / "result.json").read_text())
    return loaded


def test_trainer_with_fsdp2_on_two_processes_equals_one(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    launch(one, sys.executable)
    torchrun = (sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2")
    launch(two, *torchrun, "--master-port", "29841")
    plain = load_file(str(one / "none" / "weights.safetensors"))
    for variant in TRAINED:
        a, b = result(one, variant), result(two, variant)
        assert a["error"] is None, variant
        assert b["error"] is None, variant
        whole = load_file(str(one / variant / "weights.safetensors"))
        sharded = load_file(str(two / variant / "weights.safetensors"))
        assert whole.keys() == sharded.keys() == plain.keys()
        for key in whole:
            torch.testing.assert_close(sharded[key], whole[key], rtol=0, atol=1e-6, msg=key)
        assert len(a["losses"]) == 8  # 2 tasks x 4 optimizer steps, logged at every step
        torch.testing.assert_close(
            torch.tensor(b["losses"]), torch.tensor(a["losses"]), rtol=0, atol=1e-5
        )
        if variant != "none":  # the penalty acted, far beyond the tolerance
            assert a["penalty"] > 0
            assert b["penalty"] == pytest.approx(a["penalty"], rel=1e-5, abs=1e-9), variant
            moved = max(float((whole[k] - plain[k]).abs().max()) for k in whole)
            assert moved > 1e-3, variant
    for variant, message in REFUSED.items():
        assert result(one, variant)["error"] is None  # unsharded: it trains
        refused = result(two, variant)
        assert refused["error"].startswith(message), refused["error"]
        assert "\n" not in refused["error"]
        assert refused["losses"] == []  # refused at on_train_begin, before any step
        assert not (two / variant / "weights.safetensors").exists()


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))


def shard(model: nn.Sequential) -> nn.Sequential:
    from torch.distributed.fsdp import fully_shard

    fully_shard(model[0])
    fully_shard(model[2])
    fully_shard(model)
    return model


def toy_task() -> Task:
    torch.manual_seed(1)
    examples = [{"input": torch.randn(4), "labels": torch.tensor(i % 3)} for i in range(12)]
    return Task("toy", examples)


def train_begin(callback: RetainCallback, model: nn.Module, fsdp: bool = False) -> None:
    """``on_train_begin`` as the Trainer calls it (the callback reads only ``args.fsdp``)."""
    args: Any = SimpleNamespace(fsdp=fsdp)
    callback.on_train_begin(args, TrainerState(), TrainerControl(), model=model)


def init_end(callback: RetainCallback, model: nn.Module) -> None:
    args: Any = SimpleNamespace(fsdp=False)
    callback.on_init_end(args, TrainerState(), TrainerControl(), model=model)


@pytest.mark.usefixtures("group")
def test_a_model_sharded_after_begin_task_is_refused_and_one_sharded_before_is_not() -> None:
    task = toy_task()
    strategies = chain(L2SP(alpha=0.1))
    model = mlp()
    strategies.begin_task(model, task)  # the anchor of the whole weights
    callback = RetainCallback(strategies, task)
    init_end(callback, model)  # the Trainer is given the whole model...
    shard(model)  # ...and shards it in train(), as Accelerate's FSDP2 does
    with pytest.raises(RetainError, match=r"^the Trainer sharded the model \(FSDP2\) after") as e:
        train_begin(callback, model)
    assert "\n" not in str(e.value)

    model, strategies = shard(mlp()), chain(L2SP(alpha=0.1))
    strategies.begin_task(model, task)  # the anchor of this process's shards
    callback = RetainCallback(strategies, task)
    init_end(callback, model)
    train_begin(callback, model)  # accepted


@pytest.mark.usefixtures("group")
def test_a_strategy_that_declares_unsharded_only_is_refused_with_its_reason() -> None:
    task = toy_task()
    strategies = chain(MAS(samples=4))
    model = mlp()
    strategies.begin_task(model, task)  # whole: begin_task has nothing to refuse
    callback = RetainCallback(strategies, task)  # added after init: no on_init_end
    train_begin(callback, mlp())  # a whole model trains
    expected = f"mas cannot train an FSDP-sharded model yet: {MAS.unsharded_only}; train it"
    with pytest.raises(RetainError, match=f"^{expected}") as e:
        train_begin(callback, shard(model))
    assert "\n" not in str(e.value)


@pytest.mark.usefixtures("group")
@pytest.mark.filterwarnings("ignore:FSDP is switching to use `NO_SHARD`")
def test_fsdp1_is_refused() -> None:
    from torch.distributed.fsdp import FullyShardedDataParallel

    task = toy_task()
    strategies = chain(L2SP(alpha=0.1))
    model = mlp()
    strategies.begin_task(model, task)
    wrapped = FullyShardedDataParallel(model, device_id=torch.device("cpu"))
    with pytest.raises(RetainError, match=r"^the model is wrapped with FSDP1 .*fsdp_version"):
        train_begin(RetainCallback(strategies, task), wrapped)


def test_fsdp_arguments_that_leave_the_model_whole_are_warned_about() -> None:
    task = toy_task()
    strategies = chain(L2SP(alpha=0.1))
    model = mlp()
    strategies.begin_task(model, task)
    with pytest.warns(RuntimeWarning, match="not sharded: Accelerate enables FSDP on GPUs"):
        train_begin(RetainCallback(strategies, task), model, fsdp=True)


@pytest.mark.usefixtures("group")
def test_hooks_get_the_module_inside_compile_and_ddp_wrappers() -> None:
    task = toy_task()
    for wrap in (torch.compile, nn.parallel.DistributedDataParallel):
        l2sp = L2SP(alpha=0.5)
        strategies = chain(l2sp)
        model = mlp()
        strategies.begin_task(model, task)  # anchors named as the module's parameters
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1)
                p.grad = torch.zeros_like(p)
        callback = RetainCallback(strategies, task)
        wrapped: Any = wrap(model)
        assert {n for n, _ in wrapped.named_parameters()}.isdisjoint(l2sp.anchors)
        train_begin(callback, wrapped)
        args: Any = SimpleNamespace(fsdp=False)
        callback.on_pre_optimizer_step(args, TrainerState(), TrainerControl(), model=wrapped)
        for p in model.parameters():  # alpha * (theta - theta*) = 0.5 * 0.1
            torch.testing.assert_close(p.grad, torch.full_like(p, 0.05))
