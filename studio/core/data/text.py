"""Text for causal LMs: ``.txt``/``.jsonl`` files (or a folder of them) tokenized with the
model's own tokenizer and cut into blocks of equal length, one block per sample.

Documents are joined with the tokenizer's end-of-text token (when it has one), as language
models are trained, and the tail shorter than a block is dropped, so every block is full and
needs no padding (perplexity then weighs every token alike). A ``.jsonl`` line is a JSON string
or an object with a ``text`` field.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from studio.core.data.samples import Samples
from studio.core.errors import StudioError
from studio.core.models.hf import load_tokenizer

TEXT_SUFFIXES = (".txt", ".jsonl")


def text_files(path: Path) -> list[Path]:
    """``path`` itself, or the text files under the folder in sorted order."""
    if path.is_file():
        if path.suffix.lower() not in TEXT_SUFFIXES:
            raise StudioError(f"{path}: text data is a .txt or .jsonl file, or a folder of them")
        return [path]
    if not path.is_dir():
        raise StudioError(f"{path}: no such file or folder")
    files = sorted(p for p in path.rglob("*") if p.is_file()
                   and p.suffix.lower() in TEXT_SUFFIXES)
    if not files:
        raise StudioError(f"{path}: the folder holds no .txt or .jsonl files")
    return files


def _jsonl_documents(path: Path, text: str) -> list[str]:
    documents = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as error:
            raise StudioError(f"{path}, line {number}: not JSON ({error.msg})") from error
        if isinstance(value, dict):
            value = value.get("text")
        if not isinstance(value, str):
            raise StudioError(f"{path}, line {number}: give a JSON string or an object with a "
                              "\"text\" string")
        documents.append(value)
    return documents


def read_documents(path: Path) -> list[str]:
    """Every document of the text files at ``path``: a whole ``.txt`` file, or a ``.jsonl``
    line."""
    documents: list[str] = []
    for file in text_files(path):
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise StudioError(f"{file}: not readable UTF-8 text ({error})") from error
        documents.extend(_jsonl_documents(file, text) if file.suffix.lower() == ".jsonl"
                         else [text])
    return [document for document in documents if document.strip()]


def token_blocks(tokens: list[int], block_length: int, max_blocks: int) -> torch.Tensor:
    """Consecutive blocks of ``block_length`` tokens (int64, blocks × length), the short tail
    dropped."""
    count = min(len(tokens) // block_length, max_blocks)
    return torch.tensor(tokens[:count * block_length], dtype=torch.int64).reshape(
        count, block_length)


def read_text_blocks(path: Path, tokenizer_from: Path, block_length: int,
                     max_blocks: int) -> Samples:
    """The text at ``path`` as unlabelled blocks of token ids, tokenized with the tokenizer
    stored with the model at ``tokenizer_from`` (a folder or a ``.gguf`` file)."""
    documents = read_documents(path)
    tokenizer = load_tokenizer(tokenizer_from)
    end = tokenizer.eos_token_id
    tokens: list[int] = []
    for document in documents:
        tokens.extend(tokenizer(document, add_special_tokens=False,
                                verbose=False)["input_ids"])
        if end is not None:
            tokens.append(int(end))
    blocks = token_blocks(tokens, block_length, max_blocks)
    if len(blocks) < 2:
        raise StudioError(f"{path}: {len(tokens)} tokens make {len(blocks)} block(s) of "
                          f"{block_length}; give more text or a smaller block_length (at least "
                          "two blocks: one to train on, one to test)")
    return Samples(blocks, None, f"blocks of {block_length} tokens of the text at {path}, in "
                                 "order (files sorted by name)")
