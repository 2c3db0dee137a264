"""Every kind of bad input reaches a CLI user as one line on stderr and exit code 2; ``--debug``
shows the traceback instead."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from studio.cli.main import main
from studio.core.demo.model import DEMO_ARCHITECTURE
from studio.core.errors import StudioError
from studio.core.run_outputs import STAGING_PREFIX
from tests.core.crafted import (
    deflated_zip_bomb,
    project_naming_its_architecture,
    pt2_with_pickled_sample_inputs,
    pt2_with_pickled_weight,
)

PREFIX = "compression-studio: error:"
FORMATS = (".pt", ".pt2", ".safetensors", ".onnx")


def _empty(folder: Path, files: dict[str, Path], suffix: str) -> Path:
    path = folder / f"empty{suffix}"
    path.write_bytes(b"")
    return path


def _truncated(folder: Path, files: dict[str, Path], suffix: str) -> Path:
    path = folder / f"truncated{suffix}"
    data = files[suffix].read_bytes()
    path.write_bytes(data[: len(data) // 3])
    return path


def _garbage(folder: Path, files: dict[str, Path], suffix: str) -> Path:
    path = folder / f"garbage{suffix}"
    path.write_bytes(bytes(random.Random(suffix).randrange(256) for _ in range(4096)))
    return path


def _wrong_extension(folder: Path, files: dict[str, Path], suffix: str) -> Path:
    other = FORMATS[(FORMATS.index(suffix) + 1) % len(FORMATS)]
    path = folder / f"mislabelled{other}"
    shutil.copy(files[suffix], path)
    return path


DAMAGE: dict[str, Callable[[Path, dict[str, Path], str], Path]] = {
    "empty": _empty, "truncated": _truncated, "garbage": _garbage,
    "wrong extension": _wrong_extension,
}


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _assert_one_error_line(err: str, *names: object) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(PREFIX), err
    for name in names:
        assert str(name) in lines[0], err
    return lines[0]


@pytest.mark.parametrize("suffix", FORMATS)
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_inspect_damaged_model_file(capsys, tmp_path, valid_model_files, damage, suffix):
    path = DAMAGE[damage](tmp_path, valid_model_files, suffix)
    code, out, err = _run(capsys, "inspect", str(path), "--arch", DEMO_ARCHITECTURE)
    assert code == 2 and out == ""
    _assert_one_error_line(err, path)
    with pytest.raises(StudioError):
        main(["inspect", str(path), "--arch", DEMO_ARCHITECTURE, "--debug"])




@pytest.mark.parametrize("location, says", [
    ("gone.bin", "missing"), ("../../outside.bin", "outside its own folder")])
def test_inspect_onnx_with_bad_external_data(capsys, tmp_path, demo_onnx_path, location, says,
                                             save_with_external_data):
    (tmp_path / "model").mkdir()
    path = save_with_external_data(demo_onnx_path, tmp_path / "model" / "model.onnx",
                                   location=location)
    code, _, err = _run(capsys, "inspect", str(path))
    assert code == 2
    assert says in _assert_one_error_line(err, path, location)


def test_inspect_unknown_format_and_missing_file(capsys, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    for path in (notes, tmp_path / "nowhere.pt"):
        code, _, err = _run(capsys, "inspect", str(path))
        assert code == 2
        _assert_one_error_line(err, path)


def test_inspect_wrong_input_shape(capsys):
    code, _, err = _run(capsys, "inspect", "demo", "--input-shape", "1,3,32,32")
    assert code == 2
    _assert_one_error_line(err, "[1, 3, 32, 32]")


def test_inspect_onnx_with_an_input_shape_that_does_not_fit(capsys, demo_onnx_path):
    code, _, err = _run(capsys, "inspect", str(demo_onnx_path), "--input-shape", "1,3,32,32")
    assert code == 2
    _assert_one_error_line(err, "does not fit the model's input 'input' of shape")


def _nan_model(tmp_path: Path, demo_module: torch.nn.Module) -> Path:
    state = {k: v.clone().contiguous() for k, v in demo_module.state_dict().items()}
    name = next(k for k in state if k.endswith("weight"))
    state[name].view(-1)[0] = float("nan")
    path = tmp_path / "nan.safetensors"
    save_file(state, str(path), metadata={"architecture": DEMO_ARCHITECTURE})
    return path


def test_inspect_nan_weights_works_and_warns(capsys, tmp_path, demo_module):
    path = _nan_model(tmp_path, demo_module)
    code, out, err = _run(capsys, "inspect", str(path), "--input-shape", "1,1,28,28")
    assert code == 0 and out
    (line,) = err.splitlines()
    assert line.startswith("compression-studio: warning:") and str(path) in line
    assert "NaN or Inf" in line


def _recipe(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(textwrap.dedent(body).lstrip())
    return path


@pytest.mark.parametrize("body, field", [
    ("schema_version: 1\nplan: [unclosed\n", "not valid YAML"),
    ("schema_version: 1\nplan:\n  defaults:\n    sparsty: 0.5\n", "plan.defaults.sparsty"),
    ("schema_version: 1\nplan:\n  defaults:\n    sparsity: 1.5\n", "plan.defaults.sparsity"),
    ("schema_version: 1\nplan:\n  defaults:\n    weight_bits: int3\n",
     "plan.defaults.weight_bits"),
    ("schema_version: 1\nmodel: {path: demo}\nplan:\n  layers:\n    res.conv9: {sparsity: 0.5}\n",
     "res.conv9"),
    ("schema_version: 1\nmodel: {path: demo}\nexample_input: {shape: [1, 3, 32, 32]}\n",
     "example_input"),
    ("schema_version: 1\nmodel: {path: missing.onnx}\n", "missing.onnx"),
    ("schema_version: 1\nmodel: {path: demo}\ntrain: {epochs: 0}\ndistill: {alpha: 0.5}\n",
     "line 4: distill: distillation trains the model, but train.epochs is 0"),
    ("schema_version: 1\nmodel: {path: demo}\nmodel: {path: other.onnx}\n",
     "line 3: not valid YAML: duplicate key 'model' (first given on line 2)"),
])
def test_run_bad_recipe(capsys, tmp_path, body, field):
    path = _recipe(tmp_path, body)
    out_dir = tmp_path / "out"
    code, _, err = _run(capsys, "run", str(path), "--out", str(out_dir))
    assert code == 2
    model_error = field == "missing.onnx"  # names the model file rather than the recipe
    _assert_one_error_line(err, field, *([] if model_error else [path]))
    assert not out_dir.exists()
    with pytest.raises(StudioError):
        main(["--debug", "run", str(path), "--out", str(out_dir)])


def test_run_refuses_nan_weights(capsys, tmp_path, demo_module):
    _nan_model(tmp_path, demo_module)
    path = _recipe(tmp_path, "schema_version: 1\nmodel: {path: nan.safetensors}\n"
                             "example_input: {shape: [1, 1, 28, 28]}\n")
    code, _, err = _run(capsys, "run", str(path), "--out", str(tmp_path / "out"))
    assert code == 2
    _assert_one_error_line(err, path, tmp_path / "nan.safetensors", "NaN or Inf")


def test_run_names_the_input_a_multi_input_onnx_file_is_missing(capsys, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Add", ["input", "state"], ["out"])], "two",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 4])
         for name in ("input", "state")],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
              str(tmp_path / "two.onnx"))
    np.savez(tmp_path / "frames.npz", input=np.ones((6, 4), np.float32))
    path = _recipe(tmp_path, "schema_version: 1\nmodel: {path: two.onnx}\n"
                             "data: {source: arrays, path: frames.npz, inputs_key: [input]}\n")
    code, _, err = _run(capsys, "run", str(path), "--out", str(tmp_path / "out"))
    assert code == 2
    _assert_one_error_line(err, "two.onnx: takes 2 inputs (input, state), and the data gives "
                                "arrays input; missing: state")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("craft", ["pickled weight", "pickled sample inputs"])
def test_inspect_of_a_crafted_pt2_runs_nothing(capsys, tmp_path, valid_model_files, craft):
    marker = tmp_path / "code-ran.txt"
    if craft == "pickled weight":
        path = pt2_with_pickled_weight(valid_model_files[".pt2"], tmp_path / "evil.pt2", marker)
        code, _, err = _run(capsys, "inspect", str(path))
        assert code == 2
        assert "--trust" in _assert_one_error_line(err, path, "pickled Python object")
    else:
        path = pt2_with_pickled_sample_inputs(valid_model_files[".pt2"], tmp_path / "evil.pt2",
                                              marker)
        code, out, _ = _run(capsys, "inspect", str(path))
        assert code == 0 and "stem" in out
    assert not marker.exists()


def test_inspect_never_calls_a_studio_function_a_file_names(capsys, tmp_path, monkeypatch,
                                                            demo_module):
    marker = tmp_path / "code-ran.txt"
    monkeypatch.setattr("studio.core.demo.train.main", lambda *args: marker.write_text("ran"))
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in demo_module.state_dict().items()}, str(path),
              metadata={"architecture": "studio.core.demo.train:main"})
    code, _, err = _run(capsys, "inspect", str(path))
    assert code == 2
    assert "--arch" in _assert_one_error_line(err, path, "studio.core.demo.train:main")
    assert not marker.exists()


def test_run_calls_an_architecture_outside_the_registry_only_with_trust(
        capsys, tmp_path, monkeypatch, valid_model_files):
    marker = tmp_path / "code-ran.txt"
    manifest, architecture = project_naming_its_architecture(
        tmp_path / "project", valid_model_files[".pt"], marker, runnable=True)
    monkeypatch.syspath_prepend(str(manifest.parent))
    out = tmp_path / "out"
    code, _, err = _run(capsys, "run", str(manifest), "--out", str(out))
    assert code == 2
    assert "--trust" in _assert_one_error_line(err, manifest, repr(architecture))
    assert not marker.exists() and not out.exists()

    assert _run(capsys, "run", str(manifest), "--out", str(out), "--trust")[0] == 0
    assert marker.read_text().startswith("imported\ncalled\n")
    assert (out / "model.onnx").is_file()


def test_inspect_of_a_zip_bomb_is_one_line(capsys, tmp_path):
    path = deflated_zip_bomb(tmp_path / "bomb.pth")
    code, _, err = _run(capsys, "inspect", str(path), "--arch", DEMO_ARCHITECTURE)
    assert code == 2
    _assert_one_error_line(err, path, "compression bomb")


# --- output folders ------------------------------------------------------------------------------

def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_run_into_the_models_own_folder_is_refused(capsys, tmp_path, quick_onnx_recipe):
    recipe = quick_onnx_recipe(tmp_path, "model.onnx")
    before = _files(tmp_path)
    code, _, err = _run(capsys, "run", str(recipe), "--out", str(tmp_path))
    assert code == 2
    _assert_one_error_line(err, tmp_path, "holds the input model model.onnx")
    assert _files(tmp_path) == before


@pytest.mark.parametrize("where, says", [("", "the output folder is a file"),
                                         ("out", "cannot create the output folder")])
def test_run_out_that_is_a_file_or_cannot_be_created(capsys, tmp_path, quick_onnx_recipe,
                                                     where, says):
    recipe = quick_onnx_recipe(tmp_path)
    (tmp_path / "taken").write_text("a file")
    out = tmp_path / "taken" / where if where else tmp_path / "taken"
    code, _, err = _run(capsys, "run", str(recipe), "--out", str(out))
    assert code == 2
    _assert_one_error_line(err, out, says)
    assert (tmp_path / "taken").read_text() == "a file"


@pytest.mark.parametrize("stop, moment", [(signal.SIGINT, "Timing"),
                                          (signal.SIGKILL, "Quantizing")])
def test_an_interrupted_run_leaves_the_earlier_run_whole(capsys, tmp_path, quick_onnx_recipe,
                                                         stop, moment):
    """Ctrl-C while timing, or a kill while quantizing: the folder keeps the earlier run, every
    file of it; a killed run's staging folder is removed by the next run."""
    out = tmp_path / "out"
    assert _run(capsys, "run", str(quick_onnx_recipe(tmp_path)), "--out", str(out))[0] == 0
    before = _files(out)
    slow = quick_onnx_recipe(tmp_path, repeats=10_000)
    child = subprocess.Popen(
        [sys.executable, "-m", "studio.cli.main", "run", str(slow), "--out", str(out), "--jsonl"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
    assert child.stdout is not None
    for line in child.stdout:
        event = json.loads(line)
        if event["event"] == "log" and event["message"].startswith(moment):
            child.send_signal(stop)
            break
    _, err = child.communicate(timeout=120)
    if stop == signal.SIGINT:
        assert child.returncode == 130
        assert "cancelled; nothing was written over earlier results" in err
    else:
        assert child.returncode == -signal.SIGKILL
    assert _files(out) == before
    left = [p for p in tmp_path.iterdir() if p.name.startswith(STAGING_PREFIX)]
    assert len(left) == (1 if stop == signal.SIGKILL else 0)
    assert _run(capsys, "run", str(quick_onnx_recipe(tmp_path)), "--out", str(out))[0] == 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(STAGING_PREFIX)]


def test_run_on_an_onnx_file_never_advises_fine_tuning(capsys, tmp_path, outlier_convs_recipe):
    code, out, _ = _run(capsys, "run", str(outlier_convs_recipe(tmp_path)), "--out",
                        str(tmp_path / "out"))
    assert code == 0
    [note] = [line for line in out.splitlines() if line.startswith("note:") and "dropped" in line]
    assert "fine-tun" not in note and "static int8" in note and "exclude: true" in note


def test_run_on_a_full_disk_says_no_space_left(capsys, monkeypatch, tmp_path, quick_onnx_recipe):
    """onnxruntime's writers leave a short file on a full disk and then fail to parse it."""
    from studio.core.methods.quantization import ort

    def short_write(_src: str, out: str, *_args: object, **_kwargs: object) -> None:
        Path(out).write_bytes(b"\x08")
        raise ValueError("Failed to find proper ai.onnx domain")

    monkeypatch.setattr(ort, "quantize_static", short_write)
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=0))
    out = tmp_path / "out"
    code, _, err = _run(capsys, "run", str(quick_onnx_recipe(tmp_path)), "--out", str(out))
    assert code == 2
    [line] = [line for line in err.splitlines() if line.startswith(PREFIX)]  # after the logs
    assert str(out) in line and "no space left on device" in line
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(STAGING_PREFIX)]


def test_run_with_bad_npz_data_is_one_line(capsys, tmp_path):
    """A .npz whose inputs are a raw pickle, or a decompression bomb: one line, exit 2, nothing
    unpickled or inflated, nothing written."""
    import pickle
    import zipfile

    from tests.core.data.conftest import GB, write_bomb

    with zipfile.ZipFile(tmp_path / "pickled.npz", "w") as archive:
        archive.writestr("x.npy", pickle.dumps({"not": "an array"}))
    write_bomb(tmp_path / "bomb.npz", {"y": np.arange(4)}, "x", GB - GB % (1 << 24))
    for name, says in (("pickled.npz", "a Python pickle, not a numpy array"),
                       ("bomb.npz", "decompression bomb")):
        path = _recipe(tmp_path, "schema_version: 1\nmodel: {path: demo}\n"
                                 f"data: {{source: arrays, path: {name}}}\n")
        code, _, err = _run(capsys, "run", str(path), "--out", str(tmp_path / "out"))
        assert code == 2
        _assert_one_error_line(err, tmp_path / name, says)
        assert not (tmp_path / "out").exists()
