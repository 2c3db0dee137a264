"""Quantization-aware training: fake quant at 2-8 bits per layer, exported as int8 QDQ ONNX.

Chosen Conv/Linear modules get a forward that rounds their weights to a symmetric
per-output-channel grid (scale = max|w| / (2^(b-1) - 1), recomputed every step; gradients pass
straight through the rounding) and, optionally, their input activations to an asymmetric
per-tensor grid whose range is a running (EMA) min/max. The model then trains with the
shared loop and learns to live with the rounding.

Export goes through the TorchScript exporter, which writes the functional fake-quant ops as
QuantizeLinear/DequantizeLinear (``torch.ao.quantization`` modules fail with the dynamo
exporter). ONNX QuantizeLinear only knows 8 bits, so every weight is exported as int8: for
2-7 bit layers the stored values lie on the low-bit grid (at most 2^b - 1 distinct values per
channel) but take a full byte each, and onnxruntime runs them with int8 kernels. Low-bit QAT
buys accuracy at a given grid, not a smaller file or a faster kernel than int8.

That file holds Q/DQ only where training put them, so onnxruntime fuses an integer kernel
only where a layer's output also meets a QuantizeLinear (on the demo 3 of 5 convolutions,
about fp32 speed). For deployment speed use :mod:`.qat_ort`, which hands the QAT grids to
ORT's static quantizer.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import Tensor, nn
from torch.nn import functional as F

from studio.core.errors import StudioError
from studio.core.export.onnx_export import export_onnx, save_onnx
from studio.core.methods.quantization.ort import drop_unused_initializers, used_names
from studio.core.models.onnx_repair import constants_to_initializers
from studio.core.plan.plan import ResolvedSpec

MIN_BITS, MAX_BITS = 2, 8
_EPS = 1e-8


def _check_bits(name: str, bits: int, what: str) -> None:
    if not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise StudioError(f"{name}: {what} bits must be an integer from {MIN_BITS} to "
                          f"{MAX_BITS}, not {bits!r}")


def channel_scale(weight: Tensor, qmax: int) -> Tensor:
    """One symmetric scale per output channel (axis 0): max|w| / qmax."""
    w = weight.detach()
    amax = w.abs().amax(dim=tuple(range(1, w.ndim))) if w.ndim > 1 else w.abs()
    return (amax / qmax).clamp_min(_EPS).float()


def fake_quantize_weight(weight: Tensor, bits: int) -> Tensor:
    """``weight`` rounded to the symmetric per-output-channel ``bits`` grid (the grid QAT and
    the adapters' quantized base use); gradients pass straight through the rounding."""
    qmax = 2 ** (bits - 1) - 1
    scale = channel_scale(weight, qmax)
    zero = torch.zeros(scale.shape, dtype=torch.int32, device=scale.device)
    return torch.fake_quantize_per_channel_affine(weight, scale, zero, 0, -qmax, qmax)


class FakeQuantMixin:
    """Fake quant of the weight (and optionally the input) of a Conv or Linear module."""

    learns_from_batches = True
    """Its activation range follows the batches it sees (see ``train.loop``)."""

    weight: Tensor
    weight_bits: int
    act_bits: int | None
    act_momentum: float
    act_min: Tensor
    act_max: Tensor
    act_seen: Tensor
    _frozen: bool

    def _init_fake_quant(self, bits: int, act_bits: int | None, momentum: float) -> None:
        self.weight_bits, self.act_bits, self.act_momentum = bits, act_bits, momentum
        self._frozen = False
        device = self.weight.device
        self.register_buffer("act_min", torch.zeros((), device=device))  # type: ignore[attr-defined]
        self.register_buffer("act_max", torch.zeros((), device=device))  # type: ignore[attr-defined]
        self.register_buffer("act_seen", torch.zeros((), dtype=torch.bool, device=device))  # type: ignore[attr-defined]

    @property
    def weight_qmax(self) -> int:
        """Symmetric grid [-qmax, qmax]: 2^b - 1 levels, zero exactly representable."""
        return 2 ** (self.weight_bits - 1) - 1

    def weight_scale(self) -> Tensor:
        """One scale per output channel (axis 0), from the current weights; not trained."""
        return channel_scale(self.weight, self.weight_qmax)

    def quantized_weight(self) -> Tensor:
        """The weight as the layer uses it: on the b-bit grid, straight-through gradient."""
        return fake_quantize_weight(self.weight, self.weight_bits)

    def _observe(self, x: Tensor) -> None:
        low, high = torch.aminmax(x.detach().float())
        if not bool(self.act_seen):
            self.act_min.copy_(low)
            self.act_max.copy_(high)
            self.act_seen.fill_(True)
        else:
            self.act_min.lerp_(low, self.act_momentum)
            self.act_max.lerp_(high, self.act_momentum)

    def act_qparams(self) -> tuple[float, int]:
        """(scale, zero point) of the input grid [0, 2^b - 1]; the range always holds 0."""
        assert self.act_bits is not None
        levels = 2 ** self.act_bits - 1
        low = min(float(self.act_min), 0.0)
        high = max(float(self.act_max), 0.0)
        scale = max((high - low) / levels, _EPS)
        zero = int(min(max(round(-low / scale), 0), levels))
        return scale, zero

    def quantize_input(self, x: Tensor) -> Tensor:
        if self.act_bits is None:
            return x
        if self.training or not bool(self.act_seen):  # never calibrated: learn from this batch
            self._observe(x)
        scale, zero = self.act_qparams()
        levels = 2 ** self.act_bits - 1
        if self._frozen and levels < 255:
            # ONNX Q/DQ is 8-bit: clip to the b-bit range first, then the 8-bit grid with the
            # same scale and zero point gives exactly the b-bit values.
            x = x.clamp((0 - zero) * scale, (levels - zero) * scale)
            levels = 255
        return torch.fake_quantize_per_tensor_affine(x, scale, zero, 0, levels)

    def export_weight(self) -> Tensor:
        """Grid values written to the int8 grid with the same scale (exact for 2-8 bits)."""
        scale = self.frozen_scale  # type: ignore[attr-defined]
        zero = torch.zeros(scale.shape, dtype=torch.int32, device=scale.device)
        return torch.fake_quantize_per_channel_affine(self.frozen_weight, scale, zero,  # type: ignore[attr-defined]
                                                      0, -128, 127)

    def freeze(self) -> None:
        """Fix the grids in buffers so the exporter writes 8-bit Q/DQ with these values.

        The buffers are persistent while frozen: the TorchScript tracer bakes tensors outside
        the state dict, and everything computed from them, into one float constant.
        """
        with torch.no_grad():
            self.register_buffer("frozen_weight", self.quantized_weight().detach().clone())  # type: ignore[attr-defined]
            self.register_buffer("frozen_scale", self.weight_scale().clone())  # type: ignore[attr-defined]
        self._frozen = True

    def unfreeze(self) -> None:
        for name in ("frozen_weight", "frozen_scale"):
            self._buffers.pop(name, None)  # type: ignore[attr-defined]
        self._frozen = False

    def fake_weight(self) -> Tensor:
        return self.export_weight() if self._frozen else self.quantized_weight()


class QATConv1d(FakeQuantMixin, nn.Conv1d):
    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(self.quantize_input(x), self.fake_weight(), self.bias)


class QATConv2d(FakeQuantMixin, nn.Conv2d):
    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(self.quantize_input(x), self.fake_weight(), self.bias)


class QATConv3d(FakeQuantMixin, nn.Conv3d):
    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(self.quantize_input(x), self.fake_weight(), self.bias)


class QATLinear(FakeQuantMixin, nn.Linear):
    def forward(self, x: Tensor) -> Tensor:
        return F.linear(self.quantize_input(x), self.fake_weight(), self.bias)


QAT_CLASSES: dict[type[nn.Module], type[nn.Module]] = {
    nn.Conv1d: QATConv1d, nn.Conv2d: QATConv2d, nn.Conv3d: QATConv3d, nn.Linear: QATLinear}
"""Exact types only: a subclass may override forward, which the swap would silently drop."""
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def fold_batchnorms(model: nn.Module) -> list[str]:
    """Fold every batch norm that directly follows a convolution into it, in place.

    Deployment folds them anyway (the exporter does it for float convs), so the weights QAT
    rounds must be the folded ones; and a batch norm left between a Q/DQ convolution and the
    next quantizer stops onnxruntime from fusing an integer convolution. The batch norm
    becomes ``nn.Identity`` (its name stays); returns the folded batch norms' names. Models
    torch.fx cannot trace are left as they are.
    """
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # data-dependent control flow: fold nothing rather than guess
        return []
    modules = dict(model.named_modules())
    folded = []
    for node in graph.nodes:
        bn = modules.get(node.target) if node.op == "call_module" else None
        source = node.args[0] if node.args else None
        if not isinstance(bn, _BATCH_NORMS) or not isinstance(source, torch.fx.Node):
            continue
        conv = modules.get(source.target) if source.op == "call_module" else None
        if not isinstance(conv, _CONVS) or len(source.users) != 1 or not bn.track_running_stats:
            continue
        weight, bias = torch.nn.utils.fusion.fuse_conv_bn_weights(
            conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias)
        conv.weight, conv.bias = weight, bias
        _set_module(model, node.target, nn.Identity())
        folded.append(node.target)
    return folded


def prepare_qat(model: nn.Module, bits_by_layer: Mapping[str, int],
                act_bits_by_layer: Mapping[str, int | None] | None = None,
                fold_bn: bool = True, momentum: float = 0.1) -> nn.Module:
    """Make the named Conv/Linear layers of ``model`` fake-quantize, in place; returns it.

    ``bits_by_layer`` gives each layer's weight bits (2-8); ``act_bits_by_layer`` its input
    activation bits (2-8, or None for float input). Work on a copy: the layers change class
    (their names, parameters and state-dict keys stay; observer buffers are added).
    """
    act_bits_by_layer = act_bits_by_layer or {}
    modules = dict(model.named_modules())
    problems = []
    for name in [*bits_by_layer, *act_bits_by_layer]:
        if name not in modules:
            problems.append(f"no layer named {name!r}")
        elif type(modules[name]) not in QAT_CLASSES and not isinstance(modules[name],
                                                                       FakeQuantMixin):
            problems.append(f"{name!r} is a {type(modules[name]).__name__}; quantization-aware "
                            "training handles Conv1d/2d/3d and Linear")
    if problems:
        raise StudioError("quantization-aware training: " + "; ".join(dict.fromkeys(problems)))
    for name, bits in bits_by_layer.items():
        _check_bits(name, bits, "weight")
        act = act_bits_by_layer.get(name)
        if act is not None:
            _check_bits(name, act, "activation")
    if fold_bn:
        fold_batchnorms(model)
    for name, bits in bits_by_layer.items():
        module = model.get_submodule(name)
        if not isinstance(module, FakeQuantMixin):
            module.__class__ = QAT_CLASSES[type(module)]
        assert isinstance(module, FakeQuantMixin)
        module._init_fake_quant(bits, act_bits_by_layer.get(name), momentum)
    return model


def qat_layers(model: nn.Module) -> dict[str, FakeQuantMixin]:
    return {name: m for name, m in model.named_modules() if isinstance(m, FakeQuantMixin)}


_PLAN_BITS = {"int8": 8, "int4": 4, "int2": 2}


def qat_bits_from_plan(model: nn.Module, resolved: Mapping[str, ResolvedSpec]
                       ) -> tuple[dict[str, int], dict[str, int | None], list[str]]:
    """Weight and activation bits per Conv/Linear layer from resolved plan settings.

    Layers with integer weight bits that are not excluded are chosen; int8 activations give
    8-bit input fake quant, anything else float input. Returns the two maps and notes.
    """
    bits: dict[str, int] = {}
    acts: dict[str, int | None] = {}
    int16 = []
    for name, module in model.named_modules():
        spec = resolved.get(name)
        if spec is None or spec.exclude or type(module) not in QAT_CLASSES:
            continue
        if spec.weight_bits in _PLAN_BITS:
            bits[name] = _PLAN_BITS[spec.weight_bits]
            acts[name] = 8 if spec.act_bits == "int8" else None
            if spec.act_bits == "int16":
                int16.append(name)
    notes = []
    if int16:
        notes.append(f"{', '.join(int16[:6])}: int16 activations have no ONNX int16 Q/DQ at "
                     "opset 17; their inputs stay float.")
    low = sorted(name for name, b in bits.items() if b < 8)
    if low:
        widths = "/".join(str(b) for b in sorted({bits[name] for name in low}))
        notes.append(f"{', '.join(low[:6])}{' ...' if len(low) > 6 else ''}: trained on a "
                     f"{widths}-bit grid but stored and run as int8 by onnxruntime (same file "
                     "size and speed as int8; the file compresses better).")
    return bits, acts, notes


@contextlib.contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    layers = qat_layers(model).values()
    for layer in layers:
        layer.freeze()
    try:
        yield
    finally:
        for layer in layers:
            layer.unfreeze()


def fold_weight_quantizers(model: onnx.ModelProto) -> list[str]:
    """Replace each QuantizeLinear of a constant float tensor by its int8 result, in place.

    The exported file then stores the integers (one byte per weight) feeding their
    DequantizeLinear, which is the form onnxruntime fuses into integer kernels. Returns the
    names of the folded weights.
    """
    graph = model.graph
    constants_to_initializers(model)  # exported without folding: scales are Constant nodes
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    replaced: dict[str, str] = {}
    kept = []
    for node in graph.node:
        inputs = list(node.input) + [""] * (3 - len(node.input))
        if node.op_type != "QuantizeLinear" or not all(n in values for n in inputs[:3]) \
                or values[inputs[0]].dtype.kind != "f":
            kept.append(node)
            continue
        x, scale, zero = (values[n] for n in inputs[:3])
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if scale.ndim == 1 and x.ndim > 1:
            shape = [1] * x.ndim
            shape[axis] = -1
            scale, zero = scale.reshape(shape), zero.reshape(shape)
        info = np.iinfo(zero.dtype)
        q = np.clip(np.rint(x / scale) + zero.astype(np.int64), info.min, info.max)
        name = f"{inputs[0]}_quantized"
        graph.initializer.append(numpy_helper.from_array(q.astype(zero.dtype), name))
        replaced[node.output[0]] = name
    del graph.node[:]
    graph.node.extend(kept)
    for node in graph.node:
        node.input[:] = [replaced.get(n, n) for n in node.input]
    _drop_unused(model)
    return [n.removesuffix("_quantized") for n in replaced.values()]


def _drop_unused(model: onnx.ModelProto) -> None:
    graph = model.graph
    while True:
        used = used_names(graph)
        dead = [node for node in graph.node if not any(o in used for o in node.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    drop_unused_initializers(graph)


def convert_qat_to_qdq_onnx(model: nn.Module, example: Tensor | Sequence[Tensor],
                            path: str | Path, opset: int = 17) -> Path:
    """Export a fake-quant model as QDQ ONNX whose quantized weights are stored as int8.

    Weights are written as int8 initializers feeding DequantizeLinear (2-7 bit layers keep
    their grid values, stored as int8); input fake quant becomes a runtime Q/DQ pair at 8 bits
    (with a Clip to the narrower range for 2-7 bits).
    """
    path = Path(path)
    layers = qat_layers(model)
    if not layers:
        raise StudioError("the model has no fake-quant layers; call prepare_qat first")
    blind = [name for name, layer in layers.items()
             if layer.act_bits is not None and not bool(layer.act_seen)]
    if blind:
        raise StudioError(f"{', '.join(repr(n) for n in blind)} has not seen any input, so its "
                          "input range is unknown; train or run calibration batches first")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=path.parent) as scratch:
        exported = Path(scratch) / "qat.onnx"
        with _frozen(model):
            export_onnx(model, example, exported, opset=opset, constant_folding=False)
        proto = onnx.load(str(exported))
    fold_weight_quantizers(proto)
    return save_onnx(proto, path)
