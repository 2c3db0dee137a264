"""Tiny randomly initialised BERT folders, saved as transformers saves them (no download)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

transformers = pytest.importorskip("transformers")

TINY = {"vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 64, "max_position_embeddings": 64, "pad_token_id": 0}


def save_tiny_bert(folder: Path, sentence_transformer: bool = True,
                   classifier: bool = False) -> Path:
    """A BertModel (or BertForSequenceClassification) of random weights saved to ``folder``;
    with ``sentence_transformer`` also modules.json and a mean-pooling config."""
    import torch

    torch.manual_seed(0)
    config = transformers.BertConfig(**TINY, num_labels=3)
    cls = transformers.BertForSequenceClassification if classifier else transformers.BertModel
    cls(config).save_pretrained(folder)
    if sentence_transformer:
        modules = [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling",
             "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize",
             "type": "sentence_transformers.models.Normalize"},
        ]
        (folder / "modules.json").write_text(json.dumps(modules))
        (folder / "1_Pooling").mkdir()
        (folder / "1_Pooling" / "config.json").write_text(json.dumps(
            {"word_embedding_dimension": 32, "pooling_mode_mean_tokens": True,
             "pooling_mode_cls_token": False, "pooling_mode_max_tokens": False}))
    return folder


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sentence-transformers folder holding a tiny random BERT (read-only: copy to change)."""
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))
