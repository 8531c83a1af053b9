"""Model folders that would silently ruin an evaluation, or end in a traceback, are one-line errors.

The real MiniLM folder (config, safetensors, WordPiece tokenizer) is copied (its weights linked)
into a temporary folder and then damaged: tokenizer files removed, weights truncated or garbled.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest
import torch

from retain.assets.models import check_model_reference, load_model, load_tokenizer
from retain.assets.tokenizer_loading import check_tokenizer_works
from retain.assets.weight_files import is_corrupt_weights_error
from retain.errors import RetainError
from tiny_models import bert_tokenizer, minilm_folder, tiny_bert_config

_TOKENIZER = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def _minilm_copy(folder: Path, files: tuple[str, ...] = _TOKENIZER, weights: bool = True) -> Path:
    """MiniLM's config and the given tokenizer files in ``folder``, its weights linked."""
    source = minilm_folder()
    folder.mkdir()
    for name in ("config.json", *files):
        shutil.copy(source / name, folder / name)
    if weights:
        (folder / "model.safetensors").symlink_to(source / "model.safetensors")
    return folder


def test_a_folder_without_tokenizer_files_is_refused_naming_it(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    folder = _minilm_copy(tmp_path / "no_tokenizer", files=())
    # What transformers does with such a folder: a BERT tokenizer of 5 special tokens, all [UNK].
    fallback = AutoTokenizer.from_pretrained(folder)
    ids = fallback("the cat sat", add_special_tokens=False)["input_ids"]
    assert ids
    assert set(ids) == {fallback.unk_token_id}
    with pytest.raises(RetainError, match="only unknown tokens"):
        check_tokenizer_works(fallback, str(folder))
    pattern = f"model folder '{folder}' has no tokenizer files.*copy the tokenizer files"
    with pytest.raises(RetainError, match=pattern):
        check_model_reference(str(folder))
    with pytest.raises(RetainError, match=pattern):
        load_model(str(folder))
    with pytest.raises(RetainError, match=pattern):
        load_tokenizer(str(folder))


def test_a_tokenizer_without_its_vocabulary_fails_at_load(tmp_path: Path) -> None:
    # tokenizer_config.json alone names the class but holds no vocabulary: still all [UNK].
    folder = _minilm_copy(tmp_path / "config_only", files=("tokenizer_config.json",))
    check_model_reference(str(folder))  # the files look present; loading is what tells
    with pytest.raises(RetainError, match=f"tokenizer of '{folder}'.*only unknown tokens"):
        load_model(str(folder))


def test_a_complete_copy_loads_and_tokenizes(tmp_path: Path) -> None:
    loaded = load_model(str(_minilm_copy(tmp_path / "ok")))
    assert len(loaded.tokenizer) == 30522
    check_tokenizer_works(loaded.tokenizer, "ok")


def test_a_tokenizer_larger_than_the_embedding_is_refused(tmp_path: Path) -> None:
    from transformers import BertModel

    tokenizer = bert_tokenizer()
    for rows, fits in ((len(tokenizer) - 22, False), (len(tokenizer), True), (31000, True)):
        folder = tmp_path / f"rows{rows}"
        BertModel(tiny_bert_config(rows)).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        if fits:  # more rows than tokens is normal (embeddings padded for speed)
            assert load_model(str(folder)).model.get_input_embeddings().num_embeddings == rows
            continue
        with pytest.raises(
            RetainError,
            match=f"tokenizer of '{folder}' has 30522 tokens but the model's input embedding "
            "has only 30500 rows",
        ):
            load_model(str(folder))


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_a_damaged_safetensors_file_is_named(tmp_path: Path, damage: str) -> None:
    folder = _minilm_copy(tmp_path / damage, weights=False)
    data = (minilm_folder() / "model.safetensors").read_bytes()
    target = folder / "model.safetensors"
    if damage == "truncated":
        target.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        target.write_bytes(os.urandom(len(data)))
    else:
        target.write_bytes(b"")
    pattern = f"'{target}' is truncated or corrupt .*; re-save or re-download the model"
    with pytest.raises(RetainError, match=pattern):
        check_model_reference(str(folder))
    with pytest.raises(RetainError, match=pattern):
        load_model(str(folder), kind="encoder")


def test_a_damaged_pytorch_bin_is_named(tmp_path: Path) -> None:
    """Random bytes fail inside torch.load in many ways (a bad pickle, a UnicodeDecodeError, an
    IndexError from the unpickler's stack...): every one is named as a damaged file."""
    import random

    folder = _minilm_copy(tmp_path / "bin", weights=False)
    for seed in range(24):
        (folder / "pytorch_model.bin").write_bytes(random.Random(seed).randbytes(10_000))
        with pytest.raises(RetainError, match=f"'{folder / 'pytorch_model.bin'}' is truncated or"):
            load_model(str(folder))


def test_a_damaged_adapter_is_named(tiny_bert_dir: Path, tmp_path: Path) -> None:
    import json

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    config = {"peft_type": "LORA", "base_model_name_or_path": str(tiny_bert_dir)}
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    (adapter / "adapter_model.safetensors").write_bytes(b"\x10" * 64)
    pattern = "adapter_model.safetensors' is truncated or corrupt .*re-download the adapter"
    with pytest.raises(RetainError, match=pattern):
        check_model_reference(str(adapter))


def test_the_cli_prints_one_line_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from retain.cli import main

    folder = _minilm_copy(tmp_path / "no_tokenizer", files=())
    argv = ["audit", "--base", "minilm-l6", "--tuned", str(folder), "--suite", "encoder"]
    assert main([*argv, "--quick"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("retain: error: model folder")
    assert "\n" not in err


def test_only_damage_counts_as_a_corrupt_file() -> None:
    import pickle

    from safetensors import SafetensorError

    assert is_corrupt_weights_error(SafetensorError("header too large"))
    assert is_corrupt_weights_error(pickle.UnpicklingError("Weights only load failed"))
    assert is_corrupt_weights_error(RuntimeError("PytorchStreamReader failed reading zip archive"))
    assert not is_corrupt_weights_error(RuntimeError("size mismatch for embeddings.weight"))
    assert not is_corrupt_weights_error(OSError("no file named model.safetensors"))


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_safetensors_files_get_the_mode_of_the_json_beside_them(tmp_path: Path, umask: int) -> None:
    # Kept with the model files because write_safetensors writes checkpoint weights.
    from retain.atomic_files import write_json
    from retain.tensor_files import write_safetensors

    old = os.umask(umask)
    try:
        weights = write_safetensors(tmp_path / "model.safetensors", {"w": torch.ones(2)}, {})
        write_json(tmp_path / "state.json", {"step": 1})
    finally:
        os.umask(old)
    mode = stat.S_IMODE(weights.stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "state.json").stat().st_mode) == 0o666 & ~umask
