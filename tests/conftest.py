"""Shared fixtures: tiny random causal LMs saved as real Hugging Face folders, offline mode."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

from tiny_models import bert_tokenizer, tiny_bert_config, tiny_llama_config

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _tiny_llama(vocab_size: int, seed: int) -> Any:
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_llama_config(vocab_size, max_position_embeddings=1024)).eval()


@pytest.fixture(scope="session")
def tiny_lm_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``(base, tuned)``: a tiny random Llama and a copy with perturbed weights, as folders."""
    tokenizer = bert_tokenizer(bos=True)
    root = tmp_path_factory.mktemp("tiny_lm")
    base = _tiny_llama(len(tokenizer), seed=0)
    base.save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    with torch.no_grad():
        for p in base.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    base.save_pretrained(root / "tuned")
    tokenizer.save_pretrained(root / "tuned")
    return root / "base", root / "tuned"


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BERT encoder (``BertModel``) saved with the real MiniLM tokenizer."""
    from transformers import BertModel

    tokenizer = bert_tokenizer()
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_bert") / "bert"
    BertModel(tiny_bert_config(len(tokenizer))).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
