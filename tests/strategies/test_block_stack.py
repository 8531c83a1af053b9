"""Block-stack detection and parameter depths on BERT, GPT-2, Llama, PEFT and a custom model."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from retain.errors import RetainError
from retain.strategies.block_stack import BlockStack, detect_block_stack
from tiny_models import tiny_bert_config, tiny_llama_config


def _expected_depth(name: str, block_prefix: str, embed_prefixes: tuple[str, ...], num: int) -> int:
    """The depth written out from the architecture, independently of registration order."""
    match = re.match(re.escape(block_prefix) + r"\.(\d+)\.", name)
    if match:
        return int(match.group(1))
    return -1 if name.startswith(embed_prefixes) else num


def _tiny_bert() -> nn.Module:
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    return BertForSequenceClassification(tiny_bert_config(100))


def test_bert_depths() -> None:
    model = _tiny_bert()
    stack = detect_block_stack(model)
    assert (stack.prefix, stack.num_blocks, stack.head) == ("bert.encoder.layer", 2, 2)
    for name, _ in model.named_parameters():
        expected = _expected_depth(name, "bert.encoder.layer", ("bert.embeddings.",), 2)
        assert stack.depth(name) == expected, name
    # pooler and classifier are the head; the embeddings' LayerNorm is with the embeddings
    assert stack.depth("bert.pooler.dense.weight") == 2
    assert stack.depth("classifier.bias") == 2
    assert stack.depth("bert.embeddings.LayerNorm.weight") == -1
    assert stack.depth("no.such.parameter") is None


def test_gpt2_tied_lm_head_stays_with_embeddings() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=100, bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(cfg)
    assert model.lm_head.weight is model.transformer.wte.weight  # the tie this test is about
    stack = detect_block_stack(model)
    assert (stack.prefix, stack.num_blocks) == ("transformer.h", 2)
    for name, _ in model.named_parameters():
        expected = _expected_depth(
            name, "transformer.h", ("transformer.wte.", "transformer.wpe."), 2
        )
        assert stack.depth(name) == expected, name
    assert stack.depth("transformer.ln_f.weight") == 2
    assert stack.depth("lm_head.weight") == -1  # its duplicate name maps to the embedding's depth


def test_llama_depths() -> None:
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(tiny_llama_config(vocab_size=100))
    stack = detect_block_stack(model)
    assert (stack.prefix, stack.num_blocks) == ("model.layers", 2)
    for name, _ in model.named_parameters():
        expected = _expected_depth(name, "model.layers", ("model.embed_tokens.",), 2)
        assert stack.depth(name) == expected, name
    assert stack.depth("model.norm.weight") == stack.depth("lm_head.weight") == 2


def test_peft_lora_bert() -> None:
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        _tiny_bert(), LoraConfig(r=2, target_modules=["query", "value"], task_type="SEQ_CLS")
    )
    stack = detect_block_stack(model)
    prefix = "base_model.model.bert.encoder.layer"
    assert (stack.prefix, stack.num_blocks) == (prefix, 2)
    lora = [n for n, _ in model.named_parameters() if "lora_" in n]
    assert len(lora) == 8  # A and B of query and value in 2 blocks
    for name, _ in model.named_parameters():
        expected = _expected_depth(name, prefix, ("base_model.model.bert.embeddings.",), 2)
        assert stack.depth(name) == expected, name


class _Custom(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(4, 8)
        self.mixed = nn.ModuleList([nn.Linear(8, 64), nn.Conv1d(8, 64, 1)])  # two classes: no
        self.small = nn.ModuleList([nn.Linear(8, 8), nn.Linear(8, 8)])  # fewer parameters: no
        self.blocks = nn.ModuleList([nn.Linear(8, 8) for _ in range(3)] + [nn.Linear(8, 8)])
        self.single = nn.ModuleList([nn.Linear(8, 1024)])  # one child: no
        self.out = nn.Linear(8, 2)


def test_custom_module_list() -> None:
    model = _Custom()
    stack = detect_block_stack(model)
    assert (stack.prefix, stack.num_blocks) == ("blocks", 4)
    assert stack.depth("inp.weight") == stack.depth("small.1.bias") == -1  # before the blocks
    assert [stack.depth(f"blocks.{i}.weight") for i in range(4)] == [0, 1, 2, 3]
    assert stack.depth("single.0.weight") == stack.depth("out.bias") == 4


def test_model_that_is_a_module_list() -> None:
    model = nn.ModuleList([nn.Linear(3, 3) for _ in range(2)])
    stack = detect_block_stack(model)
    assert (stack.prefix, stack.num_blocks) == ("", 2)
    assert stack.depth("1.bias") == 1


def test_pattern_override_matches_automatic_detection() -> None:
    model = _tiny_bert()
    auto = detect_block_stack(model)
    manual = detect_block_stack(model, pattern=r"encoder\.layer\.(\d+)\.")
    assert (manual.prefix, manual.num_blocks) == ("bert.encoder.layer", 2)
    assert dict(manual.depths) == dict(auto.depths)


def test_pattern_indices_are_ranked() -> None:
    model = _Custom()
    stack = detect_block_stack(model, pattern=r"^blocks\.([13])\.")  # blocks 1 and 3 only
    assert stack.num_blocks == 2
    assert stack.depth("blocks.1.weight") == 0
    assert stack.depth("blocks.2.weight") == 0  # between two block params: joins the one before
    assert stack.depth("blocks.3.bias") == 1
    assert stack.depth("blocks.0.weight") == -1
    assert stack.depth("out.weight") == 2


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        (r"decoder\.layer\.(\d+)\.", "matches no parameter"),
        (r"encoder\.layer\.\d+\.", "no capturing group"),
        (r"encoder\.(layer)\.", "not a block index"),
        (r"encoder\.layer\.((\d+)", "not a valid regular expression"),
    ],
)
def test_bad_patterns(pattern: str, message: str) -> None:
    with pytest.raises(RetainError, match=re.escape(message)):
        detect_block_stack(_tiny_bert(), pattern=pattern)


def test_no_module_list_asks_for_a_pattern() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2))
    with pytest.raises(RetainError, match="pass pattern="):
        detect_block_stack(model)
    stack = detect_block_stack(model, pattern=r"^(\d+)\.")  # Sequential children are numbered
    assert stack.num_blocks == 2


def test_labels() -> None:
    stack = BlockStack("h", 3, {})
    assert [stack.label(d) for d in (-1, 0, 2, 3)] == ["embeddings", "block.0", "block.2", "head"]
    with pytest.raises(RetainError, match="outside"):
        stack.label(4)
