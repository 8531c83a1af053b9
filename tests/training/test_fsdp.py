"""L2-SP and EWC on an FSDP2-sharded model (``fully_shard``, gloo, CPU).

* ``torchrun`` with 2 processes (an MLP with every ``Linear`` sharded, uneven rows; a tiny Llama
  sharded per decoder block) reaches the weights, the per-step losses and the final penalty
  value of one unsharded process on the same global batches, to 1e-5 (``fsdp_child.py``), for
  L2-SP (both anchors), EWC (separate, online, empirical / true / batch Fisher, no / max /
  mean normalisation), A-GEM (a fresh reference every step, uneven memory shares, and one
  reused for 3 steps), replay, LoRA (PEFT-wrapped before sharding), freezing, layer-wise
  learning rates and warmup, in a hand loop and in ``train_task``; each strategy moves the
  weights by more than 1e-3 from plain training; ``task_accuracy`` and ``task_loss``, scoring
  every other batch on each rank, equal every rank scoring all batches;
* on a one-process sharded model: the sharded gradient transform equals the autograd gradient of
  the loss-space penalty, and what cannot work sharded yet is refused with one line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from retain.data.task import Task
from retain.distributed import is_sharded, local_tensor, refuse_sharded
from retain.errors import RetainError
from retain.strategies.ewc import EWC
from retain.strategies.l2sp import L2SP
from retain.strategies.mas import MAS

CHILD = Path(__file__).with_name("fsdp_child.py")
VARIANTS = [
    "none",
    "agem",
    "agem_every_3",
    "replay",
    "loop_agem",
    "loop_replay",
    "llama_agem",
    "llama_lora",
    "loop_llama_lora",
    "freeze",
    "loop_llama_none",
    "loop_llama_layerwise_warmup",
    "l2sp",
    "l2sp_task_start",
    "ewc",
    "ewc_online_true_max",
    "ewc_batch_mean",
    "loop_none",
    "loop_l2sp",
    "loop_ewc",
    "llama_none",
    "llama_l2sp",
    "llama_ewc",
]


def launch(out: Path, *prefix: str) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [*prefix, str(CHILD), str(out), *VARIANTS]
    done = subprocess.run(command, env=env, timeout=600, check=False)
    assert done.returncode == 0


def test_fsdp_two_processes_equal_one(tmp_path: Path) -> None:
    launch(tmp_path / "one", sys.executable)
    torchrun = (sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2")
    launch(tmp_path / "two", *torchrun, "--master-port", "29533")
    for variant in VARIANTS:
        one = load_file(str(tmp_path / "one" / variant / "weights.safetensors"))
        two = load_file(str(tmp_path / "two" / variant / "weights.safetensors"))
        kinds = ("loop_llama", "llama", "loop")
        baseline = next((f"{k}_none" for k in kinds if variant.startswith(k)), "none")
        plain = load_file(str(tmp_path / "one" / baseline / "weights.safetensors"))
        assert one.keys() == two.keys()
        for key in one:
            torch.testing.assert_close(two[key], one[key], rtol=0, atol=1e-5, msg=key)
        if variant != baseline:  # the strategy acted (far beyond the tolerance)
            base = {_plain_name(k): v for k, v in one.items() if "lora_" not in k}
            assert base.keys() == plain.keys(), variant
            moved = max(float((base[k] - plain[k]).abs().max()) for k in base)
            assert moved > 1e-3, variant
        a = json.loads((tmp_path / "one" / variant / "result.json").read_text())
        b = json.loads((tmp_path / "two" / variant / "result.json").read_text())
        torch.testing.assert_close(
            torch.tensor(b["losses"]), torch.tensor(a["losses"]), rtol=0, atol=1e-5
        )
        assert a["projections"] == b["projections"], variant
        assert ("agem" in variant) == (a["projections"] > 0), variant
        if a["penalty"] is not None:
            assert b["penalty"] == pytest.approx(a["penalty"], rel=1e-5, abs=1e-9), variant
        if "scores" in b:  # data-parallel evaluation: each rank scores every other batch
            parallel, reference = b["scores"]["parallel"], b["scores"]["reference"]
            assert parallel[0::2] == reference[0::2], variant  # accuracy: exact
            assert parallel[1::2] == pytest.approx(reference[1::2], rel=1e-9), variant
            assert parallel == pytest.approx(a["scores"]["parallel"], rel=1e-4), variant


def _plain_name(name: str) -> str:
    """A PEFT-wrapped parameter's name in the unwrapped model."""
    return name.removeprefix("base_model.model.").replace(".base_layer.", ".")


def sharded_mlp() -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    fully_shard(model[0])
    fully_shard(model[2])
    fully_shard(model)
    return model


def toy_task() -> Task:
    torch.manual_seed(1)
    examples = [{"input": torch.randn(4), "labels": torch.tensor(i % 3)} for i in range(12)]
    return Task("toy", examples)


def backward(model: nn.Module, task: Task) -> None:
    batch = task.collate(task.examples[:6])
    logits, targets = task.objective.logits_and_targets(model, batch)
    nn.functional.cross_entropy(logits, targets).backward()  # type: ignore[no-untyped-call]


@pytest.mark.usefixtures("group")
def test_sharded_gradient_transform_equals_loss_space_penalty() -> None:
    task = toy_task()
    for strategy in (L2SP(alpha=0.7), EWC(strength=3.0, fisher_samples=8, fisher_batch_size=3)):
        model = sharded_mlp()
        assert is_sharded(model)
        strategy.on_task_start(model, task)
        strategy.on_task_end(model, task)
        with torch.no_grad():
            for p in model.parameters():
                local_tensor(p).add_(0.1)
        backward(model, task)
        strategy.after_backward(model)
        transformed = [local_tensor(p.grad).clone() for p in model.parameters()]  # type: ignore[arg-type]
        model.zero_grad(set_to_none=True)
        backward(model, task)
        penalty = strategy.penalty(model)
        assert float(penalty.detach()) > 0
        penalty.backward()  # type: ignore[no-untyped-call]
        for got, p in zip(transformed, model.parameters(), strict=True):
            torch.testing.assert_close(got, local_tensor(p.grad), rtol=1e-6, atol=1e-7)  # type: ignore[arg-type]


@pytest.mark.usefixtures("group")
def test_what_cannot_work_sharded_is_refused() -> None:
    model, task = sharded_mlp(), toy_task()
    assert not is_sharded(nn.Linear(2, 2))
    with pytest.raises(RetainError, match="mas cannot train an FSDP-sharded model yet"):
        MAS(samples=4).on_task_start(model, task)
    with pytest.raises(RetainError, match="agem cannot train an FSDP-sharded model yet: why"):
        refuse_sharded(model, "agem", "why")
    l2sp = L2SP()
    l2sp.on_task_start(model, task)
    with pytest.raises(RetainError, match=r"cannot checkpoint the l2sp anchor: .*shards"):
        l2sp.state_dict()
    ewc = EWC(fisher_samples=4)
    ewc.on_task_start(model, task)
    ewc.on_task_end(model, task)
    with pytest.raises(RetainError, match="cannot save the ewc Fisher"):
        ewc.save_fisher("unused.safetensors")
    with pytest.raises(RetainError, match="cannot checkpoint the ewc state"):
        ewc.state_dict()


@pytest.mark.usefixtures("group")
def test_a_chain_refuses_members_that_do_not_declare_sharded_support() -> None:
    from retain.strategies.chain import chain

    model, task = sharded_mlp(), toy_task()
    with pytest.raises(RetainError, match="mas cannot train an FSDP-sharded model yet: it is"):
        chain("mas").begin_task(model, task)
    with pytest.raises(RetainError, match=r"progressive cannot .*: it adds columns"):
        chain("progressive").begin_task(model, task)
    declared = chain(L2SP(alpha=0.1), EWC(fisher_samples=4), "replay", "agem")
    declared.begin_task(model, task)  # declared: they work
