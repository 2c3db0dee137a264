"""Post-training quantization of an ONNX file with onnxruntime's own quantizers.

One entry point, :func:`quantize_onnx`, runs one kind of pass on a file: static int8 QDQ
(calibrated), dynamic int8, fp16, or n-bit weight-only MatMul (``MatMulNBits``). The file is
written atomically, and its tensor names are shortened (node names, which carry the layer
scopes, are kept) because in a small int8 model the names are a measurable share of the bytes.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_dynamic,
    quantize_static,
)
from torch.utils.data import TensorDataset

from studio.core.atomic import out_of_space
from studio.core.data.task import input_names, model_inputs
from studio.core.errors import StudioError
from studio.core.export.onnx_export import save_onnx
from studio.core.graph.onnx_walk import all_graphs, subgraphs
from studio.core.methods.quantization.auto_calibration import choose_ranges
from studio.core.methods.quantization.mask_path import mask_path_nodes
from studio.core.models.onnx_feeds import Feeder, feeder_for
from studio.core.models.onnx_file import fixed_batch_size
from studio.core.models.onnx_weights import external_tensors, read_array

Mode = Literal["static", "dynamic", "fp16", "nbits", "int4", "int2"]
MODES: tuple[str, ...] = ("static", "dynamic", "fp16", "nbits", "int4", "int2")
_NBITS_ALIASES = {"int4": 4, "int2": 2}
CALIBRATION_METHODS = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                       "percentile": CalibrationMethod.Percentile}


class _QuietOnnxruntime(logging.Filter):
    """Drops onnxruntime.quantization's info and warning chatter logged on the root logger."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or "onnxruntime" not in record.pathname


logging.getLogger().addFilter(_QuietOnnxruntime())
logging.getLogger("onnxruntime").setLevel(logging.WARNING)  # its modules log at info


class DatasetReader(CalibrationDataReader):
    """Feeds the inputs of the calibration samples (one tensor, or every named input) to the
    model, in batches, through ``feed`` (see :mod:`studio.core.models.onnx_feeds`)."""

    def __init__(self, dataset: TensorDataset, feed: Feeder, batch_size: int = 32) -> None:
        inputs = model_inputs(dataset)
        self.inputs = {name: value.detach().cpu().numpy() for name, value in inputs.items()} \
            if isinstance(inputs, dict) else inputs.detach().cpu().numpy()
        self.feed = feed
        self.batch_size = batch_size
        self._start, self._end, self._next = 0, len(dataset), 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= self._end:
            return None
        stop = min(self._next + self.batch_size, self._end)
        if isinstance(self.inputs, dict):
            batch = {name: rows[self._next:stop] for name, rows in self.inputs.items()}
        else:
            batch = self.inputs[self._next:stop]
        self._next = stop
        return self.feed(batch)

    def __len__(self) -> int:
        return self._end

    def set_range(self, start_index: int, end_index: int) -> None:
        self._start, self._end, self._next = start_index, end_index, start_index


def calibration_batches(path: Path, calibration: TensorDataset, feed: Feeder | None = None
                        ) -> Iterator[dict[str, np.ndarray]]:
    """The calibration split as the feeds of the file at ``path``, batch by batch (the
    batches static quantization calibrates on)."""
    model = onnx.load(str(path), load_external_data=False)
    reader = DatasetReader(calibration, feed or feeder_for(model, named=input_names(calibration)),
                           fixed_batch_size(model) or 32)
    while (batch := reader.get_next()) is not None:
        yield batch


@contextlib.contextmanager
def _keep_root_logging() -> Iterator[None]:
    """matmul_nbits_quantizer calls ``logging.basicConfig(level=INFO)`` when imported, which
    would make every library's info messages print; put the root logger back as it was."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)


@contextlib.contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def used_names(graph: onnx.GraphProto) -> set[str]:
    """Every tensor name a node reads, in ``graph`` and its subgraphs, plus graph outputs."""
    names = {name for node in graph.node for name in node.input}
    names |= {output.name for output in graph.output}
    for sub in subgraphs(graph):
        names |= used_names(sub)
    return names


def drop_unused_initializers(graph: onnx.GraphProto) -> None:
    used = used_names(graph)
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def _node_names(path: Path) -> set[str]:
    return {n.name for n in onnx.load(str(path), load_external_data=False).graph.node}


def has_external_data(path: Path) -> bool:
    """Whether the file keeps weights in a data file (always so past 2 GB): the quantizers
    must then write one too (``use_external_data_format``); one protobuf cannot hold them."""
    return next(external_tensors(onnx.load(str(path), load_external_data=False)), None) \
        is not None


def _preprocess(src: Path, folder: Path, keep: set[str]) -> tuple[Path, str]:
    """quant_pre_process (shape inference + ORT's basic graph optimisation), as ORT advises.

    The optimiser may fuse or rename nodes; when a node the plan names would disappear, the
    optimisation is skipped. Symbolic shape inference fails on some dynamic-shape exports, so
    it is dropped before giving up; on any failure the original file is quantized as is.
    """
    attempts: list[dict[str, bool]] = [{}, {"skip_symbolic_shape": True},
                                       {"skip_symbolic_shape": True, "skip_optimization": True}]
    said = ["pre-processed (shape inference, graph optimisation)",
            "pre-processed without symbolic shape inference (it cannot follow this model's "
            "dynamic shapes)",
            "pre-processed without symbolic shape inference or graph optimisation"]
    src, folder = src.resolve(), folder.resolve()
    for number, options in enumerate(attempts):
        target = folder / f"pre{number}.onnx"
        try:
            # A failed symbolic inference saves "sym_shape_infer_temp.onnx" (and data files)
            # into the working folder and logs a warning per dim; keep both in the scratch folder.
            with contextlib.chdir(folder), _quiet("onnxruntime.tools.symbolic_shape_infer"):
                quant_pre_process(str(src), str(target), **options)
            names = _node_names(target)  # a full disk leaves a short file, unreadable
        except Exception:  # best effort: the quantizers also work without it
            continue
        if keep <= names:
            return target, said[number]
    return src, "not pre-processed (quant_pre_process failed); quantized as it is"


def _attribute(node: onnx.NodeProto, name: str, default: float) -> float:
    for attribute in node.attribute:
        if attribute.name == name:
            return attribute.f if attribute.type == onnx.AttributeProto.FLOAT else attribute.i
    return default


def gemm_to_matmul(model: onnx.ModelProto, names: Sequence[str] | None = None) -> dict[str, str]:
    """Rewrite plain ``Gemm`` nodes with a constant weight as ``MatMul`` (+ ``Add``), in place.

    ORT's n-bit weight quantizer only accepts MatMul, and the TorchScript exporter writes
    ``nn.Linear`` on 2-D inputs as Gemm. Returns old name -> new MatMul name.
    """
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    taken = {n.name for n in graph.node}
    renamed: dict[str, str] = {}
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        wanted = names is None or node.name in names
        plain = (_attribute(node, "alpha", 1.0) == 1.0 and _attribute(node, "beta", 1.0) == 1.0
                 and not _attribute(node, "transA", 0))
        if not (wanted and node.op_type == "Gemm" and plain and node.input[1] in initializers):
            nodes.append(node)
            continue
        weight = numpy_helper.to_array(initializers[node.input[1]])
        if _attribute(node, "transB", 0):
            weight = weight.T
        weight_name = f"{node.input[1]}_matmul"
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(weight),
                                                         weight_name))
        base = node.name.removesuffix("Gemm") if node.name.endswith("Gemm") else f"{node.name}_"
        matmul_name = _unique(f"{base}MatMul", taken)
        has_bias = len(node.input) > 2 and node.input[2]
        product = f"{node.output[0]}_matmul" if has_bias else node.output[0]
        nodes.append(helper.make_node("MatMul", [node.input[0], weight_name], [product],
                                      name=matmul_name))
        if has_bias:
            nodes.append(helper.make_node("Add", [product, node.input[2]], [node.output[0]],
                                          name=_unique(f"{base}Add", taken)))
        renamed[node.name] = matmul_name
    del graph.node[:]
    graph.node.extend(nodes)
    drop_unused_initializers(graph)
    return renamed


def _unique(name: str, taken: set[str]) -> str:
    candidate, number = name, 1
    while candidate in taken:
        candidate, number = f"{name}_{number}", number + 1
    taken.add(candidate)
    return candidate


def _drop_zero_bias_zero_points(graph: onnx.GraphProto, data_dir: Path | None) -> None:
    initializers = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or len(node.input) < 3:
            continue
        x, zero = initializers.get(node.input[0]), initializers.get(node.input[2])
        if x is not None and zero is not None and x.data_type == onnx.TensorProto.INT32 \
                and not read_array(zero, data_dir).any():
            del node.input[2]
    drop_unused_initializers(graph)


def compact(model: onnx.ModelProto, data_dir: Path | None = None) -> onnx.ModelProto:
    """Shorten intermediate tensor names and drop cached shapes and doc strings, in place.

    Node names (which hold the layer scopes) and the graph's inputs and outputs keep their
    names. All-zero zero points of int32 (bias) DequantizeLinear inputs are dropped: ONNX
    reads a missing zero point as 0, and onnxruntime fuses the same integer kernels. On the
    demo's int8 file this removes about 8 % of the bytes; onnxruntime re-infers the shapes.
    """
    graph = model.graph
    _drop_zero_bias_zero_points(graph, data_dir)
    del graph.value_info[:]
    if next(subgraphs(graph), None) is not None:
        return model  # subgraphs read outer names; renaming them all is not worth the risk
    keep = {v.name for v in [*graph.input, *graph.output]}
    short: dict[str, str] = {}

    def rename(name: str) -> str:
        if not name or name in keep:
            return name
        return short.setdefault(name, f"t{len(short)}")

    graph.doc_string = ""
    for tensor in graph.initializer:
        tensor.name = rename(tensor.name)
        tensor.doc_string = ""
    for node in graph.node:
        node.input[:] = [rename(name) for name in node.input]
        node.output[:] = [rename(name) for name in node.output]
        node.doc_string = ""
    return model


def _dynamic(src: Path, out: Path, per_channel: bool, exclude: list[str],
             nodes: list[str] | None, extra_options: dict[str, Any]) -> None:
    """``EnableSubgraph`` lets the quantizer reach MatMuls inside If/Loop/Scan bodies, named
    as the layer tree names them (the repair step names them so)."""
    # The dynamic quantizer first rewrites each Gemm "X" as MatMul "X_MatMul" (+ Add) and only
    # then reads the node lists, so a Gemm named in them must be named by its new name too.
    gemms = {n.name for n in onnx.load(str(src), load_external_data=False).graph.node
             if n.op_type == "Gemm"}

    def aliased(names: list[str]) -> list[str]:
        return [*names, *(f"{n}_MatMul" for n in names if n in gemms)]

    quantize_dynamic(str(src), str(out), per_channel=per_channel, weight_type=QuantType.QInt8,
                     nodes_to_exclude=aliased(exclude),
                     nodes_to_quantize=aliased(nodes) if nodes is not None else None,
                     use_external_data_format=has_external_data(src),
                     extra_options={"EnableSubgraph": True, **extra_options})


def _static(src: Path, out: Path, calibration: TensorDataset | None, per_channel: bool,
            calibrate_method: str, exclude: list[str], nodes: list[str] | None,
            extra_options: dict[str, Any], feed: Feeder | None, prepared: list[str] | None
            ) -> None:
    if calibration is None or len(calibration) == 0:
        raise StudioError("static int8 quantization needs calibration samples (a few hundred "
                          "inputs from the training data)")
    if calibrate_method not in (*CALIBRATION_METHODS, "auto"):
        raise StudioError(f"calibration method {calibrate_method!r}: use one of "
                          f"{', '.join(CALIBRATION_METHODS)}, auto")
    model = onnx.load(str(src), load_external_data=False)
    feed = feed or feeder_for(model, named=input_names(calibration))
    batch = fixed_batch_size(model) or 32
    reader = DatasetReader(calibration, feed, batch)
    if calibrate_method == "auto":
        chosen = choose_ranges(src, lambda: DatasetReader(calibration, feed, batch))
        extra_options["TensorQuantOverrides"] = {
            **chosen.overrides, **extra_options.get("TensorQuantOverrides", {})}
        calibrate_method = "minmax"  # every tensor it calibrates has its range given
        if prepared is not None:
            counts = ", ".join(f"{name} {count}" for name, count in
                               sorted(chosen.counts().items()))
            prepared.append(f"calibration auto: per tensor, the range with the least rounding "
                            f"error on the calibration split ({counts})" if counts else
                            "calibration auto: min-max for every tensor (the model's "
                            "activations hold non-finite values, which cannot be histogrammed)")
    mask_path = [name for name in mask_path_nodes(model) if name not in exclude]
    if mask_path and prepared is not None:
        prepared.append(f"static quantization: {len(mask_path)} node(s) of the additive "
                        "attention-mask path left float (their range spans 1e38)")
    quantize_static(str(src), str(out), reader,
                    quant_format=QuantFormat.QDQ, per_channel=per_channel,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    nodes_to_exclude=[*exclude, *mask_path], nodes_to_quantize=nodes,
                    calibrate_method=CALIBRATION_METHODS[calibrate_method],
                    use_external_data_format=has_external_data(src),
                    extra_options=extra_options)


def _nbits(src: Path, out: Path, bits: int, block_size: int, symmetric: bool,
           exclude: list[str], nodes: list[str] | None, algorithm: str = "rtn") -> None:
    with _keep_root_logging():
        from onnxruntime.quantization.matmul_nbits_quantizer import (
            HQQWeightOnlyQuantConfig,
            MatMulNBitsQuantizer,
        )
    if bits not in (2, 4, 8):
        raise StudioError(f"weight-only MatMul quantization stores 2, 4 or 8 bits, not {bits}")
    if block_size < 16 or block_size & (block_size - 1):
        raise StudioError(f"block size {block_size}: use a power of two, 16 or more (32, 128)")
    model = onnx.load(str(src))
    present = {n.name for n in model.graph.node}

    def current(name: str) -> str:  # a Gemm an earlier dynamic pass renamed "X_MatMul"
        return f"{name}_MatMul" if name not in present and f"{name}_MatMul" in present else name

    nodes = [current(n) for n in nodes] if nodes is not None else None
    renamed = gemm_to_matmul(model, nodes)
    chosen = {renamed.get(n, n) for n in nodes} if nodes is not None else None
    skip = {renamed.get(current(n), current(n)) for n in exclude}
    if chosen is not None:  # the quantizer takes every MatMul it is not told to skip
        skip |= {n.name for graph in all_graphs(model.graph) for n in graph.node
                 if n.op_type == "MatMul" and n.name not in chosen}
    with _keep_root_logging():
        # HQQ (half-quadratic optimisation of scale and zero point, no calibration data)
        # fits asymmetric grids only.
        hqq = HQQWeightOnlyQuantConfig(block_size=block_size, bits=bits) \
            if algorithm == "hqq" else None
        quantizer = MatMulNBitsQuantizer(model, bits=bits, block_size=block_size,
                                         is_symmetric=symmetric and hqq is None,
                                         nodes_to_exclude=sorted(skip), algo_config=hqq)
        quantizer.process()
    save_onnx(quantizer.model.model, out)


def _fp16(src: Path, out: Path, exclude: list[str]) -> None:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True,
                                     node_block_list=exclude or None)
    save_onnx(model, out)


def quantize_onnx(src: str | Path, dst: str | Path, mode: Mode,
                  calibration: TensorDataset | None = None, per_channel: bool = True,
                  calibrate_method: str = "minmax", exclude_nodes: Sequence[str] = (),
                  nodes: Sequence[str] | None = None, bits: int = 4, block_size: int = 32,
                  symmetric: bool = False, algorithm: str = "rtn", preprocess: bool = True,
                  extra_options: dict[str, Any] | None = None,
                  compact_names: bool = True, prepared: list[str] | None = None,
                  feed: Feeder | None = None) -> Path:
    """Quantize the ONNX file ``src`` into ``dst`` with one onnxruntime pass.

    - ``static``: int8 weights and uint8 activations as QuantizeLinear/DequantizeLinear pairs,
      ranges calibrated on ``calibration`` (``minmax``, ``entropy``, ``percentile``, or
      ``auto``: per tensor, see :mod:`auto_calibration`); ORT
      runs the pairs around Conv/MatMul as integer kernels. The fast choice for CNNs on CPU.
    - ``dynamic``: int8 weights, activations quantized at run time (MatMulInteger,
      ConvInteger). For MatMul-heavy models; ConvInteger is slow on ORT CPU.
    - ``fp16``: half-precision weights and compute, inputs and outputs kept float32. Halves
      the file; ORT CPU has few fp16 kernels, so it is for GPU targets.
    - ``nbits``: ``bits``-bit (2, 4, 8) block-wise weight-only MatMul (``MatMulNBits``,
      ``block_size`` weights share a scale); Gemm nodes are rewritten as MatMul first.
      ``int4`` and ``int2`` are ``nbits`` at 4 and 2 bits. ``algorithm``: ``rtn`` (round to
      nearest) or ``hqq`` (onnxruntime's HQQ, which fits each group's scale and zero point to
      the weights; asymmetric only).

    ``exclude_nodes`` stay float; ``nodes``, when given, limits the pass to those nodes.
    ``prepared``, when given, receives a line saying how the file was pre-processed. ``feed``
    turns calibration batches into the file's inputs (default: :func:`feeder_for` the file).
    """
    src, dst = Path(src), Path(dst)
    if mode not in MODES:
        raise StudioError(f"quantization mode {mode!r}: use one of {', '.join(MODES)}")
    if mode in _NBITS_ALIASES:
        mode, bits = "nbits", _NBITS_ALIASES[mode]
    if not src.is_file():
        raise StudioError(f"{src}: no such ONNX file")
    exclude = list(exclude_nodes)
    chosen = list(nodes) if nodes is not None else None
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{dst.name}.", dir=dst.parent) as scratch:
        folder = Path(scratch)
        source = src
        if preprocess and mode in ("static", "dynamic") and has_external_data(src):
            how = ("not pre-processed: the model keeps its weights in a data file, and "
                   "pre-processing would hold several copies of them in memory")
            if prepared is not None:
                prepared.append(f"{mode} quantization: {how}")
        elif preprocess and mode in ("static", "dynamic"):
            source, how = _preprocess(src, folder, set(exclude) | set(chosen or ()))
            if prepared is not None:
                prepared.append(f"{mode} quantization: {how}")
        out = folder / "quantized.onnx"
        try:
            if mode == "static":
                _static(source, out, calibration, per_channel, calibrate_method, exclude, chosen,
                        dict(extra_options or {}), feed, prepared)
            elif mode == "dynamic":
                _dynamic(source, out, per_channel, exclude, chosen, dict(extra_options or {}))
            elif mode == "fp16":
                _fp16(source, out, exclude)
            else:
                _nbits(source, out, bits, block_size, symmetric, exclude, chosen, algorithm)
            model = onnx.load(str(out), load_external_data=False)  # weights stay in the scratch
        except StudioError:
            raise
        except Exception as error:  # the quantizers raise many types; all mean "cannot"
            why = out_of_space(error, [dst.parent, tempfile.gettempdir()], src.stat().st_size)
            raise StudioError(f"{mode} quantization of {src.name} failed: "
                              f"{why or f'{type(error).__name__}: {error}'}") from error
        if compact_names:
            compact(model, folder)
        save_onnx(model, dst, folder)
    return dst
