"""``compression-studio-gui --self-check OUT [PATH ...]``: prove an installed or frozen app works.

What a bundle breaks silently (a missing module, plugin or resource; a job child that cannot
start) shows only when the real window opens a model and runs a job. This opens the window
offscreen-capable, opens the demo, runs the int8 example recipe as a job through the same child
launcher the Run button uses, checks the compressed ONNX in onnxruntime, opens each extra PATH
(an ONNX file, a Hugging Face folder, ...), and writes what it saw to ``OUT/self-check.json``.
Each step prints one JSON line as it ends, so a caller can time the first window. It uses a
private settings and recovery folder: the user's own are never touched.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import QEventLoop, QSettings, QTimer

STEP_TIMEOUT_MS = 600_000
"""A guard against a hang, not a measurement: a frozen job on a loaded machine takes ~1 min."""


def _say(step: str, **fields: Any) -> dict[str, Any]:
    record = {"step": step, **fields}
    print(json.dumps(record), flush=True)
    return record


def _wait(connect: Callable[[Callable[..., None]], None], what: str) -> tuple[Any, ...]:
    """Run the event loop until the signal ``connect`` hooks up fires; its arguments."""
    loop = QEventLoop()
    got: list[tuple[Any, ...]] = []

    def done(*args: Any) -> None:
        got.append(args)
        loop.quit()

    connect(done)
    QTimer.singleShot(STEP_TIMEOUT_MS, loop.quit)
    loop.exec()
    if not got:
        raise RuntimeError(f"{what} did not happen within {STEP_TIMEOUT_MS // 1000} s")
    return got[0]


def _check_onnx(path: Path) -> dict[str, Any]:
    """Run the file once in onnxruntime on a random input (free axes at 1)."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    first = session.get_inputs()[0]
    shape = [dim if isinstance(dim, int) else 1 for dim in first.shape]
    feed = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    (output,) = session.run(None, {first.name: feed})
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    return {"bytes": path.stat().st_size, "output_shape": list(output.shape),
            "finite": bool(np.isfinite(output).all()), "int8_ops": sorted(
                op for op in ops if op in {"QuantizeLinear", "DequantizeLinear", "QLinearConv",
                                           "ConvInteger", "MatMulInteger"})}


def run_self_check(out_dir: Path, extra_paths: list[str]) -> int:
    """The checks above; 0 when every one passed."""
    from studio.core.jobs.kinds import JobSpec
    from studio.core.plan.recipe import read_recipe
    from studio.core.resources import resource_path
    from studio.qt.app import application
    from studio.qt.jobs.runner import ProcessJob
    from studio.qt.main_window import MainWindow

    out_dir.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    app = application()
    private = Path(tempfile.mkdtemp(prefix="studio-self-check-"))
    window = MainWindow(QSettings(str(private / "settings.ini"), QSettings.Format.IniFormat),
                        private / "recovery")
    window.ask_save_changes = lambda: None  # type: ignore[method-assign]
    window.show()
    app.processEvents()
    records.append(_say("window_shown"))
    try:
        for path in ["demo", *extra_paths]:
            window.project.open_path(path)
            _wait(window.workspaceOpened.connect, f"opening {path}")
            workspace = window.session.workspace
            records.append(_say("opened", path=path, layers=len(workspace.tree.nodes)))
        recipe_path = resource_path("recipes", "demo-int8.yaml")
        run_dir = out_dir / "int8-run"
        spec = JobSpec("run", read_recipe(recipe_path), recipe_path.parent, run_dir,
                       source=str(recipe_path))
        job = ProcessJob(spec.to_json(), window)
        job.start()
        status, report, error = _wait(job.finished.connect, "the int8 job")
        if status != "finished":
            raise RuntimeError(f"the int8 job {status}: {error}")
        exported = out_dir / "demo-int8.onnx"
        exported.write_bytes(Path(report["paths"]["model"]).read_bytes())
        records.append(_say("job_finished", metric=report["compressed"]["metric"],
                            onnx=_check_onnx(exported)))
        ok = records[-1]["onnx"]["finite"] and bool(records[-1]["onnx"]["int8_ops"])
    except Exception as error:  # the check's whole point is to say what broke, in one line
        records.append(_say("failed", error=f"{type(error).__name__}: {error}"))
        ok = False
    (out_dir / "self-check.json").write_text(json.dumps(records, indent=1), encoding="utf-8")
    window.close()
    return 0 if ok else 1


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: compression-studio-gui --self-check OUT_DIR [MODEL_PATH ...]",
              file=sys.stderr)
        return 2
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    return run_self_check(Path(argv[0]), argv[1:])
