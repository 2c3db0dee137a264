"""Fixtures shared by every test; nothing here imports Qt (tests/qt/conftest.py does that)."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # the Qt tests run without a display

import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from studio.core.demo.model import DEMO_INPUT_SHAPE, DemoCNN
from studio.core.models.loader import open_model
from studio.core.workspace import Workspace, open_workspace


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Tiny convolutions on a loaded 2-core machine run up to 100x slower on two threads than
    on one; tests that train them ask for this."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def demo_workspace() -> Workspace:
    """The built-in demo, opened and traced as the GUI and the CLI open it (a fresh one each
    time, so a test may edit its plan)."""
    return open_workspace("demo")


@pytest.fixture
def demo_module() -> DemoCNN:
    """A fresh copy of the trained demo CNN, in eval mode."""
    module = open_model("demo").module
    assert isinstance(module, DemoCNN)
    return module


@pytest.fixture
def demo_input() -> torch.Tensor:
    """A batch of two digits-shaped inputs, to compare outputs of two models."""
    return torch.randn((2, *DEMO_INPUT_SHAPE[1:]), generator=torch.Generator().manual_seed(1))


def _export_onnx_legacy(module: torch.nn.Module, path: Path,
                        shape: tuple[int, ...] = DEMO_INPUT_SHAPE) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter announces its deprecation
        torch.onnx.export(module, (torch.randn(shape),), str(path), dynamo=False,
                          input_names=["input"], output_names=["logits"])
    return path


@pytest.fixture(scope="session")
def export_onnx() -> Callable[..., Path]:
    """``export_onnx(module, path, shape=(1, 1, 28, 28))``: the TorchScript exporter (fast, and
    it names nodes by module scope: ``/res/conv1/conv1.0/Conv``)."""
    return _export_onnx_legacy


@pytest.fixture(scope="session")
def demo_onnx_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo exported once per session to ONNX; copy it before changing it."""
    folder = tmp_path_factory.mktemp("onnx")
    return _export_onnx_legacy(open_model("demo").module, folder / "demo.onnx")


@pytest.fixture(scope="session")
def valid_model_files(tmp_path_factory: pytest.TempPathFactory,
                      demo_onnx_path: Path) -> dict[str, Path]:
    """The demo saved once per session in every format, keyed by suffix: ``.pt`` (state dict),
    ``.pt2`` (torch.export), ``.safetensors`` (with its architecture) and ``.onnx``. Read them;
    copy before changing."""
    from safetensors.torch import save_file

    from studio.core.demo.model import DEMO_ARCHITECTURE

    folder = tmp_path_factory.mktemp("valid-models")
    module = open_model("demo").module
    torch.save(module.state_dict(), folder / "demo.pt")
    save_file({k: v.contiguous() for k, v in module.state_dict().items()},
              str(folder / "demo.safetensors"), metadata={"architecture": DEMO_ARCHITECTURE})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(module, (torch.randn(DEMO_INPUT_SHAPE),))
        torch.export.save(program, folder / "demo.pt2")
    (folder / "demo.onnx").write_bytes(demo_onnx_path.read_bytes())
    return {path.suffix: path for path in folder.iterdir()}


TRAINING_RECIPE = """\
schema_version: 1
model: {path: demo}
plan:
  defaults: {sparsity: 0.5, granularity: channels}
  layers:
    head: {exclude: true}
data: {source: demo, train_samples: 512}
train: {epochs: 1, lr: 0.002, batch_size: 64, seed: 3}
distill: {temperature: 4.0, alpha: 0.7}
export: {latency_repeats: 2, latency_batch: 8}
"""


@pytest.fixture
def training_recipe() -> str:
    """A small recipe that trains: 50% channels, then one epoch of KD on 512 digits."""
    return TRAINING_RECIPE


def _save_with_external_data(source: Path, target: Path, data_file: str = "weights.bin",
                             location: str | None = None) -> Path:
    import onnx

    onnx.save_model(onnx.load(str(source)), str(target), save_as_external_data=True,
                    all_tensors_to_one_file=True, location=data_file, size_threshold=0)
    if location is not None:  # point the weights somewhere else (the data stays where it is)
        model = onnx.load(str(target), load_external_data=False)
        for tensor in model.graph.initializer:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = location
        onnx.save_model(model, str(target))
    return target


@pytest.fixture(scope="session")
def save_with_external_data() -> Callable[..., Path]:
    """``save_with_external_data(source, target, data_file="weights.bin", location=None)``:
    ``source`` saved as ``target`` with its weights in ``data_file``; ``location`` then rewrites
    where the file says they are."""
    return _save_with_external_data


QUICK_INT8 = """\
schema_version: 1
model: {{path: {model}}}
plan: {{defaults: {{weight_bits: int8, act_bits: int8}}}}
data: {{source: arrays, path: digits.npz, calibration_samples: 16, test_fraction: 0.25}}
train: {{epochs: 0}}
export: {{latency_repeats: {repeats}, latency_batch: 8}}
"""


@pytest.fixture
def quick_onnx_recipe(demo_onnx_path: Path) -> Callable[..., Path]:
    """``quick_onnx_recipe(folder, model="demo.onnx", repeats=2)``: writes into ``folder`` the
    demo's ONNX file as ``model``, 48 digits-shaped samples and ``quick.yaml``, a static int8
    recipe over them (a whole run in seconds; ``repeats`` timing rounds), and returns the
    recipe's path."""
    import numpy as np

    def make(folder: Path, model: str = "demo.onnx", repeats: int = 2) -> Path:
        if not (folder / model).exists():
            (folder / model).write_bytes(demo_onnx_path.read_bytes())
        rng = np.random.default_rng(0)
        np.savez(folder / "digits.npz",
                 x=rng.standard_normal((48, *DEMO_INPUT_SHAPE[1:]), dtype=np.float32),
                 y=rng.integers(0, 10, 48))
        recipe = folder / "quick.yaml"
        recipe.write_text(QUICK_INT8.format(model=model, repeats=repeats))
        return recipe

    return make


OUTLIER_CONVS = """\
schema_version: 1
model: {{path: convs.onnx}}
plan: {{defaults: {{weight_bits: int8}}, layers: {layers}}}
data: {{source: arrays, path: convs.npz, calibration_samples: 16, test_fraction: 0.25}}
train: {{epochs: 0}}
quantize: {{int8_path: dynamic}}
export: {{latency_repeats: 2, latency_batch: 8}}
"""


@pytest.fixture
def outlier_convs_recipe() -> Callable[..., Path]:
    """``outlier_convs_recipe(folder, layers="{}")``: a two-Conv ONNX file whose first Conv
    holds one huge weight per output channel on an input channel the data leaves at zero, its
    data and a recipe forcing dynamic int8 (``layers``: the plan's layers, YAML flow
    style). Dynamic int8 rounds every other weight of that Conv to zero: cosine about 0.6."""
    import numpy as np

    def make(folder: Path, layers: str = "{}") -> Path:
        torch.manual_seed(0)
        convs = torch.nn.Sequential(torch.nn.Conv2d(2, 8, 3), torch.nn.ReLU(),
                                    torch.nn.Conv2d(8, 8, 3))
        with torch.no_grad():
            convs[0].weight[:, 1, 1, 1] = 1000.0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(convs, (torch.randn(1, 2, 12, 12),), str(folder / "convs.onnx"),
                              dynamo=False, input_names=["input"], output_names=["out"],
                              dynamic_axes={"input": {0: "batch"}, "out": {0: "batch"}})
        inputs = np.random.default_rng(0).standard_normal((48, 2, 12, 12)).astype(np.float32)
        inputs[:, 1] = 0
        np.savez(folder / "convs.npz", x=inputs)
        recipe = folder / "convs.yaml"
        recipe.write_text(OUTLIER_CONVS.format(layers=layers))
        return recipe

    return make
