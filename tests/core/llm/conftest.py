"""Tiny random causal LMs saved as transformers saves them (no download): a LLaMA-style one
(grouped-query attention, gate/up/down MLP, untied LM head) and a GPT-2 one (packed attention,
tied LM head), each with a byte-level tokenizer of 256 byte tokens and an end-of-text token."""

from __future__ import annotations

from pathlib import Path

import pytest

transformers = pytest.importorskip("transformers")

VOCAB = 257
"""The 256 bytes and ``<eos>``."""
TEXT = ("The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs. "
        "How vexingly quick daft zebras jump! Sphinx of black quartz, judge my vow. ") * 6


def save_byte_tokenizer(folder: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {symbol: i for i, symbol in enumerate(alphabet)} | {"<eos>": len(alphabet)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<eos>"
                                         ).save_pretrained(folder)


def save_tiny_causal_lm(folder: Path, kind: str = "llama") -> Path:
    import torch

    torch.manual_seed(0)
    if kind == "llama":
        config = transformers.LlamaConfig(
            vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
            tie_word_embeddings=False, eos_token_id=VOCAB - 1, bos_token_id=None)
        model = transformers.LlamaForCausalLM(config)
    else:
        config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4,
                                         n_positions=64, eos_token_id=VOCAB - 1,
                                         bos_token_id=VOCAB - 1)
        model = transformers.GPT2LMHeadModel(config)
    model.save_pretrained(folder)
    save_byte_tokenizer(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LLaMA-style folder (read-only: copy to change)."""
    return save_tiny_causal_lm(tmp_path_factory.mktemp("tiny-llama"), "llama")


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A GPT-2 folder (read-only: copy to change)."""
    return save_tiny_causal_lm(tmp_path_factory.mktemp("tiny-gpt2"), "gpt2")
