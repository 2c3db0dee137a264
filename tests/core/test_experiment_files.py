"""An experiment's files in the user's hands: exported where they choose (never over a file of
theirs unasked), trashed and restored, renamed and annotated, and a scratch project's history
moved by Save As. Also the compressed torch weights a run writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from torch import nn

from studio.core.errors import ReplaceRequired, StudioError
from studio.core.export.torch_weights import ADAPTERS_FILE, WEIGHTS_FILE, write_compressed_weights
from studio.core.models.inputs import InputSpec
from studio.core.project.experiment_files import (
    export_experiment,
    move_project_history,
    move_to_trash,
    restore_from_trash,
    trash_dir,
)
from studio.core.project.experiments import (
    experiment_dir,
    load_experiments,
    new_experiment,
    save_experiment,
)
from studio.core.project.session import Session

REPORT = {"compressed": {"metric": {"name": "accuracy", "value": 0.9}}}


def _experiment(project: Path, tmp_path: Path, weights: bool = True):
    sources = {"onnx": tmp_path / "model.onnx"}
    sources["onnx"].write_bytes(b"onnx bytes")
    if weights:
        sources["weights"] = tmp_path / WEIGHTS_FILE
        sources["weights"].write_bytes(b"weights bytes")
    experiment = new_experiment("first", {}, REPORT)
    save_experiment(project, experiment, sources)
    return experiment


def test_export_copies_the_model_and_weights_and_asks_before_replacing(tmp_path: Path) -> None:
    project = tmp_path / "project"
    experiment = _experiment(project, tmp_path)
    out = tmp_path / "out"
    written = export_experiment(project, experiment, out / "small")  # no suffix: .onnx added
    assert written == [out / "small.onnx", out / "small.safetensors"]
    assert written[0].read_bytes() == b"onnx bytes"
    assert written[1].read_bytes() == b"weights bytes"

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "m.safetensors").write_bytes(b"the user's own")
    with pytest.raises(ReplaceRequired) as refused:
        export_experiment(project, experiment, mine / "m.onnx")
    assert refused.value.paths == [mine / "m.safetensors"]
    assert "already exist" in str(refused.value)
    assert not (mine / "m.onnx").exists()  # nothing written before the refusal
    assert (mine / "m.safetensors").read_bytes() == b"the user's own"
    export_experiment(project, experiment, mine / "m.onnx", replace=[mine / "m.safetensors"])
    assert (mine / "m.safetensors").read_bytes() == b"weights bytes"
    assert sorted(p.name for p in mine.iterdir()) == ["m.onnx", "m.safetensors"]  # no temp


def test_export_names_a_missing_model_file(tmp_path: Path) -> None:
    project = tmp_path / "project"
    experiment = _experiment(project, tmp_path, weights=False)
    (experiment_dir(project, experiment.id) / "model.onnx").unlink()
    with pytest.raises(StudioError, match="compressed model file is missing"):
        export_experiment(project, experiment, tmp_path / "x.onnx")


def test_trash_and_restore_move_the_folder(tmp_path: Path) -> None:
    project = tmp_path / "project"
    experiment = _experiment(project, tmp_path)
    moved = move_to_trash(project, experiment.id)
    assert moved.parent == trash_dir(project) and load_experiments(project) == []
    restore_from_trash(project, experiment.id)
    assert [e.id for e in load_experiments(project)] == [experiment.id]
    with pytest.raises(StudioError, match="no such experiment folder"):
        restore_from_trash(project, experiment.id)


def test_scratch_history_moves_with_save_as(tmp_path: Path) -> None:
    scratch, dest = tmp_path / "scratch" / "demo-1", tmp_path / "mine"
    _experiment(scratch, tmp_path)
    (scratch / "sensitivity.json").write_text("{}")
    dest.mkdir()
    move_project_history(scratch, dest)
    assert len(load_experiments(dest)) == 1 and (dest / "sensitivity.json").is_file()
    assert not scratch.exists()


def test_session_renames_annotates_and_deletes(tmp_path: Path) -> None:
    session = Session(tmp_path / "recovery")
    assert session.scratch_root == tmp_path / "scratch"
    project = tmp_path / "project"
    experiment = _experiment(project, tmp_path)
    session.project_path = project / "project.yaml"
    session.experiments = {experiment.id: experiment}
    heard: list[str] = []
    session.subscribe(lambda event, _payload: heard.append(event))
    session.edit_experiment(experiment.id, name=" int8 everywhere ", note="try 4 bits next")
    [saved] = load_experiments(project)
    assert (saved.name, saved.note) == ("int8 everywhere", "try 4 bits next")
    with pytest.raises(StudioError, match="needs a name"):
        session.edit_experiment(experiment.id, name="  ")
    removed = session.delete_experiment(experiment.id)
    assert session.experiments == {} and load_experiments(project) == []
    session.restore_experiment(removed)
    assert list(session.experiments) == [experiment.id] and heard.count("history") == 3


class _WithAdapter(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Linear(4, width)
        self.lora_A = nn.Parameter(torch.ones(2, 4))


def test_compressed_weights_record_the_architecture_and_reshaped_tensors(tmp_path: Path
                                                                         ) -> None:
    original, pruned = _WithAdapter(8), _WithAdapter(4)
    written = write_compressed_weights(pruned, original, tmp_path, "demo-cnn",
                                       InputSpec((1, 4)))
    assert written == [tmp_path / WEIGHTS_FILE, tmp_path / ADAPTERS_FILE]
    with safe_open(str(written[0]), framework="pt") as weights:
        metadata = weights.metadata()
        assert set(weights.keys()) == {"body.weight", "body.bias"}
        assert tuple(weights.get_tensor("body.weight").shape) == (4, 4)
    assert metadata["architecture"] == "demo-cnn"
    assert json.loads(metadata["reshaped"]) == ["body.bias", "body.weight"]
    assert json.loads(metadata["input_shape"]) == [1, 4]
    with safe_open(str(written[1]), framework="pt") as adapters:
        assert set(adapters.keys()) == {"lora_A"}
