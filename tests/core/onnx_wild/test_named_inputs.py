"""ONNX files taking several inputs that are not a transformer's: a recurrent voice-activity
model fed ``input`` and ``state`` per sample (arrays of the same names in an .npz) and the
sample rate ``sr`` as a constant from the recipe."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from studio.core.data.metrics import cosine
from studio.core.engine.run import run_recipe
from studio.core.errors import StudioError
from studio.core.export.measure import ort_session, run_onnx_outputs
from studio.core.jobs import CancelToken, Log, Result
from studio.core.plan.recipe import Recipe

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

INPUTS = ("input", "state", "sr")
RATE = 16000


class TinyVad(nn.Module):
    """A recurrent step as voice-activity models have one: the next state from the frame and
    the previous state, scaled by the sample rate, and a speech score from it."""

    def __init__(self) -> None:
        super().__init__()
        self.frame = nn.Linear(64, 32)
        self.recur = nn.Linear(32, 32)
        self.head = nn.Linear(32, 1)

    def forward(self, frame: torch.Tensor, state: torch.Tensor, sr: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        scaled = frame * (sr.float() / RATE)
        new_state = torch.tanh(self.frame(scaled) + self.recur(state))
        return torch.sigmoid(self.head(new_state)), new_state


@pytest.fixture(scope="module")
def vad(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("vad")
    torch.manual_seed(0)
    path = folder / "vad.onnx"
    example = (torch.randn(2, 64), torch.randn(2, 32), torch.tensor(RATE))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(TinyVad().eval(), example, str(path), dynamo=False, opset_version=17,
                          input_names=list(INPUTS), output_names=["speech", "stateN"],
                          dynamic_axes={name: {0: "batch"} for name in
                                        ("input", "state", "speech", "stateN")})
    return path


def _frames(folder: Path, rows: int = 40, **arrays: np.ndarray) -> None:
    generator = np.random.default_rng(0)
    given = {"input": generator.normal(size=(rows, 64)).astype(np.float32),
             "state": generator.normal(size=(rows, 32)).astype(np.float32) * 0.5}
    np.savez(folder / "frames.npz", **(given | arrays))


def _recipe(vad: Path, act_bits: str = "int8", **data: object) -> Recipe:
    return Recipe.model_validate({
        "schema_version": 1, "model": {"path": str(vad)},
        "plan": {"defaults": {"weight_bits": "int8", "act_bits": act_bits}},
        "data": {"source": "arrays", "path": "frames.npz", "inputs_key": ["input", "state"],
                 "constants": {"sr": RATE}, "calibration_samples": 16} | data,
        "export": {"latency_batch": 8, "latency_repeats": 2},
    })


def _run(recipe: Recipe, folder: Path) -> tuple[dict, list[str]]:
    events = list(run_recipe(recipe, folder, folder / "out", CancelToken()))
    logs = [e.message for e in events if isinstance(e, Log)]
    return next(e for e in events if isinstance(e, Result)).report, logs


@pytest.mark.parametrize("act_bits, mode", [("int8", "static"), ("fp32", "dynamic")])
def test_a_recipe_quantizes_it_and_the_file_keeps_its_three_inputs(
        vad: Path, tmp_path: Path, act_bits: str, mode: str) -> None:
    _frames(tmp_path)
    report, logs = _run(_recipe(vad, act_bits), tmp_path)
    assert "Inputs: input, state from the data's arrays of the same names; constant sr = " \
        f"{RATE}" in logs
    assert report["stages"]["quantize"]["mode"] == mode
    assert report["data"]["inputs"] == {"arrays": ["input", "state"], "constants": {"sr": RATE}}
    compressed = report["compressed"]
    # the headline output ('speech', one value per sample) is scored by MSE: its cosine would
    # only be its sign
    assert compressed["metric"]["name"] == "mse" and compressed["metric"]["value"] < 1e-3
    assert "one value per sample" in report["data"]["metric_reason"]
    assert set(compressed["outputs"]) == {"speech", "stateN"}
    assert compressed["outputs"]["stateN"]["cosine"] > 0.99
    assert report["baseline"]["outputs"]["speech"]["cosine"] == pytest.approx(1.0)

    quantized = onnx.load(report["paths"]["model"])
    assert [i.name for i in quantized.graph.input] == list(INPUTS)
    int8_ops = {"QuantizeLinear"} if mode == "static" else {"DynamicQuantizeLinear"}
    assert int8_ops & {node.op_type for node in quantized.graph.node}
    assert compressed["onnx_bytes"] < report["baseline"]["onnx_bytes"]

    # Plain onnxruntime runs the file on new frames and it gives what the original gives.
    generator = np.random.default_rng(1)
    feed = {"input": generator.normal(size=(5, 64)).astype(np.float32),
            "state": generator.normal(size=(5, 32)).astype(np.float32) * 0.5,
            "sr": np.array(RATE, np.int64)}
    _, original = ort_session(vad).run(None, feed)
    _, ours = ort_session(report["paths"]["model"]).run(None, feed)
    assert cosine(original, ours) > 0.99


def test_the_constant_changes_what_the_file_computes(vad: Path, tmp_path: Path) -> None:
    """The constant reaches the file: a different sample rate gives a different baseline."""
    _frames(tmp_path)
    from studio.core.data.sources import load_task
    from studio.core.engine.data_fit import feeder_for_data

    model = onnx.load(str(vad))
    outputs = {}
    for rate in (RATE, 8000):
        data = load_task(_recipe(vad, constants={"sr": rate}).data, tmp_path)
        feeder = feeder_for_data(model, vad, data)
        assert feeder.constants["sr"].dtype == np.int64
        outputs[rate] = run_onnx_outputs(vad, {"input": data.test.named["input"].numpy(),
                                               "state": data.test.named["state"].numpy()},
                                         feed=feeder)["stateN"]
    assert np.abs(outputs[RATE] - outputs[8000]).max() > 0.01


@pytest.mark.parametrize("data, message", [
    ({"constants": {}},
     r"vad.onnx: takes 3 inputs \(input, state, sr\), and the data gives arrays input, state; "
     r"missing: sr\. Name an .npz array per input"),
    ({"inputs_key": ["input"]},
     r"takes 3 inputs \(input, state, sr\), and the data gives arrays input and constants sr; "
     r"missing: state\."),
    ({"inputs_key": ["input", "state", "extra"]},
     r"takes 3 inputs \(input, state, sr\), and the data gives arrays input, state, extra and "
     r"constants sr: the file has no input named extra"),
    ({"inputs_key": "input"},
     r"takes 3 inputs \(input, state, sr\), and the data gives one input tensor and "
     r"constants sr: one tensor cannot feed input, state\. Name an .npz array per input"),
    ({"constants": {"sr": 16000.5}},
     r"vad.onnx: constant sr = 16000.5 does not fit its type int64"),
])
def test_a_missing_or_unknown_input_names_the_file_s_inputs_and_what_the_data_gives(
        vad: Path, tmp_path: Path, data: dict, message: str) -> None:
    _frames(tmp_path, extra=np.zeros((40, 3), np.float32))
    with pytest.raises(StudioError, match=message):
        _run(_recipe(vad, **data), tmp_path)
    assert not (tmp_path / "out").exists()


def test_a_mis_shaped_input_is_named_with_both_shapes(vad: Path, tmp_path: Path) -> None:
    _frames(tmp_path, state=np.zeros((40, 16), np.float32))
    with pytest.raises(StudioError, match=r"vad.onnx: its input 'state' has shape \[batch, 32\] "
                                          r"\(first dim: batch\), but the data \(arrays: "
                                          r"frames.npz\) gives samples of shape \[16\]"):
        _run(_recipe(vad), tmp_path)


def test_named_arrays_need_one_row_per_sample(vad: Path, tmp_path: Path) -> None:
    _frames(tmp_path, state=np.zeros((39, 32), np.float32))
    with pytest.raises(StudioError, match=r"frames.npz \('state'\): 39 rows where the first "
                                          r"input has 40; every input needs one row per sample"):
        _run(_recipe(vad), tmp_path)
