"""Load a model folder's tokenizer, refusing one that would silently ruin an evaluation.

A folder without tokenizer files used to pass: ``AutoTokenizer`` then builds a tokenizer of the
config's class with no vocabulary (a BERT one knows only its 5 special tokens), every word becomes
``[UNK]``, and an audit reported a model identical to its base as having forgotten everything. So
a local folder must hold tokenizer files, a loaded tokenizer must turn plain English into something
other than unknown tokens, and every id it can produce must be a row of the model's embedding.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from retain.errors import RetainError

__all__ = [
    "TOKENIZER_FILES",
    "check_tokenizer_files",
    "check_tokenizer_works",
    "check_vocab_fits",
    "load_tokenizer",
]

#: Any one of these means the folder carries its own tokenizer (a vocabulary, a serialized fast
#: tokenizer, a SentencePiece model, or a ``tokenizer_config.json`` naming a vocabulary-free class).
TOKENIZER_FILES: tuple[str, ...] = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "vocab.json",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
)
_FIX = (
    "copy the tokenizer files from the base model into it, or save the tokenizer with "
    "save_pretrained"
)
_SAMPLE = "The quick brown fox jumps over the lazy dog near the river bank."


def check_tokenizer_files(folder: str | Path) -> None:
    """Refuse a model folder with no tokenizer file at all (see :data:`TOKENIZER_FILES`).

    A GGUF file counts too: it embeds its tokenizer.
    """
    path = Path(folder).expanduser()
    if any((path / f).is_file() for f in TOKENIZER_FILES) or any(path.glob("*.gguf")):
        return
    raise RetainError(
        f"model folder {str(folder)!r} has no tokenizer files (tokenizer.json, "
        f"tokenizer_config.json, vocab.txt ...); {_FIX}"
    )


def check_tokenizer_works(tokenizer: Any, where: str) -> None:
    """Refuse a tokenizer that turns an English sentence into nothing or only unknown tokens.

    That is what a tokenizer without its vocabulary does (``transformers`` builds one when the
    files are missing); a real tokenizer of any language family covers plain ASCII words.
    """
    ids = list(tokenizer(_SAMPLE, add_special_tokens=False)["input_ids"])
    unk = getattr(tokenizer, "unk_token_id", None)
    if ids and (unk is None or any(i != unk for i in ids)):
        return
    what = "no tokens" if not ids else f"only unknown tokens ({tokenizer.unk_token})"
    raise RetainError(
        f"the tokenizer of {where!r} turns plain English into {what}: its vocabulary is missing "
        f"({len(tokenizer)} tokens); {_FIX}"
    )


def check_vocab_fits(model: torch.nn.Module, tokenizer: Any, where: str) -> None:
    """Refuse a tokenizer that produces ids past the model's input embedding.

    Every id below ``len(tokenizer)`` can come out of the tokenizer; each must be a row of
    ``model.get_input_embeddings()``. More rows than tokens is normal (padded for speed).
    """
    get = getattr(model, "get_input_embeddings", None)
    if get is None:
        return
    try:
        embedding = get()
    except (NotImplementedError, AttributeError):
        return
    rows = getattr(embedding, "num_embeddings", None)
    if not isinstance(rows, int) or len(tokenizer) <= rows:
        return
    raise RetainError(
        f"the tokenizer of {where!r} has {len(tokenizer)} tokens but the model's input embedding "
        f"has only {rows} rows; use the tokenizer the model was trained with (or resize the "
        "embedding with model.resize_token_embeddings(len(tokenizer)) and save both)"
    )


def load_tokenizer(folder: str, trust_remote_code: bool = False) -> Any:
    """The tokenizer of ``folder`` (a model folder or hub id), with ``pad_token`` set to
    ``eos_token`` when it has none.

    A local folder without tokenizer files, or a tokenizer that turns plain English into unknown
    tokens only (its vocabulary is missing), is a :class:`RetainError` naming the folder.
    """
    from transformers import AutoTokenizer

    local = Path(folder).expanduser().is_dir()
    if local:
        check_tokenizer_files(folder)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        if not local:
            raise
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise RetainError(f"cannot load the tokenizer of {folder!r}: {first}; {_FIX}") from exc
    check_tokenizer_works(tokenizer, folder)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
