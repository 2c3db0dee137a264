"""The recover step with a ``distill`` section naming several teachers, one of them an ONNX
file, with the teachers' outputs cached on disk: a real run on a few demo digits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from studio.core.engine.run import run_recipe
from studio.core.errors import TrustRequired
from studio.core.export.onnx_export import export_onnx
from studio.core.jobs import CancelToken, Result
from studio.core.plan.recipe import parse_recipe
from studio.core.workspace import open_workspace

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

RECIPE = """\
schema_version: 1
model: {path: demo}
plan:
  defaults: {sparsity: 0.5, granularity: channels}
  layers:
    head: {exclude: true}
data: {source: demo, train_samples: 64, calibration_samples: 16}
train: {epochs: 2, batch_size: 32}
distill:
  teachers: [{path: original}, {path: %s, weight: 0.5}]
  teacher_weighting: confidence
  cache: disk
export: {latency_repeats: 1, latency_batch: 8}
"""


def test_two_teachers_one_onnx_cached_on_disk_report_their_cache(tmp_path: Path):
    demo = open_workspace("demo")
    assert demo.loaded.module is not None and demo.example is not None
    export_onnx(demo.loaded.module, demo.example.make_tensor(), tmp_path / "teacher.onnx")
    events = list(run_recipe(parse_recipe(RECIPE % "teacher.onnx"), tmp_path,
                             tmp_path / "out", CancelToken()))
    report = next(e for e in events if isinstance(e, Result)).report
    recover = report["stages"]["recover"]
    cache = recover["distill"]["teacher_cache"]
    # 128 training samples, one teacher run each; later look-ups (the second epoch, the memory
    # estimate's batch before training) read the cache.
    assert cache["misses"] == 128 and cache["hits"] >= 128 and cache["on_disk"]
    assert cache["hit_rate"] == cache["hits"] / (cache["hits"] + cache["misses"])
    assert cache["bytes"] == 2 * 64 * 10 * 4
    assert any("Teacher outputs cached" in note for note in report["notes"])
    assert not any("cache" in p.name for p in (tmp_path / "out").iterdir())


def test_a_pickled_teacher_without_the_jobs_trust_is_refused(tmp_path: Path):
    demo = open_workspace("demo")
    torch.save(demo.loaded.module, tmp_path / "teacher.pt")
    with pytest.raises(TrustRequired, match=r"teacher\.pt"):
        list(run_recipe(parse_recipe(RECIPE % "teacher.pt"), tmp_path, tmp_path / "out",
                        CancelToken()))
    assert not (tmp_path / "out").exists()
