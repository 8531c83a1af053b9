"""The engine's optimizer step: accumulation and data parallelism leave the gradient unchanged.

Weight comparisons use SGD with momentum: Adam divides by sqrt(v), which turns float32 rounding
differences (other summation order) in near-zero gradient entries into visible weight changes.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.multiprocessing import spawn
from transformers import LlamaForCausalLM

from retain.data.task import CausalLM, Task, pad_collate
from retain.errors import RetainError
from retain.strategies.chain import chain
from retain.strategies.ewc import EWC
from retain.training.loop import TrainConfig, train_task
from tiny_models import tiny_llama_config
from training_helpers import random_task, tiny_classifier


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], tol: float) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=tol, msg=key)


def ragged_lm_task(n: int = 13, seed: int = 3) -> Task:
    """Causal-LM examples of different lengths: the token-weighted mean is what must survive."""
    g = torch.Generator().manual_seed(seed)
    examples = []
    for i in range(n):
        length = 4 + (i * 5) % 9
        ids = torch.randint(3, 60, (length,), generator=g)
        examples.append({"input_ids": ids, "attention_mask": torch.ones(length, dtype=torch.long)})
    return Task("lm", examples, CausalLM(), pad_collate(0))


@pytest.mark.parametrize("accum", [2, 3])
def test_accumulation_equals_one_big_batch_classification(accum: int) -> None:
    task = random_task("a", n=21)  # 21 = 8 + 8 + 5: a short last batch too
    config = TrainConfig(lr=0.1, batch_size=8, epochs=2, optimizer="sgd", momentum=0.9)
    ref, acc = tiny_classifier(), tiny_classifier()
    a = train_task(ref, task, None, config)
    b = train_task(acc, task, None, replace(config, grad_accum=accum))
    assert_close(weights(ref), weights(acc), 1e-6)
    torch.testing.assert_close(torch.tensor(a.losses), torch.tensor(b.losses), rtol=0, atol=1e-6)


def test_accumulation_weights_causal_lm_by_tokens() -> None:
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(60))
    twin = copy.deepcopy(model)
    task = ragged_lm_task()
    config = TrainConfig(lr=0.1, batch_size=6, max_steps=3, optimizer="sgd", momentum=0.9)
    train_task(model, task, None, config)
    train_task(twin, task, None, replace(config, grad_accum=3))
    assert_close(weights(model), weights(twin), 1e-6)
    # A per-sample (not per-token) average of the micro-batches would not match: guard the test.
    assert len({len(ex["input_ids"]) for ex in task.examples}) > 1


def test_bf16_autocast_trains_close_to_fp32() -> None:
    task = random_task("a", n=16)
    fp32 = train_task(tiny_classifier(), task, None, TrainConfig(lr=1e-2, batch_size=8))
    bf16 = train_task(
        tiny_classifier(), task, None, TrainConfig(lr=1e-2, batch_size=8, precision="bf16")
    )
    assert bf16.losses != fp32.losses  # autocast really ran in bfloat16
    torch.testing.assert_close(
        torch.tensor(bf16.losses), torch.tensor(fp32.losses), rtol=0.05, atol=0
    )


def test_bad_settings_are_named() -> None:
    task = random_task("a", n=8)
    with pytest.raises(RetainError, match=r"fp16.*CUDA.*bf16"):
        train_task(tiny_classifier(), task, None, TrainConfig(precision="fp16"))
    with pytest.raises(RetainError, match="unknown precision"):
        TrainConfig(precision="fp8")  # type: ignore[arg-type]
    with pytest.raises(RetainError, match="grad_accum"):
        TrainConfig(grad_accum=0)
    with pytest.raises(RetainError, match="at least 4"):
        train_task(tiny_classifier(), task, None, TrainConfig(batch_size=2, grad_accum=4))


def test_nan_loss_names_the_step_and_keeps_the_last_good_weights() -> None:
    task = random_task("a", n=16)
    model = tiny_classifier()
    seen: list[dict[str, torch.Tensor]] = []

    class Poison(nn.Module):
        """Makes the logits NaN from the third forward pass on."""

        def __init__(self) -> None:
            super().__init__()
            self.calls = 0

        def forward(self, module: nn.Module, args: object, output: object) -> object:
            self.calls += 1
            seen.append(weights(model))
            if self.calls >= 3:
                return type(output)(logits=output.logits * float("nan"))  # type: ignore[attr-defined]
            return output

    model.register_forward_hook(Poison())
    with pytest.raises(RetainError, match=r"loss is nan at step 3; training stopped"):
        train_task(model, task, None, TrainConfig(lr=1e-2, batch_size=4))
    assert_close(weights(model), seen[-1], 0)  # no optimizer step after the bad loss


def _ddp_rank(rank: int, init: str, folder: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        model, ewc = _ddp_run(grad_accum=1)
        if rank == 0:
            _save_run(model, ewc, Path(folder) / "ddp.safetensors")
    finally:
        torch.distributed.destroy_process_group()


def _ddp_run(grad_accum: int) -> tuple[nn.Module, EWC]:
    model = tiny_classifier()
    ewc = EWC(strength=100.0, fisher_samples=12, fisher_batch_size=4)
    strategies = chain(ewc)
    model = strategies.prepare(model)
    config = TrainConfig(
        lr=0.1, batch_size=8, grad_accum=grad_accum, seed=4, optimizer="sgd", momentum=0.9
    )
    for name, seed in (("a", 1), ("b", 2)):
        train_task(model, random_task(name, n=20, seed=seed), strategies, config)
    return model, ewc


def _save_run(model: nn.Module, ewc: EWC, path: Path) -> None:
    tensors = {f"w.{k}": v.contiguous() for k, v in weights(model).items()}
    for i, term in enumerate(ewc.terms):
        tensors.update({f"f{i}.{k}": v.float().contiguous() for k, v in term.weight.items()})
    save_file(tensors, str(path))


def test_two_gloo_ranks_equal_one_process(tmp_path: Path) -> None:
    """Same global batch of 8 over 2 ranks (4 each): same Fisher, same weights as one process."""
    spawn(_ddp_rank, args=(f"file://{tmp_path / 'rendezvous'}", str(tmp_path)), nprocs=2)  # type: ignore[no-untyped-call]
    got = load_file(str(tmp_path / "ddp.safetensors"))
    model, ewc = _ddp_run(grad_accum=1)
    _save_run(model, ewc, tmp_path / "one.safetensors")
    ref = load_file(str(tmp_path / "one.safetensors"))
    assert any(k.startswith("f1.") for k in ref)  # two Fisher terms compared
    assert_close(got, ref, 1e-6)
