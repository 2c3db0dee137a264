"""``compression-studio inspect``: the headless face over the same core."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from studio.cli.main import main
from studio.core.demo.model import DEMO_ARCHITECTURE
from studio.core.errors import InputError, StudioError
from studio.core.units import format_bytes, format_count


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_inspect_demo_json(capsys, demo_workspace):
    code, out, err = _run(capsys, "inspect", "demo", "--json")
    assert code == 0 and err == ""
    report = json.loads(out)
    tree = demo_workspace.tree
    assert report["model"] == "demo-cnn"
    assert report["format"] == "safetensors"
    assert report["example_input"] == "1,1,28,28"

    layers = report["layers"]
    assert [layer["name"] for layer in layers] == tree.names()[1:]
    for layer in layers:
        assert {"name", "type", "params", "macs", "bytes", "output_shape"} <= set(layer)
        node = tree.get(layer["name"])
        assert layer["type"] == node.op_type
        assert (layer["params"], layer["macs"], layer["bytes"]) == (
            node.total_params, node.total_macs, node.total_nbytes)
        assert layer["output_shape"] == list(node.output_shape)

    conv = next(layer for layer in layers if layer["name"] == "res.conv1.0")
    assert conv["type"] == "Conv2d" and conv["output_shape"] == [1, 64, 14, 14]
    assert conv["leaf"] is True and conv["weight_bits"] == 32

    totals = report["totals"]
    model = demo_workspace.loaded.module
    assert totals["params"] == sum(p.numel() for p in model.parameters())
    assert totals == {"params": tree.root.total_params, "macs": tree.root.total_macs,
                      "bytes": tree.root.total_nbytes}
    # Layer figures are subtree totals: the leaves add up to the whole model.
    leaves = [layer for layer in layers if layer["leaf"]]
    for key in ("params", "macs", "bytes"):
        assert sum(layer[key] for layer in leaves) == totals[key]
        top = [layer for layer in layers if "." not in layer["name"]]
        assert sum(layer[key] for layer in top) == totals[key]


def test_inspect_demo_text(capsys, demo_workspace):
    code, out, err = _run(capsys, "inspect", "demo")
    assert code == 0 and err == ""
    lines = out.splitlines()
    root = demo_workspace.tree.root
    assert lines[-1] == (f"demo-cnn (safetensors): {format_count(root.total_params)} params, "
                         f"{format_count(root.total_macs)} MACs, "
                         f"{format_bytes(root.total_nbytes)}; example input 1,1,28,28")
    assert lines[0].split() == ["layer", "type", "output", "params", "MACs", "bytes", "sparsity"]
    assert len(lines) == len(demo_workspace.tree) + 2  # header, one row per node, totals
    assert any(line.split()[:3] == ["conv1", "ConvBNReLU", "1×64×14×14"] for line in lines)


def test_inspect_depth_limits_rows(capsys, demo_workspace):
    code, out, _ = _run(capsys, "inspect", "demo", "--depth", "1")
    assert code == 0
    top = [n for n in demo_workspace.tree.nodes if n.parent in (None, 0)]
    assert len(out.splitlines()) == len(top) + 2


def test_inspect_input_shape_override(capsys):
    code, out, _ = _run(capsys, "inspect", "demo", "--json", "--input-shape", "4,1,32,32")
    assert code == 0
    report = json.loads(out)
    assert report["example_input"] == "4,1,32,32"
    stem = next(layer for layer in report["layers"] if layer["name"] == "stem.0")
    assert stem["output_shape"] == [4, 32, 32, 32]
    assert stem["macs"] == 4 * 32 * 32 * 32 * 1 * 3 * 3


@pytest.mark.parametrize("shape", ["1,3,28,28", "1,1,28", "abc", "1,-1,28,28"])
def test_bad_input_shape_is_one_line_and_exit_code_2(capsys, shape):
    code, out, err = _run(capsys, "inspect", "demo", "--input-shape", shape)
    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("compression-studio: error: ")
    assert "Traceback" not in err


@pytest.mark.parametrize("where", ["after", "before"])
def test_debug_shows_the_traceback(capsys, where):
    argv = ["inspect", "demo", "--input-shape", "1,3,28,28"]
    argv = [*argv, "--debug"] if where == "after" else ["--debug", *argv]
    with pytest.raises(InputError, match=r"\[1, 3, 28, 28\]"):
        main(argv)


def test_state_dict_needs_arch_then_works(capsys, tmp_path, demo_module):
    path = tmp_path / "weights.pt"
    torch.save(demo_module.state_dict(), path)
    code, _, err = _run(capsys, "inspect", str(path))
    assert code == 2 and "--arch" in err and str(path) in err
    code, out, _ = _run(capsys, "inspect", str(path), "--arch", DEMO_ARCHITECTURE,
                        "--input-shape", "1,1,28,28", "--json")
    assert code == 0
    report = json.loads(out)
    assert report["format"] == "state_dict"
    assert report["totals"]["params"] == sum(p.numel() for p in demo_module.parameters())


def test_pickled_module_needs_trust(capsys, tmp_path, demo_module):
    path = tmp_path / "whole.pt"
    torch.save(demo_module, path)
    code, _, err = _run(capsys, "inspect", str(path))
    assert code == 2 and "--trust" in err
    code, out, _ = _run(capsys, "inspect", str(path), "--trust", "--input-shape", "1,1,28,28")
    assert code == 0 and "pickled_module" in out.splitlines()[-1]


def test_inspect_onnx(capsys, demo_onnx_path, demo_workspace):
    code, out, _ = _run(capsys, "inspect", str(demo_onnx_path), "--json")
    assert code == 0
    report = json.loads(out)
    assert report["format"] == "onnx"
    assert report["example_input"] == "1,1,28,28"
    assert report["totals"]["macs"] == demo_workspace.tree.root.total_macs


def test_missing_model_file(capsys, tmp_path):
    code, _, err = _run(capsys, "inspect", str(tmp_path / "nope.onnx"))
    assert code == 2 and "no such file" in err


def test_bugs_keep_their_traceback(monkeypatch):
    # Only a StudioError becomes a one-line message; anything else is a bug and must surface.
    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr("studio.cli.inspect.open_workspace", broken)
    with pytest.raises(ZeroDivisionError):
        main(["inspect", "demo"])


def test_studio_errors_from_the_core_become_exit_code_2(capsys, monkeypatch):
    def refuse(*args, **kwargs):
        raise StudioError("refused for a reason")

    monkeypatch.setattr("studio.cli.inspect.open_workspace", refuse)
    code, _, err = _run(capsys, "inspect", "demo")
    assert code == 2 and err == "compression-studio: error: refused for a reason\n"


def test_console_script_entry_point():
    beside_python = Path(sys.executable).with_name("compression-studio")
    script = str(beside_python) if beside_python.is_file() else shutil.which("compression-studio")
    assert script, "the compression-studio console script is not installed"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    result = subprocess.run([script, "inspect", "demo", "--json"], capture_output=True,
                            text=True, timeout=120, env=env, check=False)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["model"] == "demo-cnn"
    assert report["totals"]["macs"] > 0
