"""A corpus of bad inputs, made here, each met by a StudioError that names the file or field.

Damaged model files in every format (empty, truncated at several points, bit-flipped), files with
the wrong extension, ONNX external data that is missing or points outside the model's folder,
bad recipes, a wrong example input, NaN/Inf weights, a forward that raises, and disk faults
while writing. ``tests/core/test_loaders.py`` and ``tests/core/test_recipe.py`` cover the basic
cases; this file widens them.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import textwrap
import types
from collections.abc import Callable
from pathlib import Path

import onnx
import pytest
import torch
from safetensors.torch import save_file

from studio.core import atomic, run_outputs
from studio.core.atomic import write_text_atomic
from studio.core.demo.model import DEMO_ARCHITECTURE, DEMO_INPUT_SHAPE
from studio.core.engine.run import run_recipe_file
from studio.core.errors import (
    ArchitectureConsentRequired,
    ArchitectureRequired,
    InputError,
    ModelLoadError,
    RecipeError,
    StudioError,
    TooLargeError,
    TrustRequired,
)
from studio.core.export.onnx_export import export_onnx
from studio.core.jobs import CancelToken, JobCancelled, Log
from studio.core.models.checks import find_non_finite
from studio.core.models.inputs import InputSpec
from studio.core.models.loaded import LoadedModel
from studio.core.models.loader import open_model
from studio.core.plan.recipe import read_recipe
from studio.core.project.project import load_project
from studio.core.workspace import build_tree, open_workspace
from tests.core.crafted import (
    deflated_zip_bomb,
    project_naming_its_architecture,
    pt2_with_pickled_sample_inputs,
    pt2_with_pickled_weight,
    pt2_with_program_edit,
    rewrite_zip,
)

FORMATS = (".pt", ".pt2", ".safetensors", ".onnx")
DEMO_SPEC = InputSpec(DEMO_INPUT_SHAPE)


def load_or_error(path: Path) -> LoadedModel | StudioError:
    """Open ``path`` as a user would; a StudioError is returned, anything else propagates."""
    try:
        return open_model(path, architecture=DEMO_ARCHITECTURE)
    except StudioError as error:
        return error


def assert_usable_or_error(path: Path) -> None:
    """A damaged file either gives a model whose tree can be built, or a StudioError naming it."""
    outcome = load_or_error(path)
    if isinstance(outcome, StudioError):
        assert str(path) in str(outcome), outcome
        assert not isinstance(outcome, TrustRequired)  # damage never asks for trust
        return
    # A flip inside a weight changes a number: the model must still be inspectable.
    with contextlib.suppress(StudioError):
        build_tree(outcome, None if outcome.onnx_model is not None else DEMO_SPEC)


# --- damaged model files, every format ----------------------------------------------------------

@pytest.mark.parametrize("suffix", FORMATS)
def test_zero_byte_file(tmp_path, suffix):
    path = tmp_path / f"empty{suffix}"
    path.write_bytes(b"")
    with pytest.raises(ModelLoadError, match="empty") as raised:
        open_model(path)
    assert str(path) in str(raised.value)


CUTS = ("1 byte", "8 bytes", "64 bytes", "1 KiB", "a quarter", "half", "all but 16 bytes",
        "all but 1 byte")


def _cut(data: bytes, where: str) -> bytes:
    size = {"1 byte": 1, "8 bytes": 8, "64 bytes": 64, "1 KiB": 1024, "a quarter": len(data) // 4,
            "half": len(data) // 2, "all but 16 bytes": len(data) - 16,
            "all but 1 byte": len(data) - 1}[where]
    return data[:size]


@pytest.mark.parametrize("where", CUTS)
@pytest.mark.parametrize("suffix", FORMATS)
def test_truncated_file(tmp_path, valid_model_files, suffix, where):
    path = tmp_path / f"truncated{suffix}"
    path.write_bytes(_cut(valid_model_files[suffix].read_bytes(), where))
    with pytest.raises(ModelLoadError) as raised:
        open_model(path, architecture=DEMO_ARCHITECTURE, trust=True)
    assert str(path) in str(raised.value)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("suffix", FORMATS)
def test_bit_flipped_file_loads_or_is_refused(tmp_path, valid_model_files, suffix, seed):
    data = bytearray(valid_model_files[suffix].read_bytes())
    rng = random.Random(seed)
    for _ in range(3):
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    path = tmp_path / f"flipped{suffix}"
    path.write_bytes(bytes(data))
    assert_usable_or_error(path)


@pytest.mark.parametrize("actual, named", [(a, n) for a in FORMATS for n in FORMATS if a != n])
def test_wrong_extension_says_what_the_file_is(tmp_path, valid_model_files, actual, named):
    path = tmp_path / f"model{named}"
    shutil.copy(valid_model_files[actual], path)
    with pytest.raises(ModelLoadError) as raised:
        open_model(path, architecture=DEMO_ARCHITECTURE)
    message = str(raised.value)
    assert str(path) in message
    assert f"looks like a {actual} file: rename it to model{actual}" in message


def test_unknown_extension_is_opened_by_content(tmp_path, valid_model_files):
    path = tmp_path / "model.weights"
    shutil.copy(valid_model_files[".pt2"], path)
    assert open_model(path).format == "torch_export"


def test_a_damaged_pickle_is_not_taken_for_a_module_needing_trust(tmp_path):
    """Found by fuzzing: an unknown opcode made the loader ask for trust."""
    path = tmp_path / "damaged.pt"
    path.write_bytes(b"\x80\x02\xff\x00\x00")
    with pytest.raises(ModelLoadError, match="damaged torch file") as raised:
        open_model(path, architecture=DEMO_ARCHITECTURE)
    assert not isinstance(raised.value, TrustRequired)
    assert str(path) in str(raised.value)


def test_onnx_weight_whose_bytes_do_not_fit_its_shape(tmp_path, demo_onnx_path):
    """Found by fuzzing: the file parsed, then building the tree raised a numpy ValueError."""
    model = onnx.load(str(demo_onnx_path))
    weight = next(t for t in model.graph.initializer if len(t.dims) == 4)
    weight.dims[0] += 1
    path = tmp_path / "damaged.onnx"
    onnx.save_model(model, str(path))
    with pytest.raises(ModelLoadError, match="is damaged") as raised:
        open_model(path)
    assert str(path) in str(raised.value) and weight.name in str(raised.value)


# --- ONNX external data --------------------------------------------------------------------------



def test_onnx_external_data_at_an_absolute_path_is_refused(tmp_path, demo_onnx_path,
                                                           save_with_external_data):
    secret = tmp_path / "elsewhere" / "secret.bin"
    secret.parent.mkdir()
    secret.write_bytes(b"\0" * 64)
    folder = tmp_path / "model"
    folder.mkdir()
    save_with_external_data(demo_onnx_path, folder / "model.onnx", location=str(secret))
    with pytest.raises(ModelLoadError, match="outside its own folder") as raised:
        open_model(folder / "model.onnx")
    assert str(folder / "model.onnx") in str(raised.value)


def test_onnx_external_data_through_a_symlink_out_of_the_folder_is_refused(
        tmp_path, demo_onnx_path, save_with_external_data):
    folder = tmp_path / "model"
    folder.mkdir()
    save_with_external_data(demo_onnx_path, folder / "model.onnx")
    outside = tmp_path / "weights.bin"
    (folder / "weights.bin").rename(outside)
    (folder / "weights.bin").symlink_to(outside)
    with pytest.raises(ModelLoadError, match="outside its own folder"):
        open_model(folder / "model.onnx")


def test_onnx_external_data_that_is_cut_short(tmp_path, demo_onnx_path,
                                              save_with_external_data):
    folder = tmp_path / "model"
    folder.mkdir()
    save_with_external_data(demo_onnx_path, folder / "model.onnx")
    data = folder / "weights.bin"
    data.write_bytes(data.read_bytes()[:100])
    with pytest.raises(ModelLoadError) as raised:
        open_model(folder / "model.onnx")
    assert str(folder / "model.onnx") in str(raised.value)


def test_onnx_external_data_shorter_than_its_shape(tmp_path, demo_onnx_path,
                                                   save_with_external_data):
    """The data file holds enough bytes, but an entry declares fewer than the shape needs: the
    weights are read lazily, so this is checked when the file is opened, not when it runs."""
    folder = tmp_path / "model"
    folder.mkdir()
    save_with_external_data(demo_onnx_path, folder / "model.onnx")
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    weight = next(t for t in model.graph.initializer if len(t.dims) == 4)
    next(e for e in weight.external_data if e.key == "length").value = "16"
    onnx.save_model(model, str(folder / "model.onnx"))
    with pytest.raises(ModelLoadError, match=f"weight '{weight.name}' does not fit in "
                                             "'weights.bin'.*cut short or damaged"):
        open_model(folder / "model.onnx")


def test_onnx_example_input_that_does_not_fit_the_file(demo_onnx_path):
    """ONNX files take the example input for their shapes (MACs) since issue 11: one that the
    file's fixed dims contradict is refused, naming the input and its shape."""
    with pytest.raises(InputError, match=r"the example input of shape \[1, 3, 32, 32\] does "
                                         r"not fit the model's input 'input' of shape "
                                         r"\[1, 1, 28, 28\]"):
        open_workspace(str(demo_onnx_path), example=InputSpec((1, 3, 32, 32)))


# --- recipes -------------------------------------------------------------------------------------

def _recipe(tmp_path: Path, body: str, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body).lstrip())
    return path


@pytest.mark.parametrize("body, field, says", [
    ("schema_version: 1\nplan: [unclosed\n", "", "not valid YAML"),
    ("schema_version: 1\n\tplan: {}\n", "", "not valid YAML"),
    ("schema_version: 1\nplan:\n  defaults:\n    sparsty: 0.5\n", "plan.defaults.sparsty",
     "unknown key"),
    ("schema_version: 1\nmodle: {path: demo}\n", "modle", "unknown key"),
    ("schema_version: 1\nplan:\n  defaults:\n    sparsity: 1.5\n", "plan.defaults.sparsity",
     "0.99"),
    ("schema_version: 1\nplan:\n  defaults:\n    sparsity: -0.1\n", "plan.defaults.sparsity",
     "0"),
    ("schema_version: 1\nplan:\n  defaults:\n    weight_bits: int3\n",
     "plan.defaults.weight_bits", "int8"),
    ("schema_version: 1\nexample_input: {shape: [1, 0, 28]}\n", "example_input.shape",
     "positive"),
    ("schema_version: 1\ndata: {source: my_images}\n", "data.source", "demo"),
    ("schema_version: 1\ntrain: {epochs: -1}\n", "train.epochs", "0"),
    ("schema_version: 1\ntrain: {epochs: 0}\ndistill:\n  alpha: 0.5\n", "line 3: distill",
     "train.epochs is 0, so it would never run"),
    ("schema_version: 1\ntrain: {epochs: 2}\nplan: {}\ntrain: {epochs: 0}\n", "line 4",
     "duplicate key 'train' (first given on line 2)"),
    ("schema_version: 1\nplan:\n  layers:\n    res: {sparsity: 0.5}\n    res: {exclude: true}\n",
     "line 5", "duplicate key 'res' (first given on line 4)"),
    ("schema_version: 1\ntrain: {epochs: 1, epochs: 0}\n", "line 2", "duplicate key 'epochs'"),
])
def test_bad_recipe_names_the_file_and_field(tmp_path, body, field, says):
    path = _recipe(tmp_path, body)
    with pytest.raises(RecipeError) as raised:
        read_recipe(path)
    message = str(raised.value)
    assert message.startswith(str(path)), message
    assert field in message and says in message, message


def test_recipe_that_is_not_text(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_bytes(b"\xff\xfe\x00binary\x00" * 10)
    with pytest.raises(RecipeError, match="cannot read the file") as raised:
        read_recipe(path)
    assert str(path) in str(raised.value)


def test_recipe_that_is_a_folder(tmp_path):
    with pytest.raises(RecipeError) as raised:
        read_recipe(tmp_path)
    assert str(tmp_path) in str(raised.value)


def _run(path: Path, out: Path) -> None:
    for _ in run_recipe_file(path, out, CancelToken()):
        pass


def test_recipe_naming_layers_that_do_not_exist(tmp_path):
    path = _recipe(tmp_path, """
        schema_version: 1
        model: {path: demo}
        plan:
          layers:
            res.conv9: {sparsity: 0.5}
    """)
    with pytest.raises(RecipeError) as raised:
        _run(path, tmp_path / "out")
    message = str(raised.value)
    assert str(path) in message and "res.conv9" in message and "nearest" in message
    assert not (tmp_path / "out").exists()


def test_recipe_naming_a_missing_model_file(tmp_path):
    path = _recipe(tmp_path, "schema_version: 1\nmodel: {path: gone.safetensors}\n")
    with pytest.raises(ModelLoadError, match="no such file") as raised:
        _run(path, tmp_path / "out")
    assert str(tmp_path / "gone.safetensors") in str(raised.value)


def test_recipe_with_an_example_input_of_the_wrong_shape(tmp_path):
    path = _recipe(tmp_path, """
        schema_version: 1
        model: {path: demo}
        example_input: {shape: [1, 3, 32, 32]}
    """)
    with pytest.raises(InputError) as raised:
        _run(path, tmp_path / "out")
    message = str(raised.value)
    assert str(path) in message and "example_input" in message and "[1, 3, 32, 32]" in message
    assert not (tmp_path / "out").exists()


def test_wrong_input_shape_when_opening(tmp_path):
    with pytest.raises(InputError, match=r"shape \[1, 1, 5\]"):
        open_workspace("demo", example=InputSpec((1, 1, 5)))


def test_wrong_input_dtype_when_opening():
    with pytest.raises(InputError):
        open_workspace("demo", example=InputSpec((1, 1, 28, 28), "int64"))


# --- models that are broken inside ---------------------------------------------------------------

class RaisingForward(torch.nn.Module):
    """A user's model whose forward fails on every input."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise KeyError("missing_feature")


def test_model_whose_forward_raises():
    loaded = LoadedModel(name="raiser", path=Path("raiser.pt"), format="pickled_module",
                         module=RaisingForward())
    with pytest.raises(InputError) as raised:
        build_tree(loaded, InputSpec((1, 4)))
    assert "KeyError" in str(raised.value) and "missing_feature" in str(raised.value)



def test_token_ids_beyond_a_plain_embedding_are_named():
    """A hand-written language model: the ids are checked against its first nn.Embedding."""
    from torch.utils.data import TensorDataset

    from studio.core.data.task import TaskData
    from studio.core.engine.data_fit import check_torch_data

    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Flatten(),
                                torch.nn.Linear(12, 2))
    ids = torch.randint(0, 10, (6, 3), generator=torch.Generator().manual_seed(0))
    ids[4, 2] = 12
    split = TensorDataset(ids)
    task = TaskData(split, split, split, None, "ids", labelled=False, metric="cosine")
    with pytest.raises(InputError, match=r"token ids must lie in 0\.\.9 \(embedding '0' holds "
                                         r"10 tokens\), but the data holds 1 id\(s\) out of "
                                         r"range: 12 \(the first in training sample 4\)"):
        check_torch_data(model, task, InputSpec((1, 3), "int64"))


def test_token_ids_beyond_an_onnx_embedding_are_named(tmp_path):
    """An ONNX export's word embeddings: the Gather that reads the input ids names the table."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper
    from torch.utils.data import TensorDataset

    from studio.core.data.task import TaskData
    from studio.core.engine.data_fit import check_token_range, input_vocabulary

    table = numpy_helper.from_array(np.zeros((10, 4), np.float32), "word_embeddings")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["word_embeddings", "input_ids"], ["hidden"])], "tokens",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "length"])],
        [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["batch", "length", 4])],
        [table])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
              tmp_path / "tokens.onnx")
    vocabulary = input_vocabulary(open_model(tmp_path / "tokens.onnx"))
    assert vocabulary == ("embedding 'word_embeddings'", 10)
    split = TensorDataset(torch.tensor([[1, 2, 3], [4, 11, -2]]))
    task = TaskData(split, split, split, None, "ids", labelled=False, metric="cosine")
    with pytest.raises(InputError, match=r"0\.\.9 \(embedding 'word_embeddings' holds 10 "
                                         r"tokens\), but the data holds 2 id\(s\) out of "
                                         r"range: -2, 11 \(the first in training sample 1\)"):
        check_token_range(task, vocabulary)

def _poisoned(demo_module: torch.nn.Module, value: float) -> dict[str, torch.Tensor]:
    state = {k: v.clone().contiguous() for k, v in demo_module.state_dict().items()}
    weights = [k for k in state if k.endswith("weight")]
    state[weights[0]].view(-1)[3] = value
    state[weights[-1]].view(-1)[0] = value
    return state


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_find_non_finite_names_the_layers(demo_module, value):
    assert find_non_finite(demo_module) == []
    demo_module.load_state_dict(_poisoned(demo_module, value))
    names = [name for name, module in demo_module.named_modules()
             if any(not torch.isfinite(p).all() for p in module.parameters(recurse=False))]
    assert find_non_finite(demo_module) == names and len(names) == 2


def test_non_finite_buffers_are_found():
    module = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    module[1].running_var[0] = float("nan")
    assert find_non_finite(module) == ["1"]


def test_nan_weights_open_for_inspection_but_a_run_refuses(tmp_path, demo_module):
    model = tmp_path / "nan.safetensors"
    save_file(_poisoned(demo_module, float("nan")), str(model),
              metadata={"architecture": DEMO_ARCHITECTURE})
    workspace = open_workspace(str(model), example=DEMO_SPEC)  # inspect still works
    broken = find_non_finite(workspace.loaded.module)
    assert len(broken) == 2
    recipe = _recipe(tmp_path, "schema_version: 1\nmodel: {path: nan.safetensors}\n"
                               "example_input: {shape: [1, 1, 28, 28]}\n")
    with pytest.raises(StudioError, match="NaN or Inf") as raised:
        _run(recipe, tmp_path / "out")
    message = str(raised.value)
    assert str(model) in message and all(name in message for name in broken)
    assert not (tmp_path / "out").exists()  # refused before any work


# --- faults while writing ------------------------------------------------------------------------

def _no_space(*_args: object, **_kwargs: object) -> int:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_full_disk_while_writing_text_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "report.json"
    path.write_text("previous")
    monkeypatch.setattr(atomic.os, "write", _no_space)
    with pytest.raises(StudioError) as raised:
        write_text_atomic(path, "new " * 1000)
    message = str(raised.value)
    assert str(path) in message and "No space left" in message and "unchanged" in message
    assert path.read_text() == "previous"
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_short_writes_are_completed(tmp_path, monkeypatch):
    real_write = os.write
    monkeypatch.setattr(atomic.os, "write", lambda fd, data: real_write(fd, bytes(data[:7])))
    write_text_atomic(tmp_path / "a.txt", "x" * 100)
    assert (tmp_path / "a.txt").read_text() == "x" * 100


def test_read_only_folder_chmod(tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir()
    (folder / "plan.yaml").write_text("previous")
    folder.chmod(0o500)
    try:
        probe = folder / ".probe"
        try:
            probe.write_text("x")
        except PermissionError:
            pass
        else:
            probe.unlink()
            pytest.skip("running as root (or a file system that ignores modes): chmod 0o500 "
                        "does not stop writes here; test_read_only_file_system covers it")
        with pytest.raises(StudioError) as raised:
            write_text_atomic(folder / "plan.yaml", "new")
        assert str(folder / "plan.yaml") in str(raised.value)
        assert (folder / "plan.yaml").read_text() == "previous"
    finally:
        folder.chmod(0o700)


def test_read_only_file_system(tmp_path, monkeypatch):
    path = tmp_path / "plan.yaml"
    path.write_text("previous")

    def read_only(*_args: object, **_kwargs: object) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(atomic.os, "open", read_only)
    with pytest.raises(StudioError) as raised:
        write_text_atomic(path, "new")
    assert str(path) in str(raised.value) and "Read-only" in str(raised.value)
    assert path.read_text() == "previous" and list(tmp_path.iterdir()) == [path]


def test_full_disk_during_onnx_export_keeps_the_previous_file(tmp_path, monkeypatch,
                                                             demo_module):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"previous model")

    def half_written(_model: object, _inputs: object, target: str, **_kwargs: object) -> None:
        Path(target).write_bytes(b"\x08\x07half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch.onnx, "export", half_written)
    with pytest.raises(StudioError) as raised:
        export_onnx(demo_module, torch.randn(DEMO_INPUT_SHAPE), path)
    message = str(raised.value)
    assert str(path) in message and "No space left" in message
    assert path.read_bytes() == b"previous model"
    assert list(tmp_path.iterdir()) == [path]
    assert not demo_module.training


def test_full_disk_when_renaming_the_export_into_place(tmp_path, monkeypatch, demo_module):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"previous model")
    from studio.core.export import onnx_export

    monkeypatch.setattr(onnx_export.os, "replace", _no_space)
    with pytest.raises(StudioError) as raised:
        export_onnx(demo_module, torch.randn(DEMO_INPUT_SHAPE), path)
    assert str(path) in str(raised.value)
    assert path.read_bytes() == b"previous model"
    assert list(tmp_path.iterdir()) == [path]


# --- files that would run code or eat the machine when opened (issue 11) -----------------------

def _marker(tmp_path: Path) -> Path:
    return tmp_path / "code-ran.txt"


def test_pt2_with_a_pickled_weight_needs_trust_and_runs_nothing(tmp_path, valid_model_files):
    marker = _marker(tmp_path)
    path = pt2_with_pickled_weight(valid_model_files[".pt2"], tmp_path / "evil.pt2", marker)
    with pytest.raises(TrustRequired, match="pickled Python object") as raised:
        open_model(path)
    assert raised.value.path == path and not marker.exists()
    with contextlib.suppress(StudioError):  # trusted: torch's own loader unpickles it fully
        open_model(path, trust=True)
    assert marker.exists()


def test_pt2_with_pickled_sample_inputs_opens_without_running_them(tmp_path,
                                                                   valid_model_files):
    marker = _marker(tmp_path)
    path = pt2_with_pickled_sample_inputs(valid_model_files[".pt2"], tmp_path / "evil.pt2",
                                          marker)
    loaded = open_model(path)
    assert loaded.format == "torch_export" and loaded.example == DEMO_SPEC
    assert not marker.exists()
    with contextlib.suppress(StudioError):
        open_model(path, trust=True)
    assert marker.exists()  # torch.export.load's fallback unpickles them fully


def test_a_normal_pt2_opens_with_its_weights(valid_model_files, demo_module, demo_input):
    loaded = open_model(valid_model_files[".pt2"])
    one = demo_input[:1]  # the demo was exported with batch 1
    torch.testing.assert_close(loaded.module(one), demo_module(one))


def _dynamic_pt2(tmp_path: Path) -> Path:
    class Flatten(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.reshape(x.shape[0], -1) * 2

    program = torch.export.export(Flatten(), (torch.randn(4, 3, 2),),
                                  dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    torch.export.save(program, tmp_path / "dynamic.pt2")
    return tmp_path / "dynamic.pt2"


def _set_all(program: object, key: str, value: str) -> None:
    if isinstance(program, dict):
        for name, item in program.items():
            if name == key and isinstance(item, str) and item.startswith(("Symbol", "torch.ops")):
                program[name] = value
            else:
                _set_all(item, key, value)
    elif isinstance(program, list):
        for item in program:
            _set_all(item, key, value)


@pytest.mark.parametrize("key, value", [
    ("expr_str", "__import__('pathlib').Path({marker!r}).write_text('ran')"),
    ("expr_str", "sympify(\"__import__('pathlib').Path({marker!r}).write_text('ran')\")"),
    ("target", "torch.os.system"),
    ("target", "torch.save"),
    ("target", "torchvision.os.system"),  # torch resolves by prefix: this is torch.os.system
])
def test_pt2_whose_program_would_run_python_needs_trust(tmp_path, key, value):
    marker = _marker(tmp_path)
    source = _dynamic_pt2(tmp_path)
    assert open_model(source).format == "torch_export"  # the untouched archive opens
    path = pt2_with_program_edit(source, tmp_path / "evil.pt2", lambda program: _set_all(
        program, key, value.format(marker=str(marker))))
    with pytest.raises(TrustRequired) as raised:
        open_model(path)
    assert str(path) in str(raised.value) and not marker.exists()


@pytest.mark.parametrize("named", [
    "studio.core.demo.train:main",  # would retrain and overwrite the shipped demo checkpoint
    "studio.cli.main:main",  # would recurse into the CLI
    "studio.qt.app:main",  # would open a window from `inspect`
])
def test_only_registered_factories_named_in_a_file_run_unasked(tmp_path, monkeypatch,
                                                               demo_module, named):
    marker = _marker(tmp_path)
    module_name, function = named.split(":")
    stand_in = types.ModuleType(module_name)  # never the real one: it must not run at all
    setattr(stand_in, function, lambda *args: marker.write_text("ran"))
    monkeypatch.setitem(sys.modules, module_name, stand_in)
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in demo_module.state_dict().items()}, str(path),
              metadata={"architecture": named})
    with pytest.raises(ArchitectureRequired) as raised:
        open_model(path)
    assert raised.value.suggestion == named and not marker.exists()
    assert open_model(path, architecture=DEMO_ARCHITECTURE).architecture == DEMO_ARCHITECTURE
    assert not marker.exists()


def test_a_project_naming_a_factory_outside_the_registry_runs_it_only_when_allowed(
        tmp_path, monkeypatch, valid_model_files):
    marker = tmp_path / "code-ran.txt"
    manifest, architecture = project_naming_its_architecture(
        tmp_path / "project", valid_model_files[".pt"], marker)
    monkeypatch.syspath_prepend(str(manifest.parent))
    with pytest.raises(ArchitectureConsentRequired) as raised:
        load_project(manifest.parent)
    assert raised.value.architecture == architecture and raised.value.path == manifest
    assert f"{manifest}: names the architecture {architecture!r}" in str(raised.value)
    with pytest.raises(ArchitectureConsentRequired, match="--trust"):  # a recipe run, untrusted
        list(run_recipe_file(manifest, tmp_path / "out", CancelToken()))
    assert not marker.exists() and not (tmp_path / "out").exists()

    assert load_project(manifest, architecture=architecture).architecture == architecture
    assert marker.read_text() == "imported\ncalled\n"
    assert load_project(manifest, trust=True).architecture == architecture


def test_a_registered_factory_named_in_a_file_is_used(tmp_path, demo_module):
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in demo_module.state_dict().items()}, str(path),
              metadata={"architecture": DEMO_ARCHITECTURE})
    assert open_model(path).architecture == DEMO_ARCHITECTURE


def _peak_rss_growth(action: Callable[[], object]) -> int:
    """Bytes the process's peak resident size grew by while ``action`` ran."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with contextlib.suppress(StudioError):
        action()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024


def test_deflated_tensor_bomb_is_refused_before_unpacking(tmp_path):
    path = deflated_zip_bomb(tmp_path / "bomb.pth")
    assert path.stat().st_size < 2 << 20
    with pytest.raises(TooLargeError, match="compression bomb") as raised:
        open_model(path, architecture=DEMO_ARCHITECTURE)
    assert str(path) in str(raised.value)
    assert _peak_rss_growth(lambda: open_model(path, architecture=DEMO_ARCHITECTURE)) < 64 << 20


def test_zip_member_claiming_more_bytes_than_the_file_holds_is_refused(tmp_path,
                                                                       valid_model_files):
    data = bytearray(valid_model_files[".pt"].read_bytes())
    entry = data.rindex(b"PK\x01\x02")  # the last member's central directory entry
    data[entry + 20:entry + 28] = (0xFFFF_FFF0).to_bytes(4, "little") * 2  # packed, unpacked
    path = tmp_path / "lying.pt"
    path.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="more than the whole file") as raised:
        open_model(path, architecture=DEMO_ARCHITECTURE)
    assert str(path) in str(raised.value)


def test_pt2_declaring_huge_tensors_in_empty_records_is_refused(tmp_path, valid_model_files):
    def edit(members: dict[str, bytes]) -> None:
        name = "data/weights/model_weights_config.json"
        config = json.loads(members[name])
        entry = next(iter(config["config"].values()))
        entry["tensor_meta"]["sizes"] = [{"as_int": 1 << 20}, {"as_int": 1 << 20}]
        members[f"data/weights/{entry['path_name']}"] = b""
        members[name] = json.dumps(config).encode()

    path = rewrite_zip(valid_model_files[".pt2"], tmp_path / "huge.pt2", edit)
    with pytest.raises(TooLargeError, match=r"would take 4398\.0 GB") as raised:
        open_model(path)
    assert str(path) in str(raised.value)


@pytest.mark.parametrize("key, value, says", [
    ("vocab_size", 10**9, "describes 32,000,020,448 weights but the weight files hold 23,520"),
    ("intermediate_size", 10**8, "describes 13,000,015,328 weights"),
    ("max_position_embeddings", 10**9, "describes 34,000,021,472 weights"),
    ("num_hidden_layers", 10**6, "describes 1,000,000 layers but the weight files hold 39"),
])
def test_hf_config_with_huge_dimensions_is_refused_before_allocating(tmp_path, key, value,
                                                                     says):
    pytest.importorskip("transformers")
    from tests.core.transformers.conftest import save_tiny_bert

    folder = save_tiny_bert(tmp_path / "bert")
    assert open_model(folder).format == "huggingface"
    config = json.loads((folder / "config.json").read_text())
    config[key] = value
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(TooLargeError, match="the config does not fit the weights") as raised:
        open_model(folder)
    assert str(folder) in str(raised.value) and says in str(raised.value)
    assert _peak_rss_growth(lambda: open_model(folder)) < 64 << 20


def _onnx_with_node_metadata(source: Path, target: Path, key: str, value: str) -> Path:
    model = onnx.load(str(source))
    for node in model.graph.node:
        node.metadata_props.add(key=key, value=value)
    onnx.save_model(model, str(target))
    return target


SCOPE_VALUES = {
    "a number": "5",
    "a string": "'stem'",
    "a list of numbers": "[0, 1, 2]",
    "a list of lists": "[['a'], ['b'], ['c']]",
    "not a literal": "__import__('os')",
    "100k characters": "['" + "x" * 100_000 + "']",
    "nested past the parser's depth": "[" * 100_000 + "]" * 100_000,
    "ten thousand levels": repr([f"s{i}" for i in range(10_000)]),
}


@pytest.mark.parametrize("key", ["pkg.torch.onnx.name_scopes",
                                 "pkg.torch.onnx.class_hierarchy"])
@pytest.mark.parametrize("shape", list(SCOPE_VALUES))
def test_onnx_scope_metadata_that_is_not_a_list_of_names_is_ignored(tmp_path, demo_onnx_path,
                                                                     key, shape):
    expected = build_tree(open_model(demo_onnx_path), None).names()
    path = _onnx_with_node_metadata(demo_onnx_path, tmp_path / "odd.onnx", key,
                                    SCOPE_VALUES[shape])
    assert build_tree(open_model(path), None).names() == expected  # grouped by node names


def test_onnx_scope_metadata_that_is_a_list_of_names_is_used(tmp_path, demo_onnx_path):
    path = _onnx_with_node_metadata(demo_onnx_path, tmp_path / "scoped.onnx",
                                    "pkg.torch.onnx.name_scopes", "['', 'outer', 'outer.in', 'x']")
    _onnx_with_node_metadata(path, path, "pkg.torch.onnx.class_hierarchy", "[0, 1]")
    assert {"outer", "outer.in"} <= set(build_tree(open_model(path), None).names())


def test_megabytes_of_onnx_scope_metadata_cost_no_gigabytes(tmp_path, demo_onnx_path):
    """50 MB of list literal once cost 4.2 GB: ast.literal_eval's syntax tree of it (here 2 MB
    on each node cost 0.46 GB and 3.5 minutes)."""
    value = "[" + "'a'," * 500_000 + "]"
    path = _onnx_with_node_metadata(demo_onnx_path, tmp_path / "bomb.onnx",
                                    "pkg.torch.onnx.name_scopes", value)
    growth = _peak_rss_growth(lambda: build_tree(open_model(path), None))
    assert growth < 256 << 20, f"{growth / 1e6:.0f} MB"


# --- output folders: a run never writes over what it did not write, and lands as one unit -------

def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _staging_left(tmp_path: Path) -> list[Path]:
    return [p for p in tmp_path.iterdir() if p.name.startswith(run_outputs.STAGING_PREFIX)]


def test_an_output_folder_holding_the_input_model_is_refused(tmp_path, quick_onnx_recipe):
    recipe = quick_onnx_recipe(tmp_path, "model.onnx")
    before = _snapshot(tmp_path)
    with pytest.raises(StudioError, match=r"holds the input model model\.onnx") as raised:
        _run(recipe, tmp_path)
    assert str(tmp_path) in str(raised.value)
    assert _snapshot(tmp_path) == before and not _staging_left(tmp_path)


@pytest.mark.parametrize("name", ["model.onnx", "report.json", "splits.json", "baseline.onnx"])
def test_a_file_the_studio_did_not_write_is_never_overwritten(tmp_path, quick_onnx_recipe, name):
    out = tmp_path / "out"
    out.mkdir()
    (out / name).write_text("the user's own")
    (out / "notes.txt").write_text("kept")
    with pytest.raises(StudioError, match=f"holds {name}, which the studio did not write"):
        _run(quick_onnx_recipe(tmp_path), out)
    assert _snapshot(out) == {name: b"the user's own", "notes.txt": b"kept"}
    assert not _staging_left(tmp_path)


def test_a_second_run_replaces_the_first_as_a_unit_and_keeps_other_files(tmp_path,
                                                                          quick_onnx_recipe):
    out = tmp_path / "out"
    _run(quick_onnx_recipe(tmp_path), out)
    first = _snapshot(out)
    assert {"model.onnx", "baseline.onnx", "report.json", "splits.json"} <= set(first)
    report = json.loads(first["report.json"])
    assert report["paths"]["model"] == str(out / "model.onnx")
    assert "staging" not in first["report.json"].decode()
    (out / "notes.txt").write_text("kept")
    inodes = {p.name: p.stat().st_ino for p in out.iterdir()}
    _run(quick_onnx_recipe(tmp_path), out)
    second = _snapshot(out)
    assert second["notes.txt"] == b"kept" and set(second) == set(first) | {"notes.txt"}
    replaced = {p.name for p in out.iterdir() if p.stat().st_ino != inodes[p.name]}
    assert replaced == set(first)  # every file of the first run, and nothing else
    assert not _staging_left(tmp_path)


def test_a_folder_written_before_the_marker_is_known_by_its_report(tmp_path, quick_onnx_recipe):
    out = tmp_path / "out"
    _run(quick_onnx_recipe(tmp_path), out)
    (out / run_outputs.MARKER).unlink()  # as an earlier version of the studio left it
    _run(quick_onnx_recipe(tmp_path), out)
    assert (out / run_outputs.MARKER).is_file()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "model.onnx").write_text("the user's")
    (foreign / "report.json").write_text(json.dumps({"paths": {"model": str(out / "model.onnx")}}))
    with pytest.raises(StudioError, match=r"holds model\.onnx, which the studio did not write"):
        _run(quick_onnx_recipe(tmp_path), foreign)
    assert (foreign / "model.onnx").read_text() == "the user's"


@pytest.mark.parametrize("moment", ["Quantizing", "Timing"])
def test_a_cancelled_run_leaves_the_earlier_run_as_it_was(tmp_path, quick_onnx_recipe, moment):
    out = tmp_path / "out"
    _run(quick_onnx_recipe(tmp_path), out)
    before = _snapshot(out)
    token = CancelToken()
    seen = []
    # Many timing rounds: without a cancel check in the timing loop the run would finish.
    with pytest.raises(JobCancelled):
        recipe = quick_onnx_recipe(tmp_path, repeats=1000)
        for event in run_recipe_file(recipe, out, token):
            if isinstance(event, Log):
                seen.append(event.message)
                if event.message.startswith(moment):
                    token.cancel()
    assert any(m.startswith(moment) for m in seen)
    assert _snapshot(out) == before
    assert not _staging_left(tmp_path)


def test_staging_folders_of_a_killed_run_are_removed_by_the_next_run(tmp_path,
                                                                     quick_onnx_recipe):
    stale = tmp_path / f"{run_outputs.STAGING_PREFIX}dead"
    stale.mkdir()
    (stale / "model.onnx").write_bytes(b"half")
    _run(quick_onnx_recipe(tmp_path), tmp_path / "out")
    assert not stale.exists() and not _staging_left(tmp_path)


def test_a_live_run_into_the_same_folder_is_refused_and_its_staging_kept(tmp_path):
    out = tmp_path / "out"
    with run_outputs.RunOutputs(out, ["report.json"]) as live:
        with pytest.raises(StudioError, match="another run is writing into this folder"):
            run_outputs.RunOutputs(out, ["report.json"])
        other = run_outputs.RunOutputs(tmp_path / "elsewhere", ["report.json"])
        assert live.staging.is_dir()  # a live staging folder is never taken for a stale one
        other.discard()
    assert not live.staging.exists()


def test_an_output_folder_that_is_a_file_or_cannot_be_made(tmp_path, quick_onnx_recipe):
    afile = tmp_path / "taken"
    afile.write_text("a file")
    with pytest.raises(StudioError, match="the output folder is a file") as raised:
        _run(quick_onnx_recipe(tmp_path), afile)
    assert str(afile) in str(raised.value) and afile.read_text() == "a file"
    with pytest.raises(StudioError, match="cannot create the output folder") as raised:
        _run(quick_onnx_recipe(tmp_path), afile / "out")
    assert str(afile / "out") in str(raised.value)


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_output_files_respect_the_umask(tmp_path, quick_onnx_recipe, umask):
    previous = os.umask(umask)
    try:
        out = tmp_path / "out"
        _run(quick_onnx_recipe(tmp_path), out)
        write_text_atomic(tmp_path / "plan.yaml", "x")
    finally:
        os.umask(previous)
    modes = {p.name: p.stat().st_mode & 0o777 for p in [*out.iterdir(), tmp_path / "plan.yaml"]}
    assert {"model.onnx", "baseline.onnx", "report.json", "splits.json"} <= set(modes)
    assert set(modes.values()) == {0o666 & ~umask}, modes
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask


# --- advice the user can follow ------------------------------------------------------------------

def test_advice_after_a_drop_on_an_onnx_file_is_something_it_can_do(tmp_path,
                                                                    outlier_convs_recipe):
    """Dynamic int8 wrecks these convolutions; an ONNX file cannot be fine-tuned here, so the
    note must not say so, and what it does say (leave the first layer float) must work."""
    events = list(run_recipe_file(outlier_convs_recipe(tmp_path), tmp_path / "a", CancelToken()))
    report = events[-1].report
    assert report["compressed"]["metric"]["value"] < 0.8
    [note] = [n for n in report["notes"] if "dropped" in n]
    assert "fine-tun" not in note and "distill" not in note
    assert "static int8 for the convolutions (act_bits: int8" in note
    assert "exclude: true in plan.layers; the first and last often are: '/0/Conv', '/2/Conv'" \
        in note
    followed = outlier_convs_recipe(tmp_path, "{'/0/Conv': {exclude: true}}")
    events = list(run_recipe_file(followed, tmp_path / "b", CancelToken()))
    assert events[-1].report["compressed"]["metric"]["value"] > 0.99


# --- a full disk during quantization -------------------------------------------------------------

def _short_write_then(error: Exception):
    def quantize(_src: str, out: str, *_args: object, **_kwargs: object) -> None:
        Path(out).write_bytes(b"\x08")  # what a writer in C++ leaves on a full disk
        raise error
    return quantize


@pytest.mark.parametrize("fault", ["parse error after a short write", "ENOSPC"])
def test_full_disk_during_static_quantization_says_so_and_cleans_up(tmp_path, monkeypatch,
                                                                    quick_onnx_recipe, fault):
    from studio.core.methods.quantization import ort

    recipe = quick_onnx_recipe(tmp_path)
    if fault == "ENOSPC":
        monkeypatch.setattr(ort, "quantize_static",
                            _short_write_then(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))))
    else:
        monkeypatch.setattr(ort, "quantize_static", _short_write_then(
            ValueError("Failed to find proper ai.onnx domain")))
        real = shutil.disk_usage
        monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=0))
    before = sorted(tmp_path.iterdir())
    with pytest.raises(StudioError, match=r"static quantization .* no space left on device") \
            as raised:
        _run(recipe, tmp_path / "out")
    assert "staging" not in str(raised.value)
    assert sorted(tmp_path.iterdir()) == before  # no compressed-float.onnx, no staging folder


@contextlib.contextmanager
def _small_tmpfs(folder: Path, size: str):
    folder.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                       check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("mounting a tmpfs needs root (mount -t tmpfs); the simulated test covers it")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_real_full_disk_during_static_quantization(tmp_path, quick_onnx_recipe):
    recipe = quick_onnx_recipe(tmp_path)  # the demo's ONNX file is 413 KB
    with _small_tmpfs(tmp_path / "small", "1100k") as small:
        with pytest.raises(StudioError, match="no space left on device") as raised:
            _run(recipe, small / "out")
        assert str(small / "out") in str(raised.value) and "staging" not in str(raised.value)
        assert list(small.iterdir()) == []
