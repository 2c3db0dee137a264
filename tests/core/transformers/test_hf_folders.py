"""Opening Hugging Face and sentence-transformers folders: the model, its input, its tree."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from studio.core.errors import ModelLoadError
from studio.core.models.hf import FORMAT
from studio.core.models.loader import open_model
from studio.core.workspace import open_workspace
from tests.core.transformers.conftest import TINY, save_tiny_bert

transformers = pytest.importorskip("transformers")

IDS = torch.tensor([[2, 17, 45, 9, 3, 0, 0], [2, 5, 6, 7, 8, 9, 3]])


def test_a_sentence_transformer_folder_gives_its_pooled_embedding(tiny_bert: Path) -> None:
    loaded = open_model(tiny_bert)
    assert loaded.format == FORMAT and loaded.example is not None
    assert loaded.example.shape == (1, TINY["max_position_embeddings"])
    assert loaded.example.dtype == "int64"
    assert loaded.metadata["output"] == "sentence embedding (mean pooling, normalized)"
    reference = transformers.BertModel.from_pretrained(tiny_bert).eval()
    mask = (IDS != 0).long()
    with torch.no_grad():
        embedding = loaded.module(IDS)
        hidden = reference(input_ids=IDS, attention_mask=mask).last_hidden_state
    weights = mask.unsqueeze(-1).float()
    expected = F.normalize((hidden * weights).sum(1) / weights.sum(1), dim=-1)
    assert embedding.shape == (2, TINY["hidden_size"])
    torch.testing.assert_close(embedding, expected, atol=1e-5, rtol=1e-5)


def test_padding_does_not_change_the_embedding(tiny_bert: Path) -> None:
    model = open_model(tiny_bert).module
    short = torch.tensor([[2, 17, 45, 9, 3]])
    padded = F.pad(short, (0, 11), value=0)
    with torch.no_grad():
        torch.testing.assert_close(model(short), model(padded), atol=1e-5, rtol=1e-5)


def test_the_tree_names_encoder_blocks_attention_and_ffn(tiny_bert: Path) -> None:
    tree = open_workspace(str(tiny_bert)).tree
    roles = {node.name: node.role for node in tree.nodes if node.role}
    assert roles == {
        "model.embeddings": "embeddings",
        **{f"model.encoder.layer.{i}": "encoder block" for i in range(2)},
        **{f"model.encoder.layer.{i}.attention": "attention" for i in range(2)},
        **{f"model.encoder.layer.{i}.intermediate": "FFN" for i in range(2)},
        **{f"model.encoder.layer.{i}.intermediate.dense": "FFN" for i in range(2)},
    }
    assert tree.get("model.encoder.layer.0.attention").heads == 4
    attention = tree.get("model.encoder.layer.1.attention").id
    assert [n.name for n in tree.nodes if n.head_of == attention] == [
        f"model.encoder.layer.1.attention.self{part}" for part in ("", ".query", ".key", ".value")]
    assert tree.root.total_macs > 0


def test_plain_and_classifier_folders(tmp_path: Path) -> None:
    plain = open_model(save_tiny_bert(tmp_path / "plain", sentence_transformer=False))
    classifier = open_model(save_tiny_bert(tmp_path / "cls", sentence_transformer=False,
                                           classifier=True))
    with torch.no_grad():
        hidden = plain.module(IDS)
        assert hidden.shape == (2, 7, TINY["hidden_size"])
        assert classifier.module(IDS).shape == (2, 3)
    real = IDS.ne(TINY["pad_token_id"])
    assert (hidden.abs().sum(-1) > 0).equal(real)  # padding positions are zero
    assert (plain.metadata["output"], classifier.metadata["output"]) == (
        "last_hidden_state", "logits")


def test_without_transformers_the_error_says_what_to_install(
        tiny_bert: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers -> ImportError
    with pytest.raises(ModelLoadError, match=r"install compression-studio\[transformers\]"):
        open_model(tiny_bert)


@pytest.mark.parametrize(("change", "message"), [
    (lambda f: _edit_config(f, auto_map={"AutoModel": "modeling_x.XModel"}),
     "never runs such code"),
    (lambda f: (f / "model.safetensors").unlink(), "no .safetensors weights"),
    (lambda f: _edit_config(f, model_type="no-such-model"), "cannot load model type"),
    (lambda f: _edit_config(f, hidden_size=48, num_attention_heads=4), "do not fit"),
    (lambda f: (f / "config.json").write_text("{not json"), "not readable JSON"),
    (lambda f: (f / "1_Pooling" / "config.json").write_text(json.dumps(
        {"pooling_mode_weightedmean_tokens": True})), "pooling"),
])
def test_bad_folders_are_refused_with_the_reason(tiny_bert: Path, tmp_path: Path,
                                                 change, message: str) -> None:
    folder = Path(shutil.copytree(tiny_bert, tmp_path / "model"))
    change(folder)
    with pytest.raises(ModelLoadError, match=message):
        open_model(folder)


def test_a_folder_without_config_is_not_a_model(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"a folder without config\.json"):
        open_model(tmp_path)


def _edit_config(folder: Path, **changes: object) -> None:
    path = folder / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_cli_inspect_names_the_transformer_roles(capsys, tiny_bert: Path) -> None:
    from studio.cli.main import main

    assert main(["inspect", str(tiny_bert), "--depth", "6"]) == 0
    text = capsys.readouterr().out
    assert "BertAttention · attention" in text and "BertLayer · encoder block" in text
    assert main(["inspect", str(tiny_bert), "--json"]) == 0
    layers = json.loads(capsys.readouterr().out)["layers"]
    assert {layer["role"] for layer in layers} >= {"embeddings", "encoder block", "attention",
                                                   "FFN"}
