"""Each data source end to end on small files written by the test, and the bad inputs each
must refuse with a message naming the file, row or column."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from studio.core.data.function import FunctionTrustRequired
from studio.core.data.sources import load_task
from studio.core.errors import StudioError, TrustRequired
from studio.core.plan.stages import DataSection, ImageOptions
from tests.core.data.conftest import write_module, write_png


def _all_inputs(task) -> torch.Tensor:
    return torch.cat([task.train.tensors[0], task.test.tensors[0]])


def test_image_folder_with_two_classes(class_folder: Path) -> None:
    section = DataSection(source="images", path="images", test_fraction=0.25,
                          image=ImageOptions(channels=1, mean=[0.5], std=[0.5]))
    task = load_task(section, class_folder.parent)
    assert task.labelled and task.num_classes == 2 and task.metric == "accuracy"
    assert task.splits.sizes == {"train": 9, "fine_tune": 9, "calibration": 9, "test": 3}
    inputs, labels = task.test.tensors
    assert inputs.shape[1:] == (1, 28, 28) and inputs.dtype == torch.float32
    # class = sorted folder names: "one" (bright) is 0, "zero" (dark) is 1
    centre = inputs[:, 0, 14, 14]
    expected = torch.where(labels == 0, (200 / 255 - 0.5) / 0.5, (10 / 255 - 0.5) / 0.5)
    assert torch.allclose(centre, expected, atol=6 / 255 / 0.5 + 1e-6)
    assert torch.allclose(inputs[:, 0, 0, 0], torch.full((3,), -1.0))  # black corner


def test_flat_image_folder_is_unlabelled_and_resized_rgb(tmp_path: Path) -> None:
    for index in range(5):
        write_png(tmp_path / "flat" / f"{index}.png", 100, size=(12 + index, 10))
    section = DataSection(source="images", path=str(tmp_path / "flat"), test_fraction=0.4,
                          image=ImageOptions(size=(8, 6), channels=3))
    task = load_task(section, None)
    assert not task.labelled and task.num_classes is None and task.metric == "cosine"
    assert len(task.test.tensors) == 1 and task.test.tensors[0].shape == (2, 3, 8, 6)
    assert len(task.train) == 3


def test_npz_with_labels_and_npy_without(tmp_path: Path) -> None:
    x = np.arange(40 * 3, dtype=np.float64).reshape(40, 3)
    np.savez(tmp_path / "table.npz", x=x, y=np.arange(40) % 4)
    task = load_task(DataSection(source="arrays", path="table.npz", calibration_samples=5),
                     tmp_path)
    assert task.labelled and task.num_classes == 4 and len(task.calibration) == 5
    rows, labels = task.test.tensors
    assert rows.dtype == torch.float32
    assert torch.equal(labels, (rows[:, 0] / 3).long() % 4)  # each row kept its own label

    np.save(tmp_path / "tokens.npy", np.arange(20 * 6).reshape(20, 6))
    task = load_task(DataSection(source="arrays", path="tokens.npy", metric="mse"), tmp_path)
    assert not task.labelled and task.metric == "mse"
    assert task.test.tensors[0].dtype == torch.int64  # token ids stay integers
    assert sorted(_all_inputs(task)[:, 0].tolist()) == list(range(0, 120, 6))


def test_npz_keys_can_be_named_and_labels_ignored(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", feats=np.ones((10, 2)), cls=np.zeros(10, dtype=np.int64))
    with pytest.raises(StudioError, match=r"no inputs array found .* feats, cls"):
        load_task(DataSection(source="arrays", path="d.npz"), tmp_path)
    task = load_task(DataSection(source="arrays", path="d.npz", inputs_key="feats",
                                 labels_key="cls", labelled=False), tmp_path)
    assert not task.labelled and len(task.test.tensors) == 1
    with pytest.raises(StudioError, match="no array named 'lab'"):
        load_task(DataSection(source="arrays", path="d.npz", inputs_key="feats",
                              labels_key="lab"), tmp_path)


def test_csv_with_and_without_a_label_column(tmp_path: Path) -> None:
    rows = ["a,b,kind"] + [f"{i},{i * 2},{'cat' if i % 2 else 'dog'}" for i in range(10)]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    task = load_task(DataSection(source="csv", path="t.csv", label_column="kind",
                                 test_fraction=0.3), tmp_path)
    assert task.labelled and task.num_classes == 2
    features, labels = task.test.tensors
    assert features.shape == (3, 2)
    assert torch.equal(labels, (features[:, 0] % 2 == 0).long())  # cat = 0, dog = 1

    (tmp_path / "plain.csv").write_text("1,2\n3,4\n5,6\n7,8.5\n")  # no header row
    task = load_task(DataSection(source="csv", path="plain.csv", test_fraction=0.25),
                     tmp_path)
    assert not task.labelled and task.metric == "cosine"
    assert sorted(_all_inputs(task)[:, 1].tolist()) == [2.0, 4.0, 6.0, 8.5]


FUNCTION_SOURCE = '''
import itertools
import numpy as np
import torch

CALLS = []

def labelled():
    CALLS.append("labelled")
    for start in range(0, 30, 8):
        x = torch.arange(start, min(start + 8, 30), dtype=torch.float32).unsqueeze(1)
        yield x, (x[:, 0] % 3).long()

def endless():
    for i in itertools.count():
        yield np.full((4, 2), i, dtype=np.float32)
'''


def test_function_source_needs_trust_then_reads_batches(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    module = write_module(tmp_path, "user_batches", FUNCTION_SOURCE, monkeypatch)
    section = DataSection(source="function", path=f"{module}:labelled")
    with pytest.raises(TrustRequired, match=f"{module}:labelled.*--trust") as refused:
        load_task(section, tmp_path)
    assert isinstance(refused.value, FunctionTrustRequired)
    import sys
    assert module not in sys.modules  # refused before anything was imported
    task = load_task(section, tmp_path, trust=True)
    assert task.labelled and task.num_classes == 3 and len(task.train) + len(task.test) == 30
    values = _all_inputs(task)[:, 0]
    assert sorted(values.tolist()) == list(range(30))

    endless = load_task(DataSection(source="function", path=f"{module}:endless",
                                    max_samples=10), tmp_path, trust=True)
    assert not endless.labelled
    assert sorted(_all_inputs(endless)[:, 0].tolist()) == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]


def test_function_source_errors_name_the_function(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    module = write_module(tmp_path, "user_bad", "def broken():\n    yield 'text'\n"
                          "def fails():\n    raise RuntimeError('disk gone')\n", monkeypatch)
    cases = {f"{module}:broken": r"user_bad:broken: batch 0: a str",
             f"{module}:fails": r"user_bad:fails: raised RuntimeError: disk gone",
             f"{module}:missing": r"user_bad:missing: cannot import it",
             "no_such_package_xyz:fn": r"no_such_package_xyz:fn: cannot import it"}
    for target, message in cases.items():
        with pytest.raises(StudioError, match=message):
            load_task(DataSection(source="function", path=target), tmp_path, trust=True)


def test_bad_image_folders(tmp_path: Path, class_folder: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(StudioError, match=r"empty: holds no images"):
        load_task(DataSection(source="images", path="empty"), tmp_path)
    (class_folder / "zero" / "03.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(StudioError, match=r"03\.png: not a readable image"):
        load_task(DataSection(source="images", path="images"), tmp_path)
    write_png(tmp_path / "mixed" / "a.png", 9, size=(10, 10))
    write_png(tmp_path / "mixed" / "b.png", 9, size=(12, 10))
    with pytest.raises(StudioError, match=r"b\.png: is 12x10 where a\.png is 10x10; set "
                                          r"image\.size"):
        load_task(DataSection(source="images", path="mixed"), tmp_path)
    with pytest.raises(StudioError, match="no such folder"):
        load_task(DataSection(source="images", path="nowhere"), tmp_path)


def test_bad_arrays_and_csv(tmp_path: Path) -> None:
    np.savez(tmp_path / "objects.npz", x=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(StudioError, match=r"objects\.npz: array .x.: holds Python "
                                          r"objects.*refused"):
        load_task(DataSection(source="arrays", path="objects.npz"), tmp_path)
    x = np.ones((10, 3), dtype=np.float32)
    x[7, 1] = np.nan
    np.save(tmp_path / "nan.npy", x)
    with pytest.raises(StudioError, match=r"nan.npy: 1 sample\(s\) hold NaN or Inf \(the first "
                                          r"is sample 7\)"):
        load_task(DataSection(source="arrays", path="nan.npy"), tmp_path)
    np.savez(tmp_path / "fl.npz", x=np.ones((4, 2)), y=np.array([0.5, 1, 2, 3]))
    with pytest.raises(StudioError, match="labels must be integer class ids"):
        load_task(DataSection(source="arrays", path="fl.npz"), tmp_path)
    (tmp_path / "junk.npz").write_bytes(b"not a zip at all")
    with pytest.raises(StudioError, match=r"junk\.npz: not a readable numpy file"):
        load_task(DataSection(source="arrays", path="junk.npz"), tmp_path)

    (tmp_path / "ragged.csv").write_text("a,b,c\n1,2,3\n4,5\n")
    with pytest.raises(StudioError, match=r"ragged\.csv: row 3 has 2 cells where the header has 3"):
        load_task(DataSection(source="csv", path="ragged.csv"), tmp_path)
    (tmp_path / "word.csv").write_text("a,b\n1,2\n3,four\n")
    with pytest.raises(StudioError, match=r"word.csv: row 3, column 'b': 'four' is not a number"):
        load_task(DataSection(source="csv", path="word.csv"), tmp_path)
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(StudioError, match="the CSV file is empty"):
        load_task(DataSection(source="csv", path="empty.csv"), tmp_path)
    with pytest.raises(StudioError, match="no column named 'label'"):
        load_task(DataSection(source="csv", path="word.csv", label_column="label"), tmp_path)


def test_labelled_true_without_labels_and_accuracy_without_labels(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.ones((10, 2), dtype=np.float32))
    with pytest.raises(StudioError, match="labelled is true but the data has no labels"):
        load_task(DataSection(source="arrays", path="x.npy", labelled=True), tmp_path)
    with pytest.raises(StudioError, match="metric accuracy needs labels"):
        load_task(DataSection(source="arrays", path="x.npy", metric="accuracy"), tmp_path)
