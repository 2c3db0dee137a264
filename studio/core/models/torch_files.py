"""Loaders for the torch file formats: safetensors, ``torch.save`` files and ``torch.export``.

Only a fully pickled module runs code from the file, and only when the caller says it trusts it;
everything else goes through safetensors, ``weights_only`` unpickling or the export archive.
"""

from __future__ import annotations

import json
import warnings
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from studio.core.errors import ArchitectureRequired, ModelLoadError, TrustRequired
from studio.core.limits import check_zip_members
from studio.core.models.factory import build_architecture, is_built_in
from studio.core.models.inputs import InputSpec
from studio.core.models.loaded import LoadedModel
from studio.core.models.unpickle import load_weights_only

_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")


def _fit_weights(module: nn.Module, state: dict[str, torch.Tensor], path: Path, arch: str) -> None:
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as error:  # size mismatches
        detail = str(error).split("\n\t", 1)[-1].split("\n")[0]
        raise ModelLoadError(f"{path}: weights do not fit {arch}: {detail}") from error
    problems = []
    for label, keys in (("missing", result.missing_keys), ("unexpected", result.unexpected_keys)):
        if keys:
            more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
            problems.append(f"{label} {', '.join(keys[:3])}{more}")
    if problems:
        raise ModelLoadError(f"{path}: weights do not fit {arch}: {'; '.join(problems)}")


def _choose_architecture(path: Path, given: str | None, suggested: str | None) -> str:
    if given:
        return given
    if suggested and is_built_in(suggested):
        return suggested
    raise ArchitectureRequired(path, suggested)


def _input_from_metadata(metadata: dict[str, str]) -> InputSpec | None:
    shape = metadata.get("input_shape")
    if not shape:
        return None
    try:
        return InputSpec(tuple(int(d) for d in json.loads(shape)), metadata.get("input_dtype",
                                                                                "float32"))
    except (ValueError, TypeError):
        return None


def load_safetensors(path: Path, architecture: str | None) -> LoadedModel:
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            state = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as error:
        raise ModelLoadError(f"{path}: not a readable safetensors file ({error})") from error
    arch = _choose_architecture(path, architecture, metadata.get("architecture"))
    module = build_architecture(arch)
    _fit_weights(module, state, path, arch)
    return LoadedModel(name=path.stem, path=path, format="safetensors", module=module.eval(),
                       architecture=arch, example=_input_from_metadata(metadata),
                       metadata=metadata)


def _as_state_dict(obj: object) -> dict[str, torch.Tensor] | None:
    if isinstance(obj, dict):
        for key in _STATE_DICT_KEYS:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
        if obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
            return obj
    return None


def _looks_like_torch_save(path: Path) -> bool:
    """A zip archive (torch.save since 1.6) or a pickle of protocol 2+ (the legacy format)."""
    with path.open("rb") as handle:
        first = handle.read(1)
    return first == b"\x80" or zipfile.is_zipfile(path)


def load_torch_file(path: Path, architecture: str | None, trust: bool) -> LoadedModel:
    """A ``torch.save`` file: a state dict (safe), or a whole pickled module (needs trust)."""
    if not _looks_like_torch_save(path):
        raise ModelLoadError(f"{path}: not a torch file (neither a torch.save archive nor a "
                             "pickle); truncated or corrupt?")
    check_zip_members(path)
    try:
        obj = load_weights_only(path, path)
    except TrustRequired:
        if not trust:
            raise
        return _load_pickled_module(path)
    except ModelLoadError:
        raise
    except Exception as error:  # the weights-only unpickler raises many types on corrupt input
        raise ModelLoadError(
            f"{path}: not a readable torch file ({type(error).__name__}: {error})"
        ) from error
    state = _as_state_dict(obj)
    if state is None:
        raise ModelLoadError(
            f"{path}: holds a {type(obj).__name__}, not a state dict of tensors or a module"
        )
    arch = _choose_architecture(path, architecture, None)
    module = build_architecture(arch)
    _fit_weights(module, state, path, arch)
    return LoadedModel(name=path.stem, path=path, format="state_dict", module=module.eval(),
                       architecture=arch)


def _load_pickled_module(path: Path) -> LoadedModel:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # unpickling a trusted file can raise anything
        raise ModelLoadError(
            f"{path}: could not unpickle ({type(error).__name__}: {error}); the classes it "
            "refers to must be importable"
        ) from error
    if not isinstance(obj, nn.Module):
        raise ModelLoadError(f"{path}: holds a {type(obj).__name__}, not a torch.nn.Module")
    return LoadedModel(name=path.stem, path=path, format="pickled_module", module=obj.eval(),
                       trusted=True)


def load_torch_export(path: Path, trust: bool = False) -> LoadedModel:
    """A ``torch.export`` archive, unflattened back into its original module hierarchy. It is
    read without running anything stored in it (:mod:`pt2_archive`); only a trusted archive
    goes through ``torch.export.load``, which unpickles what the safe reader refuses.
    The reader is imported here: it pulls in torch's export and dynamo stack (~0.9 s), which
    the first window never needs."""
    from studio.core.models.pt2_archive import read_exported_program

    check_zip_members(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            program = torch.export.load(path) if trust else read_exported_program(path)
            module = torch.export.unflatten(program)
    except ModelLoadError:
        raise
    except Exception as error:  # the deserializer raises many types on corrupt input
        raise ModelLoadError(
            f"{path}: not a readable torch.export archive ({type(error).__name__}: {error})"
        ) from error
    type_names: dict[str, str] = {}
    user_inputs = {
        spec.arg.name for spec in program.graph_signature.input_specs
        if spec.kind.name == "USER_INPUT"
    }
    example = None
    for node in program.graph.nodes:
        stack = node.meta.get("nn_module_stack") or {}
        for fqn, type_path in stack.values():
            type_names.setdefault(fqn, str(type_path).rsplit(".", 1)[-1])
        value = node.meta.get("val")
        if example is None and node.op == "placeholder" and node.name in user_inputs \
                and isinstance(value, torch.Tensor):
            dtype = str(value.dtype).removeprefix("torch.")
            example = InputSpec(tuple(int(d) for d in value.shape), dtype)
    return LoadedModel(name=path.stem, path=path, format="torch_export", module=module,
                       example=example, type_names=type_names, trusted=trust)
