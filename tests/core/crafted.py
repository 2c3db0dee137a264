"""Hostile files, built small in the test's folder: archives whose pickles or expressions run
code (each writes a marker file when it runs), and bombs that declare far more than they hold."""

from __future__ import annotations

import io
import json
import re
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch


class Marker:
    """Unpickling this writes ``path``: proof that code from a file ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return exec, (f"open({str(self.path)!r}, 'w').write('ran')",)


def pickled(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def rewrite_zip(source: Path, target: Path,
                edit: Callable[[dict[str, bytes]], None]) -> Path:
    """``source``'s members, changed by ``edit`` (name → bytes, names without the archive's
    top folder), written to ``target`` as a zip torch's reader accepts."""
    with zipfile.ZipFile(source) as archive:
        top = archive.namelist()[0].split("/", 1)[0]
        members = {name.split("/", 1)[1]: archive.read(name) for name in archive.namelist()}
    edit(members)
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as archive:
        for name, data in members.items():
            archive.writestr(f"{top}/{name}", data)
    return target


def pt2_with_pickled_weight(source: Path, target: Path, marker: Path) -> Path:
    """A weight stored with ``use_pickle: true`` whose pickle runs code."""
    def edit(members: dict[str, bytes]) -> None:
        config_name = "data/weights/model_weights_config.json"
        config = json.loads(members[config_name])
        entry = next(iter(config["config"].values()))
        entry["use_pickle"] = True
        members[config_name] = json.dumps(config).encode()
        members[f"data/weights/{entry['path_name']}"] = pickled(Marker(marker))
    return rewrite_zip(source, target, edit)


def pt2_with_pickled_sample_inputs(source: Path, target: Path, marker: Path) -> Path:
    """Sample inputs that the weights-only unpickler refuses (torch then unpickles them
    fully)."""
    def edit(members: dict[str, bytes]) -> None:
        members["data/sample_inputs/model.pt"] = pickled(((Marker(marker),), {}))
    return rewrite_zip(source, target, edit)


def pt2_with_program_edit(source: Path, target: Path,
                          edit_program: Callable[[dict], None]) -> Path:
    def edit(members: dict[str, bytes]) -> None:
        program = json.loads(members["models/model.json"])
        edit_program(program)
        members["models/model.json"] = json.dumps(program).encode()
    return rewrite_zip(source, target, edit)


def deflated_zip_bomb(target: Path, megabytes: int = 128) -> Path:
    """A ``torch.save`` state dict whose one tensor is ``megabytes`` of zeros, deflated to a
    fraction of a MB; written in chunks, so building it stays small in memory."""
    seed = 12345  # a distinctive numel, rewritten below in the pickle (storage size and shape)
    with zipfile.ZipFile(io.BytesIO(pickled({"weight": torch.zeros(seed)}))) as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    numel = megabytes * (1 << 20) // 4
    pkl = next(name for name in members if name.endswith("data.pkl"))
    members[pkl] = members[pkl].replace(b"M" + seed.to_bytes(2, "little"),
                                        b"J" + numel.to_bytes(4, "little"))
    storage = next(name for name in members if name.endswith("/data/0"))
    chunk = bytes(1 << 22)
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for name, data in members.items():
            if name != storage:
                archive.writestr(name, data)
                continue
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            with archive.open(info, "w") as handle:
                for _ in range(numel * 4 // len(chunk)):
                    handle.write(chunk)
    return target


_ARCHITECTURE_MODULE = '''
from pathlib import Path

_MARKER = Path({marker!r})
with _MARKER.open("a") as marker:
    marker.write("imported\\n")


def build():
    from studio.core.demo.model import build_demo_cnn

    with _MARKER.open("a") as marker:
        marker.write("called\\n")
    return build_demo_cnn()
'''


def project_naming_its_architecture(folder: Path, weights: Path, marker: Path,
                                    runnable: bool = False) -> tuple[Path, str]:
    """A project folder whose ``project.yaml`` builds its model (the demo's state dict
    ``weights``, copied in) with ``build`` from a module beside it, not a registered factory:
    importing that module adds a line to ``marker``, calling ``build`` another. The module is named
    after the folder so no other test has imported it; put the folder on ``sys.path`` to let it
    import. ``runnable`` adds 16 random digits (``digits.npz``) and the quickest job sections,
    so a run of the project is short. Returns the manifest and the architecture it names."""
    folder.mkdir(parents=True, exist_ok=True)
    module = "beside_" + re.sub(r"\W", "_", folder.parent.name + "_" + folder.name)
    (folder / f"{module}.py").write_text(_ARCHITECTURE_MODULE.format(marker=str(marker)),
                                         encoding="utf-8")
    shutil.copyfile(weights, folder / "weights.pt")
    architecture = f"{module}:build"
    manifest = folder / "project.yaml"
    recipe: dict[str, object] = {
        "schema_version": 1, "model": {"path": "weights.pt", "architecture": architecture},
        "example_input": {"shape": [1, 1, 28, 28]}}
    if runnable:
        np.savez(folder / "digits.npz",
                 images=np.random.default_rng(0).random((16, 1, 28, 28), dtype=np.float32))
        recipe.update(data={"source": "arrays", "path": "digits.npz", "calibration_samples": 8},
                      train={"epochs": 0}, export={"latency_repeats": 1, "latency_batch": 4})
    manifest.write_text(json.dumps(recipe), encoding="utf-8")
    return manifest, architecture
