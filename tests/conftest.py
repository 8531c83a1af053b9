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
os.environ["RETAIN_STRICT_RECORDS"] = "1"  # every record a test writes must match its schema


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


_SKIPPED: list[tuple[str, str]] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Remember every skipped test (not expected failures) for :func:`pytest_sessionfinish`."""
    if report.skipped and not hasattr(report, "wasxfail"):
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        _SKIPPED.append((report.nodeid, reason.removeprefix("Skipped: ")))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """With ``RETAIN_FORBID_SKIPS=1`` (CI), fail on a skip that is not on the allow-list."""
    if os.environ.get("RETAIN_FORBID_SKIPS") != "1":
        return
    from skip_guard import ALLOW_LIST, allowed_patterns, unexpected_skips

    bad = unexpected_skips(_SKIPPED, allowed_patterns(ALLOW_LIST.read_text(encoding="utf-8")))
    if bad:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        lines = [f"{len(bad)} skipped test(s) not on {ALLOW_LIST.name}:", *bad]
        for line in lines:
            if reporter is not None:
                reporter.write_line(line, red=True)
            else:
                print(line)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
