"""A small .npz must not eat the machine: unused members are never inflated, and a used one is
refused from its declared sizes (zip and npy headers) before anything is read. Also members that
are not numpy arrays (a raw pickle) are refused without being unpickled."""

from __future__ import annotations

import pickle
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

from studio.core.data import arrays
from studio.core.data.sources import load_task
from studio.core.errors import StudioError
from studio.core.plan.stages import DataSection
from tests.core.data.conftest import GB, npy_header, write_bomb


def _peak_mb(function) -> tuple[object, float]:
    tracemalloc.start()
    try:
        result = function()
        return result, tracemalloc.get_traced_memory()[1] / 1e6
    finally:
        tracemalloc.stop()


@pytest.fixture(scope="module")
def bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10 MB on disk: 40 samples and labels, and an unused member of 10 GB."""
    x = np.random.default_rng(0).random((40, 3), dtype=np.float32)
    y = np.arange(40) % 2
    path = tmp_path_factory.mktemp("bomb") / "bomb.npz"
    return write_bomb(path, {"x": x, "y": y}, "junk", 10 * GB - (10 * GB) % (1 << 24))


def test_an_unused_huge_member_is_never_inflated(bomb: Path) -> None:
    assert bomb.stat().st_size < 12e6
    section = DataSection(source="arrays", path=str(bomb), calibration_samples=4)
    task, peak = _peak_mb(lambda: load_task(section))
    assert task.num_classes == 2 and len(task.train) + len(task.test) == 40
    assert peak < 20, f"{peak:.0f} MB"


def test_a_used_huge_member_is_refused_from_its_headers(bomb: Path) -> None:
    section = DataSection(source="arrays", path=str(bomb), inputs_key="junk")
    with pytest.raises(StudioError, match=r"bomb\.npz: array 'junk': inflates 1.*× \(.*10\.0 GB"
                                          r"\); refused") as refused:
        _peak_mb(lambda: load_task(section))
    assert "\n" not in str(refused.value)


def test_a_member_over_the_memory_limit_is_refused(tmp_path: Path, monkeypatch) -> None:
    np.savez(tmp_path / "big.npz", x=np.zeros((1000, 100), np.float32))
    monkeypatch.setattr(arrays, "memory_budget", lambda: 200_000)
    with pytest.raises(StudioError, match=r"big\.npz: the arrays it would read take 0\.4 MB in "
                                          r"memory, more than the 0\.1 MB"):
        load_task(DataSection(source="arrays", path="big.npz"), tmp_path)
    np.save(tmp_path / "big.npy", np.zeros((1000, 100), np.float32))
    with pytest.raises(StudioError, match=r"big\.npy: the arrays it would read take 0\.4 MB"):
        load_task(DataSection(source="arrays", path="big.npy"), tmp_path)


def test_a_header_declaring_more_than_the_member_holds_is_damaged(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "lies.npz", "w") as archive:
        archive.writestr("x.npy", npy_header((10**6, 10**6), "f4") + bytes(64))
    with pytest.raises(StudioError, match=r"lies\.npz: array 'x': declares shape \[1000000, "
                                          r"1000000\] of float32 \(4000\.0 GB\) but holds "
                                          r"64 bytes; the file is damaged or crafted"):
        load_task(DataSection(source="arrays", path="lies.npz"), tmp_path)
    (tmp_path / "lies.npy").write_bytes(npy_header((10**9,), "f8") + bytes(80))
    with pytest.raises(StudioError, match=r"lies\.npy: declares shape \[1000000000\]"):
        load_task(DataSection(source="arrays", path="lies.npy"), tmp_path)


def test_a_member_that_is_a_raw_pickle_is_refused_unread(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    payload = pickle.dumps(_Touch(marker), protocol=4)
    with zipfile.ZipFile(tmp_path / "pickled.npz", "w") as archive:
        archive.writestr("x.npy", payload)
        archive.writestr("y.npy", b"plain text, not an array")
    with pytest.raises(StudioError, match=r"pickled\.npz: array 'x': a Python pickle, not a "
                                          r"numpy array; .*refused"):
        load_task(DataSection(source="arrays", path="pickled.npz"), tmp_path)
    with pytest.raises(StudioError, match=r"array 'y': not a numpy array"):
        load_task(DataSection(source="arrays", path="pickled.npz", inputs_key="y"), tmp_path)
    assert not marker.exists()


class _Touch:
    """Unpickling this touches ``path``: the proof that a refused pickle never ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return Path.touch, (self.path,)
