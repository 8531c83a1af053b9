"""TaskHeads: one head per task over a shared encoder; routing, isolation, init, pooling."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import BertModel

from retain.data.task_heads import TaskHeads, head_seed
from retain.data.text import TextClassificationTask, text_classification_task
from retain.errors import RetainError
from retain.evaluation.task_accuracy import task_accuracy
from retain.training.loop import TrainConfig, train_task
from tiny_models import bert_tokenizer, tiny_bert_config

POSITIVE = ["a good film", "good acting", "really good", "good and fun", "so good", "good story"]
NEGATIVE = ["a bad film", "bad acting", "really bad", "bad and dull", "so bad", "bad story"]


@pytest.fixture(scope="module")
def tok() -> Any:
    return bert_tokenizer()


def encoder(tok: Any, seed: int = 0) -> BertModel:
    torch.manual_seed(seed)
    config = tiny_bert_config(len(tok), hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertModel(config)


def sentiment_task(tok: Any, name: str = "sentiment") -> TextClassificationTask:
    texts = POSITIVE + NEGATIVE
    labels = ["pos"] * len(POSITIVE) + ["neg"] * len(NEGATIVE)
    return text_classification_task(name, tok, texts, labels, max_length=16)


def batch(tok: Any) -> dict[str, torch.Tensor]:
    enc = tok(
        ["a short one", "a somewhat longer question here?"], padding=True, return_tensors="pt"
    )
    return dict(enc)


def test_routing_gives_each_tasks_logits_and_unknown_tasks_are_refused(tok: Any) -> None:
    model = TaskHeads(encoder(tok), 32, {"trec": 6, "spam": 2}).eval()
    assert model.active_task == "trec"  # the first head added
    assert model(**batch(tok)).shape == (2, 6)
    model.use_task("spam")
    assert model.active_task == "spam"
    assert model(**batch(tok)).shape == (2, 2)
    model.add_task("news", 9)
    assert model.active_task == "spam"  # adding does not switch
    assert model.tasks == {"trec": 6, "spam": 2, "news": 9}
    with pytest.raises(
        RetainError, match=r"no head for task 'nope' \(heads: 'trec', 'spam', 'news'\)"
    ):
        model.use_task("nope")
    names = {n for n, _ in model.named_parameters() if n.startswith("heads.")}
    assert names == {f"heads.{t}.{p}" for t in ("trec", "spam", "news") for p in ("weight", "bias")}


@pytest.mark.parametrize(
    ("name", "labels", "needle"),
    [
        ("a.b", 2, "contains '.'"),
        ("trec", 3, "already has a head"),
        ("keys", 2, "reserved"),
        ("", 2, "non-empty"),
        ("x", 1, "num_labels must be an int >= 2"),
    ],
)
def test_bad_heads_are_refused(tok: Any, name: str, labels: int, needle: str) -> None:
    model = TaskHeads(encoder(tok), 32, {"trec": 6})
    with pytest.raises(RetainError, match=needle):
        model.add_task(name, labels)


def test_no_head_and_bad_settings_are_refused(tok: Any) -> None:
    with pytest.raises(RetainError, match="call add_task"):
        TaskHeads(encoder(tok), 32)(**batch(tok))
    with pytest.raises(RetainError, match="unknown pooling"):
        TaskHeads(encoder(tok), 32, pooling="max")  # type: ignore[arg-type]
    with pytest.raises(RetainError, match="hidden_size=16"):
        TaskHeads(encoder(tok), 16, {"a": 2})(**batch(tok))


def test_training_task_b_leaves_head_a_bit_identical_while_the_encoder_moves(tok: Any) -> None:
    model = TaskHeads(encoder(tok), 32, {"a": 3, "sentiment": 2}, dropout=0.1)
    head_a = {k: v.clone() for k, v in model.heads["a"].state_dict().items()}
    head_b = model.heads["sentiment"].weight.detach().clone()
    enc_before = model.encoder.embeddings.word_embeddings.weight.detach().clone()
    model.use_task("sentiment")
    config = TrainConfig(lr=1e-2, batch_size=4, max_steps=3, weight_decay=0.01)
    train_task(model, sentiment_task(tok), None, config)
    for key, value in model.heads["a"].state_dict().items():
        assert torch.equal(value, head_a[key])
    assert not torch.equal(model.heads["sentiment"].weight, head_b)
    assert not torch.equal(model.encoder.embeddings.word_embeddings.weight, enc_before)


def test_gradients_reach_only_the_active_head(tok: Any) -> None:
    model = TaskHeads(encoder(tok), 32, {"a": 3, "b": 2})
    model.use_task("b")
    model(**batch(tok)).sum().backward()
    assert model.heads["a"].weight.grad is None
    assert model.heads["a"].bias.grad is None
    grad = model.heads["b"].weight.grad
    assert grad is not None
    assert grad.abs().sum() > 0
    assert model.encoder.embeddings.word_embeddings.weight.grad is not None


def test_head_init_is_deterministic_by_name_and_leaves_the_global_rng_alone(tok: Any) -> None:
    enc = encoder(tok)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    one = TaskHeads(enc, 32, {"trec": 6, "spam": 2})
    assert torch.equal(torch.get_rng_state(), state)
    two = TaskHeads(enc, 32, {"spam": 2, "trec": 6})  # order does not matter
    for name in ("trec", "spam"):
        assert torch.equal(one.heads[name].weight, two.heads[name].weight)
        assert one.heads[name].bias.eq(0).all()
    g = torch.Generator().manual_seed(head_seed("trec"))
    assert torch.equal(one.heads["trec"].weight, torch.empty(6, 32).normal_(0, 0.02, generator=g))
    assert not torch.equal(one.heads["spam"].weight, one.heads["trec"].weight[:2])
    wide = TaskHeads(enc, 32)
    wide.add_task("x", 500)
    assert abs(wide.heads["x"].weight.std().item() - 0.02) < 0.001  # 16,000 draws
    seeded = TaskHeads(enc, 32)
    seeded.add_task("y", 6, seed=head_seed("trec"))
    assert torch.equal(seeded.heads["y"].weight, one.heads["trec"].weight)


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_pooling_equals_a_hand_computation_with_padding(tok: Any, pooling: Any) -> None:
    model = TaskHeads(encoder(tok), 32, {"t": 4}, pooling=pooling).eval()
    inputs = batch(tok)
    lengths = inputs["attention_mask"].sum(1).tolist()
    assert lengths[0] < inputs["input_ids"].shape[1]  # the first row is padded
    with torch.no_grad():
        hidden = model.encoder(**inputs).last_hidden_state
        head = model.heads["t"]
        expected = []
        for row, n in enumerate(lengths):
            pooled = hidden[row, :n].mean(0) if pooling == "mean" else hidden[row, 0]
            expected.append(head.weight @ pooled + head.bias)
        got = model(**inputs)
    assert torch.allclose(got, torch.stack(expected), atol=1e-6)


def test_state_dict_round_trip_restores_every_head(tok: Any) -> None:
    model = TaskHeads(encoder(tok, seed=0), 32, {"a": 3, "b": 2}).eval()
    with torch.no_grad():
        model.heads["b"].bias.fill_(0.5)
    copy = TaskHeads(encoder(tok, seed=1), 32, model.tasks).eval()
    copy.load_state_dict(model.state_dict())
    inputs = batch(tok)
    for name in ("a", "b"):
        model.use_task(name)
        copy.use_task(name)
        with torch.no_grad():
            assert torch.equal(model(**inputs), copy(**inputs))


def test_trains_with_train_task_on_a_text_classification_task(tok: Any) -> None:
    task = sentiment_task(tok)
    model = TaskHeads(encoder(tok), 32, {"other": 5, task.name: task.num_labels}, dropout=0.0)
    model.use_task(task.name)
    before = task_accuracy(model, task)
    log = train_task(model, task, None, TrainConfig(lr=1e-2, batch_size=12, epochs=10))
    assert log.steps == 10
    assert log.losses[-1] < log.losses[0] / 2
    assert task_accuracy(model, task) == 1.0 > before


def test_from_encoder_folder_reads_the_hidden_size(tiny_bert_dir: Path, tok: Any) -> None:
    model = TaskHeads.from_encoder_folder(str(tiny_bert_dir), {"a": 3}, pooling="mean")
    assert model.hidden_size == 32
    assert not model.training
    reference = BertModel.from_pretrained(tiny_bert_dir).eval()
    inputs = batch(tok)
    with torch.no_grad():
        assert torch.equal(
            model.encoder(**inputs).last_hidden_state, reference(**inputs).last_hidden_state
        )
        assert model(**inputs).shape == (2, 3)
    with pytest.raises(RetainError, match="no such model folder"):
        TaskHeads.from_encoder_folder("./missing-folder", {"a": 3})


def test_task_head_routes_every_row_through_its_own_head(tok: Any) -> None:
    model = TaskHeads(encoder(tok), 32, {"trec": 6, "spam": 2}).eval()
    inputs = batch(tok)
    own = []
    for name in ("spam", "trec"):
        model.use_task(name)
        own.append(model(**inputs))
    routed = model(**inputs, task_head=torch.tensor([1, 0]))  # row 0 -> spam, row 1 -> trec
    assert routed.shape == (2, 6)
    assert torch.allclose(routed[0, :2], own[0][0], atol=1e-6)
    assert torch.allclose(routed[1], own[1][1], atol=1e-6)
    assert bool((routed[0, 2:] == torch.finfo(routed.dtype).min).all())  # padding never wins
    loss = torch.nn.functional.cross_entropy(routed, torch.tensor([1, 4]))
    expected = (
        torch.nn.functional.cross_entropy(own[0][:1], torch.tensor([1]))
        + torch.nn.functional.cross_entropy(own[1][1:], torch.tensor([4]))
    ) / 2
    assert torch.allclose(loss, expected)
    loss.backward()
    assert all(p.grad is not None for p in model.heads.parameters())
    with pytest.raises(RetainError, match=r"task_head holds indices outside 0\.\.1"):
        model(**inputs, task_head=torch.tensor([0, 2]))


@pytest.mark.parametrize(
    "strategy", [{"name": "replay", "ratio": 0.5}, {"name": "agem", "memory_size": 12}]
)
def test_replay_and_agem_train_task_heads_with_each_examples_own_head(
    tok: Any, strategy: dict[str, Any]
) -> None:
    from retain.data.permuted import TaskSplit
    from retain.strategies.chain import chain
    from retain.training.sequence import fit_sequence

    six = text_classification_task(
        "six", tok, POSITIVE + NEGATIVE, [k % 6 for k in range(12)], max_length=16
    )
    two = sentiment_task(tok, "two")
    model = TaskHeads(encoder(tok), 32, {"six": 6, "two": 2})
    splits = [TaskSplit(six, six), TaskSplit(two, two)]
    _, result = fit_sequence(
        model, splits, chain([strategy]), TrainConfig(lr=1e-2, batch_size=6), progress=False
    )
    assert len(result.matrix) == 2  # a 6-class example replayed under the 2-class task trains


def test_lora_on_task_heads_adapts_query_value_and_trains_every_head(tok: Any) -> None:
    from retain.strategies.chain import chain

    model = TaskHeads(encoder(tok), 32, {"other": 3, "sentiment": 2}, dropout=0.0)
    strategies = chain([{"name": "lora", "r": 4}])
    wrapped = strategies.prepare(model)
    trainable = {n for n, p in wrapped.named_parameters() if p.requires_grad}
    assert any(".query.lora_A." in n for n in trainable)
    assert any(".value.lora_B." in n for n in trainable)
    assert not any(".key." in n or ".dense.lora" in n for n in trainable)
    for head in ("other", "sentiment"):
        assert f"base_model.model.heads.{head}.modules_to_save.default.weight" in trainable
    task = sentiment_task(tok)
    model.use_task(task.name)
    train_task(wrapped, task, strategies, TrainConfig(lr=1e-2, batch_size=6, epochs=10))
    assert task_accuracy(wrapped, task) == 1.0


def test_replay_routes_through_heads_wrapped_by_lora(tok: Any) -> None:
    from retain.data.permuted import TaskSplit
    from retain.strategies.chain import chain
    from retain.training.sequence import fit_sequence

    six = text_classification_task(
        "six", tok, POSITIVE + NEGATIVE, [k % 6 for k in range(12)], max_length=16
    )
    two = sentiment_task(tok, "two")
    model = TaskHeads(encoder(tok), 32, {"six": 6, "two": 2})
    strategies = chain([{"name": "lora", "r": 4}, {"name": "replay", "ratio": 0.5}])
    _, result = fit_sequence(
        model,
        [TaskSplit(six, six), TaskSplit(two, two)],
        strategies,
        TrainConfig(lr=1e-2, batch_size=6),
        progress=False,
    )
    assert len(result.matrix) == 2
    assert model.tasks == {"six": 6, "two": 2}  # heads seen through PEFT's wrapper


def test_representation_probes_read_the_shared_encoder(tok: Any) -> None:
    from retain.evaluation.representation import KNNProbe

    texts, labels = POSITIVE + NEGATIVE, [1] * 6 + [0] * 6
    probe = KNNProbe("sentiment_knn", texts, labels, texts, labels, k=3)
    shared = encoder(tok)
    on_heads = probe.evaluate(TaskHeads(shared, 32, {"a": 2}), tok)
    on_encoder = KNNProbe("again", texts, labels, texts, labels, k=3).evaluate(shared, tok)
    assert on_heads.score == on_encoder.score
    assert on_heads.details["n_test"] == 12
