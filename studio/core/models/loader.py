"""Open any supported model file: pick the loader by extension, or by content when it lies."""

from __future__ import annotations

import zipfile
from pathlib import Path

from studio.core.errors import ArchitectureRequired, ModelLoadError, TrustRequired
from studio.core.models.hf import is_hf_folder, load_hf_folder
from studio.core.models.loaded import DEMO, LoadedModel
from studio.core.models.onnx_file import load_onnx
from studio.core.models.torch_files import load_safetensors, load_torch_export, load_torch_file
from studio.core.resources import resource_path

DEMO_CHECKPOINT = ("demo", "demo-cnn.safetensors")
MODEL_SUFFIXES = (".pt", ".pth", ".pt2", ".safetensors", ".onnx")


def demo_path() -> Path:
    return resource_path(*DEMO_CHECKPOINT)


def _sniff(path: Path) -> str | None:
    """Guess the format from the first bytes, for files whose extension is wrong or missing."""
    with path.open("rb") as handle:
        head = handle.read(16)
    if head.startswith(b"PK"):
        try:
            names = zipfile.ZipFile(path).namelist()
        except (zipfile.BadZipFile, UnicodeDecodeError, ValueError, EOFError):
            return None  # damaged: a name that is not UTF-8, a bad directory, a short file
        if any(name.endswith("archive_format") or "serialized_exported_program" in name
               for name in names):
            return ".pt2"
        return ".pt"
    if len(head) >= 9 and head[8:9] == b"{":
        return ".safetensors"
    if head[:1] == b"\x08":  # protobuf field 1 (ir_version), varint: how ONNX files begin
        return ".onnx"
    return None


def open_model(path: str | Path, architecture: str | None = None,
               trust: bool = False) -> LoadedModel:
    """Load ``path`` (a file, a Hugging Face folder, or the built-in ``demo``); raise
    :class:`ModelLoadError` with the reason."""
    if str(path) == DEMO:
        loaded = load_safetensors(demo_path(), None)
        loaded.name = "demo-cnn"
        return loaded
    path = Path(path).expanduser()
    if is_hf_folder(path):
        return load_hf_folder(path)
    if path.is_dir():
        raise ModelLoadError(f"{path}: a folder without config.json; open a model file or a "
                             "Hugging Face model folder (config.json + .safetensors)")
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise ModelLoadError(f"{path}: the file is empty")
    suffix = path.suffix.lower()
    if suffix not in MODEL_SUFFIXES:
        suffix = _sniff(path) or suffix
    try:
        return _load_as(path, suffix, architecture, trust)
    except (TrustRequired, ArchitectureRequired):
        raise
    except ModelLoadError as error:
        sniffed = _sniff(path)
        if sniffed is None or sniffed == suffix or {sniffed, suffix} <= {".pt", ".pth"}:
            raise
        raise ModelLoadError(f"{error}; its content looks like a {sniffed} file: rename it to "
                             f"{path.stem}{sniffed}") from error


def _load_as(path: Path, suffix: str, architecture: str | None, trust: bool) -> LoadedModel:
    if suffix == ".onnx":
        return load_onnx(path)
    if suffix == ".safetensors":
        return load_safetensors(path, architecture)
    if suffix == ".pt2":
        return load_torch_export(path, trust)
    if suffix in (".pt", ".pth"):
        return load_torch_file(path, architecture, trust)
    raise ModelLoadError(
        f"{path}: unknown model format; open a .pt/.pth, .pt2, .safetensors or .onnx file"
    )
