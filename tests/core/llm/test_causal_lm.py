"""Causal LM folders open as next-token-logit models with their parts marked in the tree;
perplexity is exp of the mean next-token loss, in torch and in onnxruntime; the ONNX export
has free batch and sequence axes."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch.utils.data import TensorDataset

from studio.core.errors import ModelLoadError, StudioError
from studio.core.export.measure import run_onnx, score_outputs
from studio.core.export.onnx_export import export_onnx
from studio.core.models.generate import greedy_ids
from studio.core.models.loader import open_model
from studio.core.plan.stages import DataSection
from studio.core.train.loop import evaluate
from studio.core.workspace import open_workspace

from .conftest import VOCAB


def _hand_perplexity(logits: np.ndarray, ids: np.ndarray) -> float:
    """exp of the mean over every position but the last of -log softmax(logits)[next token]."""
    losses = []
    for row, tokens in zip(logits.astype(np.float64), ids, strict=True):
        for position in range(len(tokens) - 1):
            scores = row[position]
            log_total = np.log(np.exp(scores - scores.max()).sum()) + scores.max()
            losses.append(log_total - scores[tokens[position + 1]])
    return float(np.exp(np.mean(losses)))


def test_llama_folder_gives_next_token_logits(tiny_llama: Path) -> None:
    loaded = open_model(tiny_llama)
    ids = torch.randint(0, VOCAB, (2, 9))
    logits = loaded.module(ids)
    assert logits.shape == (2, 9, VOCAB)
    assert loaded.metadata["output"] == "next-token logits"
    assert loaded.metadata["lm_head"] == "its own weights"
    # causal: changing the last token leaves every earlier position's logits as they were
    changed = ids.clone()
    changed[:, -1] = (changed[:, -1] + 1) % VOCAB
    assert torch.allclose(loaded.module(changed)[:, :-1], logits[:, :-1], atol=1e-6)
    assert not torch.allclose(loaded.module(changed)[:, -1], logits[:, -1])


def test_tree_marks_decoder_parts_of_llama_and_gpt2(tiny_llama: Path, tiny_gpt2: Path) -> None:
    llama = open_workspace(str(tiny_llama)).tree
    attention = llama.get("model.model.layers.0.self_attn")
    assert (attention.role, attention.query_heads, attention.kv_heads) == ("attention", 4, 2)
    assert llama.get("model.model.layers.1").role == "decoder block"
    assert llama.get("model.model.layers.0.mlp").role == "MLP"
    assert [llama.get(f"model.model.layers.0.mlp.{p}_proj").role
            for p in ("gate", "up", "down")] == ["MLP gate", "MLP up", "MLP down"]
    assert llama.get("model.model.embed_tokens").role == "embeddings"
    head = llama.get("model.lm_head")
    assert head.role == "LM head" and head.tied_to is None

    gpt2 = open_workspace(str(tiny_gpt2)).tree
    attention = gpt2.get("model.transformer.h.0.attn")
    assert (attention.query_heads, attention.kv_heads) == (4, 4)
    assert gpt2.get("model.transformer.h.0.mlp.c_proj").role == "MLP down"
    assert gpt2.get("model.transformer.h.0.attn.c_proj").role == "attention output"
    head = gpt2.get("model.lm_head")
    assert head.role == "LM head"
    assert head.tied_to == gpt2.get("model.transformer.wte").id
    assert "tied" in head.type_label


def test_perplexity_is_exp_of_mean_token_loss_in_torch_and_onnxruntime(
        tiny_llama: Path, tmp_path: Path) -> None:
    model = open_model(tiny_llama).module
    ids = torch.randint(0, VOCAB, (5, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = _hand_perplexity(model(ids).numpy(), ids.numpy())
    data = TensorDataset(ids)
    assert evaluate(model, data, metric="perplexity", batch_size=2) == pytest.approx(
        expected, rel=1e-9)
    path = export_onnx(model, ids[:1], tmp_path / "llama.onnx")
    in_ort = score_outputs(run_onnx(path, ids), data, "perplexity", None)
    assert in_ort == pytest.approx(expected, rel=1e-4)
    assert expected > 1.0


def test_perplexity_refuses_outputs_that_are_not_logits() -> None:
    from studio.core.data.metrics import score

    with pytest.raises(StudioError, match="not next-token logits"):
        score("perplexity", np.zeros((2, 8)), np.zeros((2, 8), dtype=np.int64))
    with pytest.raises(StudioError, match="outside the model's 4 logits"):
        score("perplexity", np.zeros((1, 3, 4)), np.array([[0, 1, 9]]))


def test_perplexity_asked_of_a_model_without_logits_is_refused() -> None:
    from studio.core.data.split import metric_for_output
    from studio.core.data.task import TaskData

    section = DataSection(source="arrays", path="x.npz", metric="perplexity")
    data = TaskData(TensorDataset(torch.zeros(2, 4)), TensorDataset(torch.zeros(2, 4)),
                    TensorDataset(torch.zeros(2, 4)), None, "x", labelled=False,
                    metric="perplexity")
    with pytest.raises(StudioError, match=r"needs next-token logits .* is \[N, 32\]"):
        metric_for_output(section, data, "output", ("N", 32), "recipe")
    assert metric_for_output(section, data, "output", ("N", 8, 50), "recipe").metric == \
        "perplexity"


def test_export_has_free_batch_and_sequence_and_matches_torch(tiny_gpt2: Path,
                                                              tmp_path: Path) -> None:
    model = open_model(tiny_gpt2).module
    path = export_onnx(model, torch.zeros(1, 16, dtype=torch.int64), tmp_path / "gpt2.onnx")
    graph = onnx.load(str(path)).graph
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims[0] == "batch" and isinstance(dims[1], str)
    ids = torch.randint(0, VOCAB, (3, 23))
    with torch.no_grad():
        expected = model(ids).numpy()
    assert np.abs(run_onnx(path, ids) - expected).max() < 1e-4
    # plans map onto the file by parameter names: the weights keep them
    names = {tensor.name for tensor in graph.initializer}
    assert "model.transformer.h.0.mlp.c_fc.weight" in names


def test_greedy_continuation_takes_the_arg_max_each_step(tiny_llama: Path) -> None:
    model = open_model(tiny_llama).module
    prompt = torch.tensor([5, 6, 7])
    ids = greedy_ids(model, prompt, 4)
    assert len(ids) == 7 and torch.equal(ids[:3], prompt)
    with torch.no_grad():
        for step in range(3, 7):
            assert int(model(ids[None, :step])[0, -1].argmax()) == int(ids[step])


def test_a_gguf_file_that_is_not_one_is_a_clear_error(tmp_path: Path) -> None:
    pytest.importorskip("gguf")
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 40)
    with pytest.raises(ModelLoadError, match="not a readable GGUF file"):
        open_model(bad)
    renamed = tmp_path / "model.bin"
    shutil.copy(bad, renamed)
    with pytest.raises(ModelLoadError, match="GGUF"):
        open_model(renamed)  # found by its first bytes


def test_a_notable_rise_in_perplexity_gets_a_note_and_a_fall_does_not() -> None:
    from studio.core.engine.notes import honesty_notes

    def figures(value: float) -> dict[str, object]:
        return {"metric": {"name": "perplexity", "value": value, "higher_is_better": False},
                "latency_ms": {}, "onnx_bytes": 100, "zip_bytes": 50}

    notes = honesty_notes(figures(20.0), figures(30.0), 0, False)
    assert any("Perplexity rose from 20.00 to 30.00 (1.50×" in note for note in notes)
    assert not any("Perplexity" in note for note in honesty_notes(figures(20.0), figures(19.0),
                                                                  0, False))
