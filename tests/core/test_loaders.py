"""Every supported model format, written to disk by the test and opened by ``open_model``."""

from __future__ import annotations

import json
import shutil
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from safetensors.torch import save_file

from studio.core.demo.model import DEMO_ARCHITECTURE, DemoCNN
from studio.core.errors import (
    ArchitectureRequired,
    ModelLoadError,
    StudioError,
    TrustRequired,
)
from studio.core.models.inputs import InputSpec
from studio.core.models.loader import open_model
from studio.core.workspace import build_tree


def _outputs(module: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return module(inputs)


def _assert_same_outputs(loaded: torch.nn.Module, original: torch.nn.Module,
                         inputs: torch.Tensor) -> None:
    expected = _outputs(original, inputs)
    got = _outputs(loaded, inputs)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()


def _onnx_outputs(model: onnx.ModelProto, inputs: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return session.run(None, {name: inputs.numpy()})[0]


def _state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.contiguous() for key, value in module.state_dict().items()}


# --- torch.save state dicts and safetensors ---------------------------------------------------

def test_state_dict_pt_needs_architecture_and_loads_with_it(tmp_path, demo_module, demo_input):
    path = tmp_path / "weights.pt"
    torch.save(demo_module.state_dict(), path)

    with pytest.raises(ArchitectureRequired) as raised:
        open_model(path)
    assert raised.value.suggestion is None
    assert str(path) in str(raised.value)

    loaded = open_model(path, architecture=DEMO_ARCHITECTURE)
    assert loaded.format == "state_dict"
    assert loaded.architecture == DEMO_ARCHITECTURE
    assert not loaded.module.training
    _assert_same_outputs(loaded.module, demo_module, demo_input)


def test_state_dict_nested_under_a_checkpoint_key(tmp_path, demo_module, demo_input):
    path = tmp_path / "checkpoint.pth"
    torch.save({"epoch": 3, "model_state_dict": demo_module.state_dict()}, path)
    loaded = open_model(path, architecture=DEMO_ARCHITECTURE)
    _assert_same_outputs(loaded.module, demo_module, demo_input)


def test_safetensors_with_built_in_architecture_opens_without_asking(tmp_path, demo_module,
                                                                     demo_input):
    path = tmp_path / "weights.safetensors"
    metadata = {"architecture": DEMO_ARCHITECTURE, "input_shape": json.dumps([4, 1, 28, 28])}
    save_file(_state_dict(demo_module), str(path), metadata=metadata)
    loaded = open_model(path)
    assert loaded.format == "safetensors"
    assert loaded.architecture == DEMO_ARCHITECTURE
    assert loaded.example == InputSpec((4, 1, 28, 28))
    _assert_same_outputs(loaded.module, demo_module, demo_input)


def test_safetensors_without_metadata_needs_architecture(tmp_path, demo_module, demo_input):
    path = tmp_path / "weights.safetensors"
    save_file(_state_dict(demo_module), str(path))
    with pytest.raises(ArchitectureRequired) as raised:
        open_model(path)
    assert raised.value.suggestion is None

    loaded = open_model(path, architecture=DEMO_ARCHITECTURE)
    assert loaded.example is None
    _assert_same_outputs(loaded.module, demo_module, demo_input)


@pytest.fixture
def user_factory(tmp_path, monkeypatch) -> str:
    """An importable architecture outside the studio: ``cs_test_user_models:build``."""
    package = tmp_path / "user_code"
    package.mkdir()
    (package / "cs_test_user_models.py").write_text(textwrap.dedent("""
        from studio.core.demo.model import DemoCNN

        def build():
            return DemoCNN()
    """))
    monkeypatch.syspath_prepend(str(package))
    yield "cs_test_user_models:build"
    sys.modules.pop("cs_test_user_models", None)


def test_foreign_architecture_in_metadata_is_only_suggested(tmp_path, demo_module, demo_input,
                                                            user_factory):
    path = tmp_path / "weights.safetensors"
    save_file(_state_dict(demo_module), str(path), metadata={"architecture": user_factory})

    # Importing a factory named by the file would run code the user never chose: ask first.
    with pytest.raises(ArchitectureRequired) as raised:
        open_model(path)
    assert raised.value.suggestion == user_factory
    assert user_factory in str(raised.value)
    assert "cs_test_user_models" not in sys.modules

    loaded = open_model(path, architecture=raised.value.suggestion)
    assert loaded.architecture == user_factory
    _assert_same_outputs(loaded.module, demo_module, demo_input)


def test_weights_that_do_not_fit_the_architecture(tmp_path, demo_module):
    path = tmp_path / "weights.safetensors"
    state = _state_dict(demo_module)
    del state["head.2.bias"]
    save_file(state, str(path))
    with pytest.raises(ModelLoadError, match=r"missing head\.2\.bias"):
        open_model(path, architecture=DEMO_ARCHITECTURE)

    wide = _state_dict(DemoCNN(width=16))
    save_file(wide, str(path))
    with pytest.raises(ModelLoadError, match="do not fit"):
        open_model(path, architecture=DEMO_ARCHITECTURE)


@pytest.mark.parametrize("architecture", [
    "no_colon_here",
    "studio.core.demo.model:",
    "cs_no_such_package_anywhere.models:build",
    "studio.core.demo.model:no_such_factory",
    "studio.core.demo.model:DEMO_INPUT_SHAPE",
    "studio.core.demo.data:load_demo_digits",  # callable, but returns data, not a module
])
def test_bad_architecture_names_are_explained(tmp_path, demo_module, architecture):
    path = tmp_path / "weights.pt"
    torch.save(demo_module.state_dict(), path)
    with pytest.raises(ModelLoadError) as raised:
        open_model(path, architecture=architecture)
    assert architecture in str(raised.value)


# --- whole pickled modules ---------------------------------------------------------------------

def test_pickled_module_needs_trust(tmp_path, demo_module, demo_input):
    path = tmp_path / "whole.pt"
    torch.save(demo_module, path)

    with pytest.raises(TrustRequired) as raised:
        open_model(path)
    assert raised.value.path == path
    assert str(path) in str(raised.value) and "trust" in str(raised.value)

    loaded = open_model(path, trust=True)
    assert loaded.format == "pickled_module"
    assert isinstance(loaded.module, DemoCNN)
    _assert_same_outputs(loaded.module, demo_module, demo_input)


# --- torch.export archives ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def exported_demo(tmp_path_factory) -> tuple[Path, torch.Tensor]:
    """The demo saved by ``torch.export`` with a batch of three (so the example is not 1)."""
    module = open_model("demo").module
    example = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(module, (example,))
    path = tmp_path_factory.mktemp("pt2") / "demo.pt2"
    torch.export.save(program, path)
    return path, example


def test_torch_export_archive_keeps_names_types_and_example(exported_demo, demo_module):
    path, example = exported_demo
    loaded = open_model(path)
    assert loaded.format == "torch_export"
    assert loaded.example == InputSpec(tuple(example.shape))
    _assert_same_outputs(loaded.module, demo_module, example)

    assert loaded.type_names["res.conv1.0"] == "Conv2d"
    assert loaded.type_names["res"] == "ResidualBlock"
    tree = build_tree(loaded, loaded.example)
    reference = build_tree(open_model("demo"), loaded.example)
    for name in ("res.conv1.0", "res.conv2", "head.2", "stem.1"):
        assert name in tree
        assert tree.get(name).op_type == reference.get(name).op_type
        assert tree.get(name).output_shape == reference.get(name).output_shape
    assert tree.get("res.conv1.0").op_type == "Conv2d"
    assert tree.root.total_params == reference.root.total_params
    assert tree.root.total_macs == reference.root.total_macs > 0


def test_torch_export_found_by_content_with_wrong_extension(tmp_path, exported_demo):
    path = tmp_path / "model.bin"
    shutil.copy(exported_demo[0], path)
    assert open_model(path).format == "torch_export"


# --- ONNX --------------------------------------------------------------------------------------

def test_onnx_file_runs_like_the_torch_model(demo_onnx_path, demo_module, demo_input):
    loaded = open_model(demo_onnx_path)
    assert loaded.format == "onnx"
    assert loaded.module is None and loaded.onnx_model is not None
    assert loaded.example == InputSpec((1, 1, 28, 28))
    sample = demo_input[:1]
    expected = _outputs(demo_module, sample).numpy()
    np.testing.assert_allclose(_onnx_outputs(loaded.onnx_model, sample), expected,
                               rtol=1e-4, atol=1e-5)




def test_onnx_with_external_data(tmp_path, demo_onnx_path, demo_module, demo_input,
                                 save_with_external_data):
    target = tmp_path / "model.onnx"
    save_with_external_data(demo_onnx_path, target, "model.weights")
    assert (tmp_path / "model.weights").stat().st_size > 4 * 100_000  # the weights went there
    assert target.stat().st_size < 20_000

    loaded = open_model(target)  # the weights stay on disk: the graph is read, not the data
    assert all(not init.raw_data for init in loaded.onnx_model.graph.initializer)
    assert build_tree(loaded, None).nodes[0].total_params == build_tree(
        open_model(demo_onnx_path), None).nodes[0].total_params  # counted from the shapes
    sample = demo_input[:1]
    session = ort.InferenceSession(str(loaded.path), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {session.get_inputs()[0].name: sample.numpy()})[0]
    np.testing.assert_allclose(outputs, _outputs(demo_module, sample).numpy(), rtol=1e-4,
                               atol=1e-5)


def test_onnx_external_data_outside_its_folder_is_refused(tmp_path, demo_onnx_path,
                                                          save_with_external_data):
    folder = tmp_path / "model"
    folder.mkdir()
    # A file that points at data one folder up: the data exists, so only the location is wrong.
    save_with_external_data(demo_onnx_path, folder / "evil.onnx", "model.weights",
                            location="../outside.bin")
    shutil.copy(folder / "model.weights", tmp_path / "outside.bin")

    with pytest.raises(ModelLoadError) as raised:
        open_model(folder / "evil.onnx")
    message = str(raised.value)
    assert str(folder / "evil.onnx") in message
    assert "../outside.bin" in message and "outside" in message.replace("../outside.bin", "")


def test_onnx_missing_external_data(tmp_path, demo_onnx_path, save_with_external_data):
    target = tmp_path / "model.onnx"
    save_with_external_data(demo_onnx_path, target, "model.weights")
    (tmp_path / "model.weights").unlink()
    with pytest.raises(ModelLoadError) as raised:
        open_model(target)
    assert str(target) in str(raised.value)
    assert "model.weights" in str(raised.value) and "missing" in str(raised.value)


# --- corrupt and mislabelled files -------------------------------------------------------------

@pytest.fixture
def good_files(tmp_path, demo_module, demo_onnx_path) -> dict[str, Path]:
    folder = tmp_path / "good"
    folder.mkdir()
    torch.save(demo_module.state_dict(), folder / "model.pt")
    save_file(_state_dict(demo_module), str(folder / "model.safetensors"),
              metadata={"architecture": DEMO_ARCHITECTURE})
    shutil.copy(demo_onnx_path, folder / "model.onnx")
    return {path.suffix: path for path in folder.iterdir()}


@pytest.mark.parametrize("suffix", [".pt", ".safetensors", ".onnx"])
@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage"])
def test_corrupt_files_raise_model_load_error_naming_the_file(tmp_path, good_files, suffix,
                                                              damage):
    data = good_files[suffix].read_bytes()
    content = {"empty": b"", "truncated": data[: len(data) // 2],
               "garbage": b"this is not a model file\n" * 40}[damage]
    path = tmp_path / f"{damage}{suffix}"
    path.write_bytes(content)
    # pytest.raises lets any other exception type through, failing the test.
    with pytest.raises(ModelLoadError) as raised:
        open_model(path, architecture=DEMO_ARCHITECTURE, trust=True)
    assert isinstance(raised.value, StudioError)
    assert str(path) in str(raised.value)
    # Without trust, a damaged file must not ask the user to trust it either.
    with pytest.raises(ModelLoadError) as untrusted:
        open_model(path, architecture=DEMO_ARCHITECTURE)
    assert not isinstance(untrusted.value, TrustRequired)


def test_missing_file(tmp_path):
    path = tmp_path / "nowhere.onnx"
    with pytest.raises(ModelLoadError, match="no such file") as raised:
        open_model(path)
    assert str(path) in str(raised.value)


@pytest.mark.parametrize("suffix, expected", [
    (".onnx", "onnx"), (".safetensors", "safetensors"), (".pt", "state_dict")])
def test_wrong_extension_is_opened_by_content(tmp_path, good_files, suffix, expected):
    path = tmp_path / "model.bin"
    shutil.copy(good_files[suffix], path)
    assert open_model(path, architecture=DEMO_ARCHITECTURE).format == expected


def test_unknown_content_and_extension(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(ModelLoadError, match="unknown model format"):
        open_model(path)


def test_demo_opens_by_name():
    loaded = open_model("demo")
    assert loaded.name == "demo-cnn"
    assert loaded.architecture == DEMO_ARCHITECTURE
    assert loaded.example == InputSpec((1, 1, 28, 28))
    assert isinstance(loaded.module, DemoCNN) and not loaded.module.training


def test_a_zip_with_a_name_that_is_not_utf8_is_a_clear_error(tmp_path: Path) -> None:
    """zipfile raises UnicodeDecodeError, not BadZipFile, on such a central directory (a
    damaged .pt/.pt2 hit it in the fuzz test)."""
    import zipfile

    from studio.core.errors import StudioError
    from studio.core.models.loader import open_model

    path = tmp_path / "model.bin"  # no known suffix: the format is sniffed from the bytes
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("é/data.pkl", b"x")  # a non-ASCII name is stored with the UTF-8 flag
    path.write_bytes(path.read_bytes().replace("é".encode(), b"\xe7\xa9"))
    with pytest.raises(StudioError):
        open_model(path)
