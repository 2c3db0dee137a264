"""Build the frozen bundle and prove it works, headless: ``python packaging/smoke_test.py``.

A bundle breaks silently (a module the spec left out, a job child that cannot start in a frozen
app), so CI builds it and runs it the way a user would: the console executable inspects an
ONNX file and a Hugging Face folder; the window executable, offscreen, opens the demo, the ONNX
file and the folder, runs the int8 example recipe as a job through the window's own child
launcher, and writes the compressed ONNX, which is then checked here in onnxruntime. Any step
that fails makes the script exit 1 with the step named. Figures (bundle size, time to the first
window, each step's time) go to ``--json``.

    python packaging/smoke_test.py --json smoke.json            # build, then check
    python packaging/smoke_test.py --bundle dist/compression-studio --json smoke.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "packaging" / "compression-studio.spec"
STEP_TIMEOUT_S = 3600
"""A guard against a hang (a job waiting forever), not a measurement."""


class SmokeFailure(Exception):
    """One step of the smoke test failed; the message names it."""


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def build(work: Path) -> tuple[Path, float]:
    """Run PyInstaller on the spec; the bundle folder and the seconds it took."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "PyInstaller", "-y", "--log-level", "WARN",
                           "--distpath", str(work / "dist"), "--workpath", str(work / "build"),
                           str(SPEC)], capture_output=True, text=True, timeout=STEP_TIMEOUT_S)
    if done.returncode != 0:
        raise SmokeFailure(f"pyinstaller failed:\n{done.stderr[-4000:]}")
    return work / "dist" / "compression-studio", time.perf_counter() - start


def make_fixtures(folder: Path) -> tuple[Path, Path]:
    """A small ONNX file and a tiny Hugging Face folder, made with the build environment's
    torch and transformers (random weights, nothing downloaded)."""
    import torch
    from transformers import BertConfig, BertModel

    onnx_path = folder / "small.onnx"
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 6 * 6, 3)).eval()
    torch.onnx.export(model, (torch.randn(1, 1, 8, 8),), str(onnx_path), dynamo=False,
                      input_names=["input"], dynamic_axes={"input": {0: "batch"}})
    hf_folder = folder / "tiny-bert"
    BertModel(BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=32)).save_pretrained(hf_folder)
    return onnx_path, hf_folder


def program(bundle: Path, name: str) -> Path:
    return bundle / (name + (".exe" if sys.platform == "win32" else ""))


def run_cli(bundle: Path, *args: str) -> float:
    """Run the bundle's console executable; seconds taken. Fails on a non-zero exit."""
    start = time.perf_counter()
    done = subprocess.run([str(program(bundle, "compression-studio-cli")), *args],
                          capture_output=True, text=True, timeout=STEP_TIMEOUT_S)
    if done.returncode != 0:
        raise SmokeFailure(f"compression-studio-cli {' '.join(args)} exited "
                           f"{done.returncode}:\n{done.stderr[-4000:]}")
    return time.perf_counter() - start


def run_self_check(bundle: Path, out: Path, paths: list[Path]) -> dict[str, Any]:
    """The window's self-check (studio/qt/self_check.py), offscreen; each step's time since the
    program started, read from its JSON lines as they come."""
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    env.pop("PYTHONPATH", None)  # the bundle must not lean on the checkout
    start = time.perf_counter()
    process = subprocess.Popen([str(program(bundle, "compression-studio")), "--self-check",
                                str(out), *map(str, paths)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env)
    steps = []
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("{"):
            steps.append({**json.loads(line), "s": round(time.perf_counter() - start, 2)})
    stderr = process.stderr.read() if process.stderr else ""
    if process.wait(timeout=STEP_TIMEOUT_S) != 0:
        raise SmokeFailure(f"the window's self-check failed: {steps[-1:]}\n{stderr[-4000:]}")
    return {"steps": steps, "window_s": next(s["s"] for s in steps
                                              if s["step"] == "window_shown")}


def check_exported(path: Path) -> dict[str, Any]:
    """The compressed ONNX the frozen app wrote, run here in onnxruntime on real digits."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    from studio.core.demo.data import load_demo_digits

    if not path.is_file():
        raise SmokeFailure(f"the frozen app wrote no compressed model at {path}")
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    if "QuantizeLinear" not in ops:
        raise SmokeFailure(f"{path.name} holds no int8 (QDQ) nodes: {sorted(ops)}")
    digits = load_demo_digits()
    inputs, labels = digits.test_images[:256].numpy(), digits.test_labels[:256].numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (scores,) = session.run(None, {session.get_inputs()[0].name: inputs})
    accuracy = float((np.argmax(scores, axis=1) == labels).mean())
    if accuracy < 0.9:
        raise SmokeFailure(f"{path.name} scores {accuracy:.3f} on 256 demo digits")
    return {"bytes": path.stat().st_size, "accuracy_256": accuracy}


def smoke(bundle: Path | None, work: Path) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    start = time.perf_counter()
    if bundle is None:
        bundle, figures["build_s"] = build(work)
    figures["bundle_bytes"] = folder_bytes(bundle)
    onnx_path, hf_folder = make_fixtures(work)
    figures["cli_inspect_onnx_s"] = run_cli(bundle, "inspect", str(onnx_path))
    figures["cli_inspect_hf_s"] = run_cli(bundle, "inspect", str(hf_folder))
    figures["self_check"] = run_self_check(bundle, work / "self-check", [onnx_path, hf_folder])
    figures["exported"] = check_exported(work / "self-check" / "demo-int8.onnx")
    figures["smoke_s"] = round(time.perf_counter() - start, 1)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, help="check this bundle instead of building one")
    parser.add_argument("--work", type=Path,
                        help="where to build and keep the bundle (default: a temporary folder, "
                             "removed at the end)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="studio-smoke-") as scratch:
        work = args.work or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        try:
            figures = smoke(args.bundle, work)
        except (SmokeFailure, subprocess.TimeoutExpired) as error:
            print(f"smoke test: FAILED: {error}", file=sys.stderr)
            return 1
    text = json.dumps(figures, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
