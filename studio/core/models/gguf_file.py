"""A causal LM in one ``.gguf`` file (llama.cpp's format), read by ``transformers`` with the
``gguf`` package, which dequantizes its weights to float32.

A GGUF file holds tensors, a vocabulary and key/value metadata, never code; transformers maps
its ``general.architecture`` onto one of its own classes (LLaMA, Qwen2, Mistral, GPT-2...) and
refuses the rest. The weights keep whatever rounding the file's quantization gave them (a
``Q4_1`` file's model is a 4-bit model stored as float32): the loaded model says so in its
metadata, since every figure measured on it starts from those rounded weights.
"""

from __future__ import annotations

from pathlib import Path

import torch

from studio.core.errors import ModelLoadError
from studio.core.limits import check_declared_bytes
from studio.core.models.hf import causal_lm, first_line, quiet, transformers_module
from studio.core.models.loaded import LoadedModel

FORMAT = "gguf"
MAGIC = b"GGUF"
INSTALL_HINT = "install compression-studio[llm] (transformers and gguf)"


def is_gguf(head: bytes) -> bool:
    """GGUF files begin with the four bytes ``GGUF``."""
    return head[:4] == MAGIC


def _quantization(path: Path) -> str:
    """The file's quantization as llama.cpp names it (``MOSTLY_Q4_1``), read from its header;
    also the check that the ``gguf`` package is there and the file parses."""
    try:
        import gguf
    except ImportError as error:
        raise ModelLoadError(f"{path}: a .gguf file needs the gguf package; {INSTALL_HINT}"
                             ) from error
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as error:  # the reader raises ValueError, struct errors, IndexError...
        raise ModelLoadError(f"{path}: not a readable GGUF file ({first_line(error)})"
                             ) from error
    field = reader.fields.get("general.file_type")
    if field is None or not field.data:
        return "unknown"
    code = int(field.parts[field.data[0]][0])
    try:
        return gguf.LlamaFileType(code).name
    except ValueError:
        return f"type {code}"


def _weights_note(quantization: str) -> str:
    kind = quantization.removeprefix("MOSTLY_")
    if kind in ("ALL_F32", "F16", "BF16", "unknown"):
        return f"dequantized from GGUF {kind}"
    return (f"dequantized from GGUF {kind}: the weights went through that rounding (e.g. 4-bit "
            "for Q4_*), which the float32 model keeps; every figure starts from them")


def load_gguf(path: Path) -> LoadedModel:
    """Open ``path`` as a causal LM (a :class:`~studio.core.models.hf.TokenModel` giving
    next-token logits)."""
    path = Path(path)
    quantization = _quantization(path)
    transformers = transformers_module(path)
    where = {"gguf_file": path.name, "local_files_only": True, "trust_remote_code": False}
    try:
        with quiet(transformers):
            config = transformers.AutoConfig.from_pretrained(str(path.parent), **where)
            with torch.device("meta"):
                skeleton = transformers.AutoModelForCausalLM.from_config(config)
            described = sum(t.numel() for t in skeleton.parameters())
            check_declared_bytes(path, described * 4, "the dequantized model")
            model = transformers.AutoModelForCausalLM.from_pretrained(
                str(path.parent), config=config, attn_implementation="eager",
                dtype=torch.float32, **where)
    except ModelLoadError:
        raise
    except Exception as error:  # unknown architecture, damaged tensors, missing keys...
        raise ModelLoadError(f"{path}: transformers {transformers.__version__} cannot load "
                             f"this GGUF file as a causal LM: {first_line(error)}") from error
    return causal_lm(model, path, FORMAT, str(config.model_type),
                     {"quantization": quantization, "weights": _weights_note(quantization)})
