"""The compressed torch weights of a run, as ``.safetensors`` beside its ONNX file.

The ONNX file is what runs; these weights are what a user fine-tunes further or loads back into
their own code. The file's metadata records the architecture the weights came from, the example
input and which tensors changed shape (structured pruning removes channels, so the original
architecture no longer receives them as it is). Adapter tensors (LoRA and similar, named
``lora_``) go into a file of their own, so a base model can take them or leave them.
Safetensors, not ``torch.save``: reading it back never runs code.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from studio.core.models.inputs import InputSpec

WEIGHTS_FILE = "weights.safetensors"
ADAPTERS_FILE = "adapters.safetensors"
ADAPTER_MARKERS = ("lora_",)
"""Parameter names holding one of these are adapter weights."""


def _is_adapter(name: str) -> bool:
    return any(marker in name for marker in ADAPTER_MARKERS)


def _storable(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Plain dense CPU copies (safetensors refuses shared storage and quantized dtypes)."""
    return {name: tensor.detach().to("cpu").contiguous().clone()
            for name, tensor in state.items()
            if isinstance(tensor, torch.Tensor) and not tensor.is_quantized}


def write_compressed_weights(model: torch.nn.Module, original: torch.nn.Module,
                             folder: Path, architecture: str | None,
                             example: InputSpec | None) -> list[Path]:
    """Write ``weights.safetensors`` (and ``adapters.safetensors`` when the model has adapter
    tensors) into ``folder``; returns the files written."""
    state = _storable(model.state_dict())
    before = {name: tuple(tensor.shape) for name, tensor in original.state_dict().items()}
    reshaped = sorted(name for name, tensor in state.items()
                      if name in before and tuple(tensor.shape) != before[name])
    metadata = {"format": "compression-studio compressed weights",
                "architecture": architecture or "",
                "reshaped": json.dumps(reshaped)}
    if example is not None:
        metadata |= {"input_shape": json.dumps(list(example.shape)),
                     "input_dtype": example.dtype}
    adapters = {name: tensor for name, tensor in state.items() if _is_adapter(name)}
    written = [folder / WEIGHTS_FILE]
    save_file({name: tensor for name, tensor in state.items() if name not in adapters},
              str(written[0]), metadata)
    if adapters:
        written.append(folder / ADAPTERS_FILE)
        save_file(adapters, str(written[1]), metadata | {"adapters_of": WEIGHTS_FILE})
    return written
