"""Project folders: save and reopen, portable model paths, and writes that never half-happen."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from safetensors.torch import save_file

from studio.core import atomic
from studio.core.atomic import write_bytes_atomic, write_text_atomic
from studio.core.demo.model import DEMO_ARCHITECTURE
from studio.core.errors import RecipeError, StudioError
from studio.core.models.inputs import InputSpec
from studio.core.plan.plan import ROOT
from studio.core.plan.recipe import read_recipe
from studio.core.project.project import PROJECT_FILE, load_project, project_file, save_project
from studio.core.workspace import open_workspace


def _edit_plan(workspace) -> None:
    workspace.plan.set_field(ROOT, "weight_bits", "int8")
    workspace.plan.set_field("res", "sparsity", 0.4)
    workspace.plan.set_field("res.conv2", "granularity", "channels")
    workspace.plan.set_field("head", "exclude", True)


def _outputs(workspace, inputs):
    with torch.no_grad():
        return workspace.loaded.module(inputs)


def test_demo_project_round_trip(tmp_path, demo_workspace, demo_input):
    _edit_plan(demo_workspace)
    folder = tmp_path / "project"
    manifest = save_project(demo_workspace, folder)
    assert manifest == folder / PROJECT_FILE and manifest.is_file()

    reopened = load_project(folder)
    assert reopened.plan == demo_workspace.plan
    assert reopened.example == demo_workspace.example == InputSpec((1, 1, 28, 28))
    assert reopened.model_path == "demo"
    assert reopened.tree.names() == demo_workspace.tree.names()
    assert torch.equal(_outputs(reopened, demo_input), _outputs(demo_workspace, demo_input))
    # The manifest itself names the project too.
    assert load_project(manifest).plan == demo_workspace.plan


def test_model_inside_the_folder_is_stored_relative_and_the_folder_can_move(
        tmp_path, demo_module, demo_input):
    folder = tmp_path / "project"
    (folder / "models").mkdir(parents=True)
    model_path = folder / "models" / "net.safetensors"
    save_file({k: v.contiguous() for k, v in demo_module.state_dict().items()}, str(model_path),
              metadata={"architecture": DEMO_ARCHITECTURE})
    workspace = open_workspace(str(model_path), example=InputSpec((2, 1, 28, 28)))
    _edit_plan(workspace)
    save_project(workspace, folder)

    recipe = read_recipe(folder / PROJECT_FILE)
    assert recipe.model.path == os.path.join("models", "net.safetensors")
    assert recipe.model.architecture == DEMO_ARCHITECTURE

    moved = tmp_path / "elsewhere" / "renamed"
    moved.parent.mkdir()
    shutil.move(folder, moved)
    assert not folder.exists()
    reopened = load_project(moved)
    assert reopened.model_path == str(moved / "models" / "net.safetensors")
    assert reopened.plan == workspace.plan
    assert reopened.example == InputSpec((2, 1, 28, 28))
    assert reopened.tree.example_input == (2, 1, 28, 28)
    assert torch.equal(_outputs(reopened, demo_input), _outputs(workspace, demo_input))


def test_model_outside_the_folder_is_stored_absolute(tmp_path, demo_module):
    model_path = tmp_path / "shared" / "net.pt"
    model_path.parent.mkdir()
    torch.save(demo_module.state_dict(), model_path)
    workspace = open_workspace(str(model_path), architecture=DEMO_ARCHITECTURE,
                               example=InputSpec((1, 1, 28, 28)))
    save_project(workspace, tmp_path / "project")
    recipe = read_recipe(tmp_path / "project" / PROJECT_FILE)
    assert recipe.model.path == str(model_path.resolve())

    shutil.move(tmp_path / "project", tmp_path / "moved")
    reopened = load_project(tmp_path / "moved")
    assert reopened.loaded.format == "state_dict"
    assert reopened.architecture == DEMO_ARCHITECTURE


def test_project_file_accepts_folder_or_manifest(tmp_path):
    assert project_file(tmp_path) == tmp_path / PROJECT_FILE
    assert project_file(tmp_path / "new-project") == tmp_path / "new-project" / PROJECT_FILE
    assert project_file(tmp_path / "custom.yaml") == tmp_path / "custom.yaml"


def test_project_without_model_or_with_bad_layers(tmp_path):
    manifest = tmp_path / PROJECT_FILE
    manifest.write_text("schema_version: 1\n")
    with pytest.raises(RecipeError, match="must name its model"):
        load_project(tmp_path)
    manifest.write_text("schema_version: 1\nmodel: {path: demo}\nplan:\n  layers:\n"
                        "    res.conv_2: {sparsity: 0.5}\n")
    with pytest.raises(RecipeError) as raised:
        load_project(tmp_path)
    (problem,) = raised.value.problems
    assert problem.line == 5 and "res.conv2" in problem.message
    assert str(manifest) in str(raised.value)


def test_saving_over_a_project_replaces_it(tmp_path, demo_workspace):
    folder = tmp_path / "project"
    save_project(demo_workspace, folder)
    _edit_plan(demo_workspace)
    save_project(demo_workspace, folder)
    assert load_project(folder).plan == demo_workspace.plan
    assert sorted(p.name for p in folder.iterdir()) == [PROJECT_FILE]


# --- atomic writes -------------------------------------------------------------------------------

def test_write_text_atomic_creates_folders_and_replaces(tmp_path):
    path = tmp_path / "a" / "b" / "file.json"
    write_text_atomic(path, json.dumps({"v": 1}))
    write_text_atomic(path, "ünïcode ✓")
    assert path.read_text(encoding="utf-8") == "ünïcode ✓"
    assert sorted(p.name for p in path.parent.iterdir()) == ["file.json"]


def test_failed_replace_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch,
                                                                   demo_workspace):
    folder = tmp_path / "project"
    manifest = save_project(demo_workspace, folder)
    old = manifest.read_bytes()

    def refuse(source, target):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "replace", refuse)
    _edit_plan(demo_workspace)
    with pytest.raises(StudioError) as raised:
        save_project(demo_workspace, folder)
    assert str(manifest) in str(raised.value)
    assert "No space left on device" in str(raised.value)
    assert "unchanged" in str(raised.value)
    assert manifest.read_bytes() == old
    assert sorted(p.name for p in folder.iterdir()) == [PROJECT_FILE]
    monkeypatch.undo()
    # The project on disk is still the one saved before, and opens.
    assert load_project(folder).plan != demo_workspace.plan


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "data.bin"
    path.write_bytes(b"old")

    def broken_fsync(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(atomic.os, "fsync", broken_fsync)
    with pytest.raises(StudioError, match="Input/output error"):
        write_bytes_atomic(path, b"new content")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["data.bin"]


def test_unwritable_folder_is_a_studio_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StudioError, match="cannot write"):
        write_text_atomic(blocker / "inside.yaml", "text")
