"""Open any supported model file: pick the loader by extension, or by content when it lies."""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from studio.core.errors import ArchitectureRequired, ModelLoadError, TrustRequired
from studio.core.models.gguf_file import is_gguf, load_gguf
from studio.core.models.hf import is_hf_folder, load_hf_folder
from studio.core.models.loaded import DEMO, LoadedModel
from studio.core.models.onnx_file import load_onnx
from studio.core.models.torch_files import load_safetensors, load_torch_export, load_torch_file
from studio.core.resources import resource_path

DEMO_CHECKPOINT = ("demo", "demo-cnn.safetensors")
Loader = Callable[[Path, "str | None", bool], LoadedModel]
"""(path, architecture, trust) -> the model."""


@dataclass(frozen=True)
class ModelFormat:
    """A file format the studio opens: its extensions, how its first bytes look (for files
    whose extension is wrong or missing), and its reader. A new format is one entry in
    :data:`FORMATS`."""

    name: str
    suffixes: tuple[str, ...]
    sniff: Callable[[Path, bytes], bool]
    load: Loader


def _zip_names(path: Path) -> list[str] | None:
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.namelist()
    except (zipfile.BadZipFile, UnicodeDecodeError, ValueError, EOFError):
        return None  # damaged: a name that is not UTF-8, a bad directory, a short file


def _is_torch_export(path: Path, head: bytes) -> bool:
    names = _zip_names(path) if head.startswith(b"PK") else None
    return names is not None and any(name.endswith("archive_format") or
                                     "serialized_exported_program" in name for name in names)


def _is_torch_zip(path: Path, head: bytes) -> bool:
    return head.startswith(b"PK") and _zip_names(path) is not None


FORMATS: tuple[ModelFormat, ...] = (  # sniffed in this order: a .pt2 is also a zip
    ModelFormat("onnx", (".onnx",),
                # protobuf field 1 (ir_version), varint: how ONNX files begin
                lambda _path, head: head[:1] == b"\x08",
                lambda path, _arch, _trust: load_onnx(path)),
    ModelFormat("safetensors", (".safetensors",),
                lambda _path, head: len(head) >= 9 and head[8:9] == b"{",
                lambda path, arch, _trust: load_safetensors(path, arch)),
    ModelFormat("torch_export", (".pt2",), _is_torch_export,
                lambda path, _arch, trust: load_torch_export(path, trust)),
    ModelFormat("torch", (".pt", ".pth"), _is_torch_zip, load_torch_file),
    ModelFormat("gguf", (".gguf",), lambda _path, head: is_gguf(head),
                lambda path, _arch, _trust: load_gguf(path)),
)
MODEL_SUFFIXES = tuple(suffix for kind in FORMATS for suffix in kind.suffixes)


def demo_path() -> Path:
    return resource_path(*DEMO_CHECKPOINT)


def _by_suffix(suffix: str) -> ModelFormat | None:
    return next((kind for kind in FORMATS if suffix in kind.suffixes), None)


def _sniff(path: Path) -> ModelFormat | None:
    """Guess the format from the first bytes, for files whose extension is wrong or missing."""
    with path.open("rb") as handle:
        head = handle.read(16)
    return next((kind for kind in FORMATS if kind.sniff(path, head)), None)


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
    kind = _by_suffix(path.suffix.lower()) or _sniff(path)
    if kind is None:
        raise ModelLoadError(f"{path}: unknown model format; open a .pt/.pth, .pt2, "
                             ".safetensors, .onnx or .gguf file")
    try:
        return kind.load(path, architecture, trust)
    except (TrustRequired, ArchitectureRequired):
        raise
    except ModelLoadError as error:
        sniffed = _sniff(path)
        if sniffed is None or sniffed is kind:
            raise
        raise ModelLoadError(f"{error}; its content looks like a {sniffed.suffixes[0]} file: "
                             f"rename it to {path.stem}{sniffed.suffixes[0]}") from error
