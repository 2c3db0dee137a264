"""Transformer ONNX files as Hugging Face exports write them: ``input_ids`` beside
``attention_mask`` and ``token_type_ids``, fed from a dataset of token ids alone."""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from studio.core.engine.run import run_recipe
from studio.core.errors import StudioError
from studio.core.export.measure import run_onnx
from studio.core.jobs import CancelToken, Log, Result
from studio.core.models.onnx_feeds import feeder_for
from studio.core.plan.recipe import Recipe

transformers = pytest.importorskip("transformers")

INPUTS = ("input_ids", "attention_mask", "token_type_ids")
PAD = 1  # RoBERTa's padding id: a mask built with BERT's 0 would be wrong


def _ids(rows: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 100, (rows, 10), generator=generator)
    for row in range(rows):
        ids[row, int(torch.randint(3, 11, (1,), generator=generator)):] = PAD
    return ids


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    """A tiny random BERT exported with three inputs, config.json (pad id) beside it."""
    from benchmarks.transformer_onnx import HiddenStates  # imports transformers

    folder = tmp_path_factory.mktemp("hf-onnx")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=64,
                                     pad_token_id=PAD)
    bert = transformers.BertModel(config).eval()
    ids = _ids(2, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        example = (ids, (ids != PAD).long(), torch.zeros_like(ids))
        torch.onnx.export(HiddenStates(bert).eval(), example, str(folder / "model.onnx"),
                          dynamo=False, opset_version=17, input_names=list(INPUTS),
                          output_names=["last_hidden_state"],
                          dynamic_axes={name: {0: "batch", 1: "sequence"} for name in INPUTS})
    (folder / "config.json").write_text(json.dumps({"pad_token_id": PAD}))
    return folder / "model.onnx", bert


def test_the_derived_inputs_reproduce_what_the_model_gives_with_its_real_mask(
        exported: tuple[Path, torch.nn.Module]) -> None:
    path, bert = exported
    feeder = feeder_for(onnx.load(str(path)), path)
    assert (feeder.main.name, feeder.pad_token_id) == ("input_ids", PAD)
    assert "from config.json" in feeder.describe()
    ids = _ids(6, 1)
    with torch.no_grad():
        expected = bert(input_ids=ids, attention_mask=(ids != PAD).long()).last_hidden_state
    np.testing.assert_allclose(run_onnx(path, ids, feed=feeder), expected.numpy(), atol=1e-4)
    wrong = dataclasses.replace(feeder, pad_token_id=0)  # BERT's id: the mask would be wrong
    assert np.abs(run_onnx(path, ids, feed=wrong) - expected.numpy()).max() > 1e-3


def test_a_recipe_quantizes_it_static_and_the_file_keeps_its_three_inputs(
        exported: tuple[Path, torch.nn.Module], tmp_path: Path) -> None:
    path, _ = exported
    np.savez(tmp_path / "ids.npz", input_ids=_ids(48, 2).numpy())
    recipe = Recipe.model_validate({
        "schema_version": 1, "model": {"path": str(path)},
        "plan": {"defaults": {"weight_bits": "int8", "act_bits": "int8"}},
        "data": {"source": "arrays", "path": "ids.npz", "calibration_samples": 24},
        "export": {"latency_batch": 8, "latency_repeats": 2},
    })
    events = list(run_recipe(recipe, tmp_path, tmp_path / "out", CancelToken()))
    report = next(e for e in events if isinstance(e, Result)).report
    assert any(isinstance(e, Log) and e.message.startswith(
        "Inputs: attention_mask, token_type_ids derived from input_ids (padding id 1")
        for e in events)
    assert report["stages"]["quantize"]["mode"] == "static"
    assert report["compressed"]["metric"]["value"] > 0.98  # cosine with the original file
    quantized = onnx.load(report["paths"]["model"])
    assert [i.name for i in quantized.graph.input] == list(INPUTS)
    assert any(node.op_type == "QuantizeLinear" for node in quantized.graph.node)


def test_inputs_that_cannot_follow_from_token_ids_are_named(tmp_path: Path) -> None:
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Add", ["image", "mask"], ["out"])], "two",
        [onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, [1, 4])
         for name in ("image", "mask")],
        [onnx.helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, [1, 4])])
    with pytest.raises(StudioError, match=r"two.onnx: takes 2 inputs \(image, mask\), and "
                       r"the data gives one input tensor: one tensor cannot feed image, mask"):
        feeder_for(onnx.helper.make_model(graph), tmp_path / "two.onnx")


def test_position_ids_count_from_zero_and_the_padding_id_defaults_to_bert_s(
        tmp_path: Path) -> None:
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Add", ["input_ids", "position_ids"], ["out"])], "ids",
        [onnx.helper.make_tensor_value_info(name, onnx.TensorProto.INT64, ["b", "s"])
         for name in ("input_ids", "position_ids", "attention_mask")],
        [onnx.helper.make_tensor_value_info("out", onnx.TensorProto.INT64, ["b", "s"])])
    feeder = feeder_for(onnx.helper.make_model(graph), tmp_path / "ids.onnx")
    feed = feeder(np.array([[5, 6, 0], [7, 0, 0]]))
    assert feeder.pad_token_id == 0 and "default" in feeder.describe()
    np.testing.assert_array_equal(feed["position_ids"], [[0, 1, 2], [0, 1, 2]])
    np.testing.assert_array_equal(feed["attention_mask"], [[1, 1, 0], [1, 0, 0]])
    assert feed["attention_mask"].dtype == np.int64


def test_per_token_outputs_are_scored_on_real_tokens_only(
        exported: tuple[Path, torch.nn.Module]) -> None:
    path, _ = exported
    feeder = feeder_for(onnx.load(str(path)), path)
    ids = _ids(4, 3).numpy()
    per_token = np.arange(4 * 10 * 32, dtype=np.float32).reshape(4, 10, 32)
    rows = feeder.real_tokens(per_token, ids)
    assert rows.shape == (int((ids != PAD).sum()), 32)
    np.testing.assert_array_equal(rows, per_token[ids != PAD])
    pooled = np.ones((4, 10), np.float32)  # one vector per sentence, as wide as the ids
    assert feeder.real_tokens(pooled, ids) is pooled


def test_static_int8_leaves_the_attention_mask_path_float(
        exported: tuple[Path, torch.nn.Module], tmp_path: Path) -> None:
    """The mask bias (-3.4e38 where padding is) and the scores it is put into reach the
    softmax unquantized; everything else around attention is still int8."""
    from torch.utils.data import TensorDataset

    from studio.core.methods.quantization.mask_path import mask_path_nodes
    from studio.core.methods.quantization.ort import quantize_onnx

    path, _ = exported
    model = onnx.load(str(path))
    path_nodes = mask_path_nodes(model)
    assert sorted({name.rsplit("/", 1)[-1].split("_")[0] for name in path_nodes}) == [
        "Add", "Softmax", "Where"]  # per layer: the select, the add, the softmax
    prepared: list[str] = []
    quantized = onnx.load(str(quantize_onnx(
        path, tmp_path / "static.onnx", "static", feed=feeder_for(model, path),
        calibration=TensorDataset(_ids(32, 5)), prepared=prepared)))
    made_by = {output: node for node in quantized.graph.node for output in node.output}
    quantized_from = {made_by[n.input[0]].name for n in quantized.graph.node
                      if n.op_type == "QuantizeLinear" and n.input[0] in made_by}
    assert not quantized_from & set(path_nodes)
    assert any("MatMul" in name for name in quantized_from)
    assert any("attention-mask path left float" in line for line in prepared)


def test_token_ids_beyond_the_file_s_vocabulary_are_named_before_any_work(
        exported: tuple[Path, torch.nn.Module], tmp_path: Path) -> None:
    """The vocabulary is the table the file's Gather reads with input_ids (100 tokens)."""
    path, _ = exported
    ids = _ids(20, 4)
    ids[3, 0], ids[11, 2] = 100, -1
    np.savez(tmp_path / "ids.npz", input_ids=ids.numpy())
    recipe = Recipe.model_validate({
        "schema_version": 1, "model": {"path": str(path)},
        "plan": {"defaults": {"weight_bits": "int8"}},
        "data": {"source": "arrays", "path": "ids.npz", "calibration_samples": 8}})
    with pytest.raises(StudioError, match=r"^data: token ids must lie in 0\.\.99 \(embedding "
                                          r"'[\w.]+' holds 100 tokens\), but the data holds 2 "
                                          r"id\(s\) out of range: -1, 100 \(the first in \w+ "
                                          r"sample \d+\); check that the tokenizer matches"):
        list(run_recipe(recipe, tmp_path, tmp_path / "out", CancelToken()))
    assert not (tmp_path / "out").exists()
