"""Per-sample Fisher: the hooks engine equals the per-sample loop, which equals hand references."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.multiprocessing.spawn import spawn

from retain.data.task import Batch, CausalLM, Example, Task, batch_loss, pad_collate
from retain.diagnostics.fisher import FisherEstimator, estimate_fisher
from retain.errors import RetainError
from tiny_models import tiny_bert_config, tiny_llama_config

ESTIMATORS: tuple[FisherEstimator, ...] = ("empirical", "batch")


class Net(nn.Module):
    """``forward(pixel_values)`` over a Sequential, the layout of an image classifier."""

    def __init__(self, *layers: nn.Module) -> None:
        super().__init__()
        self.net = nn.Sequential(*layers)

    def forward(self, pixel_values: Tensor) -> Tensor:
        out: Tensor = self.net(pixel_values)
        return out


class Twice(nn.Module):
    """One Linear applied twice: its per-sample gradients must be summed before squaring."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.mid, self.out = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, pixel_values: Tensor) -> Tensor:
        h = torch.tanh(self.inp(pixel_values))
        h = torch.tanh(self.mid(torch.tanh(self.mid(h))))
        out: Tensor = self.out(h)
        return out


class TwoInputs(nn.Module):
    """A parameter-owning module called with two tensors (the hooks engine cannot split it)."""

    def __init__(self) -> None:
        super().__init__()
        self.bilinear, self.head = nn.Bilinear(6, 6, 4), nn.Linear(4, 3)

    def forward(self, pixel_values: Tensor) -> Tensor:
        out: Tensor = self.head(torch.tanh(self.bilinear(pixel_values, pixel_values)))
        return out


class OutsideUse(nn.Module):
    """A Linear whose weight is also used outside its own call (invisible to module hooks)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin, self.head = nn.Linear(6, 6), nn.Linear(6, 3)

    def forward(self, pixel_values: Tensor) -> Tensor:
        h = torch.tanh(self.lin(pixel_values)) @ self.lin.weight
        out: Tensor = self.head(h)
        return out


class Gated(nn.Module):
    """A module with a child and a parameter of its own (generic rule around a hooked child)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin, self.scale = nn.Linear(6, 8), nn.Parameter(torch.randn(8))

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.lin(x) * self.scale
        return out


class Affine(nn.Module):
    """A leaf module owning its parameters, called by keyword (the generic rule, keyword path)."""

    def __init__(self) -> None:
        super().__init__()
        self.w, self.b = nn.Parameter(torch.randn(6, 3)), nn.Parameter(torch.randn(3))

    def forward(self, pixel_values: Tensor) -> Tensor:
        return torch.tanh(pixel_values @ self.w) + self.b


def image_task(n: int = 12, shape: tuple[int, ...] = (6,), seed: int = 0) -> Task:
    gen = torch.Generator().manual_seed(seed)
    examples = [
        {"pixel_values": torch.randn(shape, generator=gen), "labels": torch.tensor(i % 3)}
        for i in range(n)
    ]
    return Task("images", examples)


def linear(model: nn.Module, index: int) -> nn.Linear:
    """Layer ``index`` of a :class:`Net`, typed."""
    layer = model.get_submodule(f"net.{index}")
    assert isinstance(layer, nn.Linear)
    return layer


def param(model: nn.Module, name: str) -> nn.Parameter:
    """The parameter called ``name`` (typed as a Parameter, unlike ``layer.weight``)."""
    return dict(model.named_parameters())[name]


def mlp(seed: int = 0, inplace: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    return Net(nn.Linear(6, 8), nn.ReLU(inplace=inplace), nn.Linear(8, 3))


def token_examples(n: int, vocab: int, classes: int | None, seed: int = 0) -> list[Example]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        length = int(torch.randint(3, 12, (1,), generator=gen))  # varied: batches are padded
        example = {"input_ids": torch.randint(1, vocab, (length,), generator=gen)}
        if classes is not None:
            example["labels"] = torch.tensor(i % classes)
        out.append(example)
    return out


def classification_collate(examples: Sequence[Example]) -> Batch:
    """Right-padded ``input_ids`` and ``attention_mask``, stacked scalar labels."""
    batch = pad_collate(0)([{"input_ids": ex["input_ids"]} for ex in examples])
    batch["labels"] = torch.stack([ex["labels"] for ex in examples])
    return batch


def tiny_bert(vocab: int = 100) -> Any:
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    config = tiny_bert_config(
        vocab, num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    )
    return BertForSequenceClassification(config)


def bert_task() -> Task:
    return Task("text", token_examples(10, 100, 3), collate=classification_collate)


def assert_same_fisher(got: dict[str, Tensor], ref: dict[str, Tensor], tol: float = 1e-5) -> None:
    """Per tensor: max|got - ref| <= tol * max|ref|, elementwise with a tiny absolute floor.

    Tensors whose reference is rounding noise (exactly zero in exact arithmetic, such as BERT's
    key bias, whose gradient softmax cancels) are held to the global scale instead.
    """
    assert got.keys() == ref.keys()
    floor = max(float(v.abs().max()) for v in ref.values()) * 1e-9
    for name, value in ref.items():
        assert got[name].dtype == torch.float32, name
        assert not got[name].requires_grad, name
        assert got[name].shape == value.shape, name
        scale = max(float(value.abs().max()), floor)
        worst = float((got[name] - value).abs().max())
        assert worst <= tol * scale, (name, worst, scale)
        assert torch.allclose(got[name], value, rtol=1e-4, atol=tol * scale), name


def hand_empirical(model: nn.Module, task: Task) -> dict[str, Tensor]:
    """Per-example ``loss.backward()`` on single-example batches, squared, averaged."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    sums = {n: torch.zeros_like(p) for n, p in params.items()}
    model.eval()
    for example in task.examples:
        model.zero_grad(set_to_none=True)
        batch_loss(task.objective, model, task.collate([example])).backward()  # type: ignore[no-untyped-call]
        for n, p in params.items():
            if p.grad is not None:
                sums[n] += p.grad.square()
    model.zero_grad(set_to_none=True)
    return {n: s / len(task.examples) for n, s in sums.items()}


def strict_hooks(model: nn.Module, task: Task, **kwargs: Any) -> dict[str, Tensor]:
    """The hooks engine, failing on any warning (so it never silently fell back)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        return estimate_fisher(model, task, engine="hooks", **kwargs)


@pytest.mark.parametrize("inplace", [False, True])
def test_mlp_loop_matches_hand_reference_and_hooks_matches_loop(inplace: bool) -> None:
    model, task = mlp(inplace=inplace), image_task()
    loop = estimate_fisher(model, task, engine="loop", batch_size=5)
    assert_same_fisher(loop, hand_empirical(model, task))
    assert_same_fisher(strict_hooks(model, task, batch_size=5), loop)
    assert_same_fisher(estimate_fisher(model, task, batch_size=5), loop)  # auto


def test_conv_shared_layer_and_keyword_call_use_generic_and_summed_rules() -> None:
    torch.manual_seed(0)
    conv = Net(nn.Conv2d(1, 3, 3), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 4 * 4, 3))
    task = image_task(shape=(1, 6, 6))
    assert_same_fisher(strict_hooks(conv, task), estimate_fisher(conv, task, engine="loop"))
    torch.manual_seed(0)
    shared, task = Twice(), image_task()
    loop = estimate_fisher(shared, task, engine="loop", batch_size=4)
    assert_same_fisher(loop, hand_empirical(shared, task))
    assert_same_fisher(strict_hooks(shared, task, batch_size=4), loop)
    torch.manual_seed(0)
    gated = Net(Gated(), nn.Tanh(), nn.Linear(8, 3))
    assert_same_fisher(strict_hooks(gated, task), hand_empirical(gated, task))
    torch.manual_seed(0)
    root = Affine()
    assert_same_fisher(strict_hooks(root, task), hand_empirical(root, task))


def test_bert_with_padding_hooks_matches_loop() -> None:
    model, task = tiny_bert(), bert_task()
    loop = estimate_fisher(model, task, engine="loop", batch_size=4)
    assert len(loop) == len([p for p in model.parameters() if p.requires_grad])
    assert_same_fisher(strict_hooks(model, task, batch_size=4), loop)
    assert_same_fisher(loop, hand_empirical(model, task), tol=1e-4)  # padding changes rounding


def test_llama_with_tied_embeddings_hooks_matches_loop() -> None:
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(60, tie_word_embeddings=True))
    assert model.lm_head.weight is model.model.embed_tokens.weight
    task = Task("lm", token_examples(9, 60, None), objective=CausalLM(), collate=pad_collate(0))
    loop = estimate_fisher(model, task, engine="loop", batch_size=4)
    assert_same_fisher(strict_hooks(model, task, batch_size=4), loop)
    loop = estimate_fisher(model, task, estimator="true", engine="loop", batch_size=4)
    assert_same_fisher(strict_hooks(model, task, estimator="true", batch_size=4), loop)
    tied = {"lm_head.weight": model.lm_head.weight}  # the alias name of the tied embedding
    got = estimate_fisher(model, task, params=tied, batch_size=4)
    assert torch.equal(
        got["lm_head.weight"], strict_hooks(model, task, batch_size=4)["model.embed_tokens.weight"]
    )
    with pytest.raises(RetainError, match="tied"):
        estimate_fisher(
            model, task, params={**tied, "model.embed_tokens.weight": model.lm_head.weight}
        )


def test_peft_lora_bert_hooks_matches_loop() -> None:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        task_type="SEQ_CLS",
        r=4,
        target_modules=["query", "value"],
        lora_dropout=0.0,
        init_lora_weights=False,  # non-zero B, so lora_A gets a gradient
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_peft_model(tiny_bert(), config)
    task = bert_task()
    loop = estimate_fisher(model, task, engine="loop", batch_size=4)
    assert sorted(loop) == sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert any("lora_A" in n for n in loop)
    assert any("classifier" in n for n in loop)
    assert all(float(v.max()) > 0 for v in loop.values())
    assert_same_fisher(strict_hooks(model, task, batch_size=4), loop)


def test_true_fisher_samples_the_same_labels_in_both_engines() -> None:
    model, task = tiny_bert(), bert_task()
    loop = estimate_fisher(model, task, estimator="true", engine="loop", batch_size=4, seed=3)
    assert_same_fisher(strict_hooks(model, task, estimator="true", batch_size=4, seed=3), loop)
    empirical = strict_hooks(model, task, batch_size=4)
    other_seed = strict_hooks(model, task, estimator="true", batch_size=4)
    name = "classifier.bias"
    assert not torch.allclose(loop[name], empirical[name])
    assert not torch.allclose(loop[name], other_seed[name])


def test_batch_estimator_is_the_squared_batch_mean_gradient() -> None:
    model, task = mlp(), image_task(n=10)
    got = estimate_fisher(model, task, estimator="batch", batch_size=4)
    ref = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    batches = [task.examples[i : i + 4] for i in range(0, 10, 4)]
    for examples in batches:
        model.zero_grad(set_to_none=True)
        batch_loss(task.objective, model, task.collate(examples)).backward()  # type: ignore[no-untyped-call]
        for n, p in model.named_parameters():
            assert p.grad is not None
            ref[n] += p.grad.square() / len(batches)
    model.zero_grad(set_to_none=True)
    assert_same_fisher(got, ref)


def test_empirical_fisher_is_not_the_squared_mean_gradient() -> None:
    model, task = mlp(), image_task()
    fisher = estimate_fisher(model, task)
    model.zero_grad(set_to_none=True)
    batch_loss(task.objective, model, task.collate(list(task.examples))).backward()  # type: ignore[no-untyped-call]
    squared_mean = {n: p.grad.square() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    for name, value in fisher.items():
        assert float(value.sum()) > 1.5 * float(squared_mean[name].sum()), name
    whole = estimate_fisher(model, task, estimator="batch", batch_size=len(task.examples))
    assert_same_fisher(whole, squared_mean)


def test_max_samples_and_params_subset() -> None:
    model, task = mlp(), image_task()
    first = estimate_fisher(model, task, max_samples=5, batch_size=2)
    assert_same_fisher(first, estimate_fisher(model, task.with_examples(task.examples[:5])))
    assert not torch.allclose(first["net.0.weight"], estimate_fisher(model, task)["net.0.weight"])
    subset = {"net.2.weight": param(model, "net.2.weight")}
    got = estimate_fisher(model, task, params=subset)
    assert list(got) == ["net.2.weight"]
    assert torch.allclose(got["net.2.weight"], estimate_fisher(model, task)["net.2.weight"])


def test_modes_grads_and_requires_grad_are_restored() -> None:
    torch.manual_seed(0)
    model = Net(nn.Linear(6, 8), nn.Dropout(0.5), nn.ReLU(), nn.Linear(8, 3))
    task = image_task()
    model.train()
    model.get_submodule("net.1").eval()
    linear(model, 0).weight.grad = marker = torch.ones_like(linear(model, 0).weight)
    linear(model, 0).bias.requires_grad_(False)
    with_dropout_off = estimate_fisher(model, task)
    assert_same_fisher(with_dropout_off, estimate_fisher(model, task))  # deterministic: eval
    assert model.training
    assert model.get_submodule("net.0").training
    assert not model.get_submodule("net.1").training
    assert linear(model, 0).weight.grad is marker
    assert bool((marker == 1).all())
    assert linear(model, 3).weight.grad is None
    assert "net.0.bias" not in with_dropout_off
    frozen = estimate_fisher(model, task, params={"net.0.bias": param(model, "net.0.bias")})
    assert float(frozen["net.0.bias"].sum()) > 0
    assert not linear(model, 0).bias.requires_grad


def test_errors() -> None:
    model, task = mlp(), image_task()
    with pytest.raises(RetainError, match="not parameters"):
        estimate_fisher(model, task, params={"net.9.weight": param(model, "net.0.weight")})
    with pytest.raises(RetainError, match="not parameters"):  # right name, other model's tensor
        estimate_fisher(model, task, params={"net.0.weight": param(mlp(), "net.0.weight")})
    with pytest.raises(RetainError, match="no examples"):
        estimate_fisher(model, task, max_samples=0)
    with pytest.raises(RetainError, match="estimator"):
        estimate_fisher(model, task, estimator="fisher")  # type: ignore[arg-type]
    bad = Task(
        "bad",
        [*task.examples[:3], {**task.examples[3], "pixel_values": torch.full((6,), float("nan"))}],
    )
    with pytest.raises(RetainError, match="example 3"):
        estimate_fisher(model, bad, engine="loop")
    with pytest.raises(RetainError, match="example 3"):
        estimate_fisher(model, bad, engine="hooks")


def test_unsupported_module_falls_back_or_raises() -> None:
    torch.manual_seed(0)
    model, task = TwoInputs(), image_task()
    with pytest.raises(RetainError, match=r"'bilinear'.*engine='loop'"):
        estimate_fisher(model, task, engine="hooks")
    with pytest.warns(UserWarning, match="bilinear"):
        auto = estimate_fisher(model, task)
    assert_same_fisher(auto, hand_empirical(model, task))
    torch.manual_seed(0)
    outside = OutsideUse()
    with pytest.raises(RetainError, match=r"'lin.weight'.*2 times.*engine='loop'"):
        estimate_fisher(outside, task, engine="hooks")
    with pytest.warns(UserWarning, match="lin.weight"):
        auto = estimate_fisher(outside, task)
    assert_same_fisher(auto, hand_empirical(outside, task))


def _rank_fisher(rank: int, init: str, out: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        model, task = mlp(), image_task(n=8)
        half = task.with_examples(task.examples[4 * rank : 4 * rank + 4])
        result = {
            estimator: estimate_fisher(model, half, estimator=estimator, batch_size=2)
            for estimator in ESTIMATORS
        }
        if rank == 0:
            torch.save(result, out)
    finally:
        torch.distributed.destroy_process_group()


def test_two_gloo_ranks_equal_one_process(tmp_path: Path) -> None:
    out = tmp_path / "fisher.pt"
    init = f"file://{tmp_path / 'rendezvous'}"
    spawn(_rank_fisher, args=(init, str(out)), nprocs=2)  # type: ignore[no-untyped-call]
    got = torch.load(out)
    model, task = mlp(), image_task(n=8)
    for estimator in ESTIMATORS:
        ref = estimate_fisher(model, task, estimator=estimator, batch_size=2)
        assert_same_fisher(got[estimator], ref, tol=1e-6)


@pytest.mark.parametrize("engine", ["hooks", "loop"])
def test_progress_reports_the_samples_done_after_each_batch(engine: str) -> None:
    seen: list[tuple[int, int]] = []
    estimate_fisher(
        mlp(), image_task(n=10), batch_size=4, engine=engine, progress=lambda *a: seen.append(a)
    )
    assert seen == [(4, 10), (8, 10), (10, 10)]


@pytest.mark.parametrize("estimator", ["empirical", "true"])
def test_micro_batches_within_a_memory_budget_equal_one_batch(estimator: FisherEstimator) -> None:
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(60, tie_word_embeddings=True))
    task = Task("lm", token_examples(9, 60, None), objective=CausalLM(), collate=pad_collate(0))
    whole = estimate_fisher(model, task, estimator=estimator, batch_size=9, max_memory=2**40)
    one_by_one = estimate_fisher(model, task, estimator=estimator, batch_size=9, max_memory=1)
    for name, value in whole.items():  # 1e-6 of each tensor's largest entry: float32 rounding
        atol = 1e-6 * float(value.abs().max())
        torch.testing.assert_close(one_by_one[name], value, rtol=1e-6, atol=atol)
    with pytest.raises(RetainError, match="memory budget"):
        estimate_fisher(model, task, max_memory=0)
