"""Token ids the model's vocabulary does not hold are named as such, with the vocabulary's size,
not reported as a wrong input shape: checked before a run does any work."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from studio.core.data.sources import load_task
from studio.core.engine.data_fit import check_torch_data
from studio.core.errors import InputError
from studio.core.plan.stages import DataSection
from studio.core.workspace import open_workspace

pytest.importorskip("transformers")


@pytest.mark.parametrize(("bad", "says"), [
    ({(3, 5): 100, (7, 1): 250}, r"2 id\(s\) out of range: 100, 250"),
    ({(9, 0): -1}, r"1 id\(s\) out of range: -1"),
])
def test_token_ids_outside_the_vocabulary_are_named(tiny_bert: Path, tmp_path: Path,
                                                    bad: dict, says: str) -> None:
    workspace = open_workspace(str(tiny_bert))
    ids = np.random.default_rng(0).integers(1, 100, (20, 12))
    for where, value in bad.items():
        ids[where] = value
    np.savez(tmp_path / "ids.npz", input_ids=ids)
    task = load_task(DataSection(source="arrays", path="ids.npz", test_fraction=0.5,
                                 calibration_samples=4), tmp_path)
    with pytest.raises(InputError, match=r"data: token ids must lie in 0\.\.99 \(the model's "
                                         r"vocabulary holds 100 tokens\), but the data holds "
                                         + says + r" \(the first in \w+ sample \d+\)") as error:
        check_torch_data(workspace.loaded.module, task, workspace.example)
    assert "shape" not in str(error.value)

    ids[ids >= 100] = 99  # in range again: the data fits
    ids[ids < 0] = 0
    np.savez(tmp_path / "ids.npz", input_ids=ids)
    check_torch_data(workspace.loaded.module, load_task(
        DataSection(source="arrays", path="ids.npz"), tmp_path), workspace.example)
