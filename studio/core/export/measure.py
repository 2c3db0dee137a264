"""Measurements of exported ONNX files: bytes, compressed bytes, latency, parity and accuracy.

Everything is measured on the file itself in onnxruntime (not on the torch model it came from),
because the file is what users ship: a pruned or quantized model only counts as smaller and
faster when its ONNX file is.
"""

from __future__ import annotations

import statistics
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from studio.core.data.metrics import (
    agreement,
    agreement_by_output,
    check_top1_fits,
    higher_is_better,
    is_class_scores,
    metric_target,
    score,
)
from studio.core.data.task import model_inputs
from studio.core.errors import StudioError
from studio.core.export.onnx_export import external_data_files
from studio.core.graph.onnx_walk import all_graphs
from studio.core.models.onnx_weights import tensor_dtype, tensor_nbytes
from studio.core.util import first_tensor

DEFAULT_THREADS = 2
"""Fixed so that timings taken on different days or machines compare like with like."""
INTEGER_OPS = frozenset({
    "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "QGemm", "QLinearAdd",
    "DynamicQuantizeLinear", "QuantizeLinear", "DequantizeLinear", "MatMulNBits",
    "DynamicQuantizeMatMul", "MatMulIntegerToFloat",
})
"""Op types that show a file holds quantized weights or runs integer kernels."""

Feed = np.ndarray | Tensor | Mapping[str, np.ndarray | Tensor]
"""A model's inputs: one array (its first input) or arrays by input name, one row per sample."""


def ort_session(path: str | Path, threads: int = DEFAULT_THREADS,
                optimized_path: str | Path | None = None) -> ort.InferenceSession:
    """A CPU session with a fixed thread count (and, if asked, the optimized graph saved).

    Idle worker threads do not spin: several sessions live side by side when models are timed
    together, and spinning threads of one slowed whichever model ran next (up to 3x on 2 cores).
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _feed(session: ort.InferenceSession, inputs: Feed) -> dict[str, np.ndarray]:
    if isinstance(inputs, Mapping):
        return {name: _numpy(value) for name, value in inputs.items()}
    return {session.get_inputs()[0].name: _numpy(inputs)}


def _numpy(value: np.ndarray | Tensor) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, Tensor) else np.asarray(value)


def _files(path: str | Path) -> list[Path]:
    return [Path(path), *external_data_files(path)]


def zip_bytes(path: str | Path, level: int = 6) -> int:
    """Bytes of the model file(s) after deflate at zip's default level 6: what unstructured
    zeros buy. (Level 9 took 10x as long on half-zero float32 weights for 1% fewer bytes:
    two minutes of SmolLM2's run.)

    Dense ONNX stores pruned zeros like any other number, so ``onnx_bytes`` does not move; a
    compressed download or archive does shrink, which is the only size benefit they give.
    """
    total = 0
    for file in _files(path):
        compressor = zlib.compressobj(level)
        with file.open("rb") as stream:
            while chunk := stream.read(1 << 20):
                total += len(compressor.compress(chunk))
        total += len(compressor.flush())
    return total


def _rows(inputs: Feed, start: int, stop: int) -> np.ndarray | dict[str, np.ndarray]:
    if isinstance(inputs, Mapping):
        return {name: _numpy(value)[start:stop] for name, value in inputs.items()}
    return _numpy(inputs)[start:stop]


def _count(inputs: Feed) -> int:
    return len(next(iter(inputs.values())) if isinstance(inputs, Mapping) else inputs)


def inputs_for_batches(samples: Feed | TensorDataset, batches: tuple[int, ...] = (1, 64)
                       ) -> dict[int, np.ndarray | dict[str, np.ndarray]]:
    """The inputs of one batch per batch size, cut from ``samples`` (repeated if there are too
    few); every named input alike when the data gives several."""
    data = model_inputs(samples) if isinstance(samples, TensorDataset) else samples
    count = _count(data)

    def batch_of(values: np.ndarray | Tensor, size: int) -> np.ndarray:
        array = _numpy(values)
        return np.ascontiguousarray(np.concatenate([array] * -(-size // count))[:size])

    if isinstance(data, Mapping):
        return {size: {name: batch_of(values, size) for name, values in data.items()}
                for size in batches}
    return {size: batch_of(data, size) for size in batches}


def latency_ms(sessions: Mapping[str, str | Path], inputs_by_batch: Mapping[int, Feed],
               repeats: int = 20, warmup: int = 3, threads: int = DEFAULT_THREADS,
               check: Callable[[], None] | None = None) -> dict[str, dict[int, float]]:
    """Median milliseconds per run of each model at each batch size, timed side by side.
    ``check`` is called before every round (a job's cancel check: timing big models at many
    repeats takes long enough that a cancel must stop it too).

    All sessions live in this one process and are run interleaved (the order rotates every
    round), so machine noise — other processes, CPU frequency — hits every model alike; the
    same model can time 2x apart in two separate processes, so compare ratios from one call.
    """
    opened = {name: ort_session(path, threads) for name, path in sessions.items()}
    names = list(opened)
    result: dict[str, dict[int, float]] = {name: {} for name in names}
    for batch, inputs in inputs_by_batch.items():
        feeds = {name: _feed(session, inputs) for name, session in opened.items()}
        for name in names:
            for _ in range(warmup):
                if check is not None:
                    check()
                opened[name].run(None, feeds[name])
        times: dict[str, list[float]] = {name: [] for name in names}
        for round_ in range(repeats):
            if check is not None:
                check()
            shift = round_ % len(names)
            for name in names[shift:] + names[:shift]:
                start = time.perf_counter()
                opened[name].run(None, feeds[name])
                times[name].append((time.perf_counter() - start) * 1e3)
        for name in names:
            result[name][batch] = statistics.median(times[name])
    return result


def _chunks(inputs: Tensor, size: int) -> Iterator[Tensor]:
    for start in range(0, len(inputs), size):
        yield inputs[start:start + size]


def run_onnx_outputs(path: str | Path, inputs: Feed, batch_size: int = 256,
                     threads: int = DEFAULT_THREADS,
                     feed: Callable[..., Mapping[str, np.ndarray]] | None = None
                     ) -> dict[str, np.ndarray]:
    """Every output of the ONNX model by name, on ``inputs`` run in chunks of ``batch_size``;
    ``feed`` makes each chunk's feed (default: the chunk as the first input, or the named
    arrays as the inputs of those names)."""
    session = ort_session(path, threads)
    names = [output.name for output in session.get_outputs()]
    chunks: list[list[np.ndarray]] = []
    for start in range(0, _count(inputs), batch_size):
        chunk = _rows(inputs, start, start + batch_size)
        chunks.append(session.run(None, _feed(session, feed(chunk) if feed else chunk)))
    return {name: np.concatenate([outputs[i] for outputs in chunks])
            for i, name in enumerate(names)}


def run_onnx(path: str | Path, inputs: Feed, batch_size: int = 256,
             threads: int = DEFAULT_THREADS,
             feed: Callable[..., Mapping[str, np.ndarray]] | None = None) -> np.ndarray:
    """First output of the ONNX model on ``inputs`` (see :func:`run_onnx_outputs`)."""
    return next(iter(run_onnx_outputs(path, inputs, batch_size, threads, feed).values()))


@torch.no_grad()
def torch_outputs(torch_model: nn.Module, inputs: Tensor, batch_size: int = 256) -> Tensor:
    """The model's first output on ``inputs`` (eval mode, in chunks), as float32 on the CPU:
    the reference that agreement metrics and parity compare an exported file with."""
    was_training = torch_model.training
    torch_model.eval()
    try:
        device = next(torch_model.parameters(), torch.empty(0)).device
        outputs = [first_tensor(torch_model(chunk.to(device)))
                   for chunk in _chunks(inputs, batch_size)]
        if any(output is None for output in outputs):
            raise StudioError("the model returned no tensor to compare")
        return torch.cat([output.float().cpu() for output in outputs])
    finally:
        torch_model.train(was_training)


def compare_outputs(expected: np.ndarray, actual: np.ndarray, outputs_in_model: int = 1
                    ) -> dict[str, float | None]:
    """How closely ``actual`` reproduces ``expected`` (outputs on the same inputs):
    ``max_abs_diff``, and ``top1_agreement``, the fraction of samples whose arg-max class is the
    same (None when the output is not class scores: see :func:`is_class_scores`)."""
    if actual.shape != expected.shape:
        raise ValueError(f"output shapes differ: expected {expected.shape}, got {actual.shape}")
    top1 = None
    if is_class_scores(expected, outputs_in_model):
        top1 = float((expected.argmax(-1) == actual.argmax(-1)).mean())
    return {"max_abs_diff": float(np.abs(expected - actual).max()) if expected.size else 0.0,
            "top1_agreement": top1}


def output_figures(outputs: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray],
                   made_from: Mapping[str, np.ndarray], metric: str,
                   labels: Tensor | None = None) -> dict[str, Any]:
    """The task's ``metric``, ``agreement`` with ``reference`` (the uncompressed model's
    outputs) and ``parity`` with ``made_from`` (the file it was quantized from), all on the
    first output (accuracy against ``labels``); for a model with several outputs also
    ``outputs``: cosine and MSE agreement of each, by name. Top-1 figures are given only for
    class scores (see :func:`is_class_scores`); asked for on anything else it is refused,
    since an arg-max over box coordinates means nothing."""
    (first, values), count = next(iter(outputs.items())), len(outputs)
    if metric == "top1_agreement":
        check_top1_fits(first, values.shape, count)
    target = labels if metric == "accuracy" else reference[first]
    if target is None:
        raise StudioError("accuracy needs labels; this data has none")
    figures: dict[str, Any] = {
        "metric": {"name": metric, "value": score(metric, values, target),
                   "higher_is_better": higher_is_better(metric)},
        "agreement": agreement(reference[first], values, count),
        "parity": compare_outputs(made_from[first], values, count),
    }
    if count > 1:
        figures["outputs"] = agreement_by_output(dict(reference), dict(outputs))
    return figures


def parity(torch_model: nn.Module, onnx_path: str | Path, inputs: Tensor,
           batch_size: int = 256) -> dict[str, float | None]:
    """How closely the exported file reproduces the torch model on ``inputs``
    (see :func:`compare_outputs`)."""
    return compare_outputs(torch_outputs(torch_model, inputs, batch_size).numpy(),
                           run_onnx(onnx_path, inputs, batch_size).astype(np.float32))


def score_outputs(outputs: np.ndarray, dataset: TensorDataset, metric: str,
                  reference: Tensor | np.ndarray | None) -> float:
    """``metric`` of ``outputs`` (on ``dataset``'s inputs): accuracy against its labels,
    perplexity on its input tokens, or agreement with ``reference`` (the uncompressed model's
    outputs on the same samples; see :func:`torch_outputs`)."""
    labels = dataset.tensors[1] if len(dataset.tensors) > 1 else None
    return score(metric, outputs, metric_target(metric, dataset.tensors[0], labels, reference))


def onnx_metric(onnx_path: str | Path, dataset: TensorDataset, metric: str = "accuracy",
                reference: Tensor | np.ndarray | None = None, batch_size: int = 256,
                threads: int = DEFAULT_THREADS) -> float:
    """``metric`` of the exported model itself, run in onnxruntime (see :func:`score_outputs`)."""
    return score_outputs(run_onnx(onnx_path, dataset.tensors[0], batch_size, threads), dataset,
                         metric, reference)


def onnx_accuracy(onnx_path: str | Path, dataset: TensorDataset, batch_size: int = 256,
                  threads: int = DEFAULT_THREADS) -> float:
    """Top-1 accuracy of the exported model itself, run in onnxruntime."""
    return onnx_metric(onnx_path, dataset, "accuracy", None, batch_size, threads)


def count_ops(onnx_path: str | Path | onnx.ModelProto) -> dict[str, int]:
    """Op-type histogram (subgraphs included), most frequent first."""
    model = onnx_path if isinstance(onnx_path, onnx.ModelProto) else onnx.load(
        str(onnx_path), load_external_data=False)
    counts = Counter(node.op_type for graph in all_graphs(model.graph) for node in graph.node)
    return dict(counts.most_common())


def initializer_bytes(onnx_path: str | Path | onnx.ModelProto) -> dict[str, int]:
    """Bytes of the stored tensors by element type (``int8``, ``float32``...): where size goes."""
    model = onnx_path if isinstance(onnx_path, onnx.ModelProto) else onnx.load(
        str(onnx_path), load_external_data=False)
    totals: Counter[str] = Counter()
    for graph in all_graphs(model.graph):
        for tensor in graph.initializer:
            # From the shape: packed int4 counts half a byte each, external data is not read.
            totals[tensor_dtype(tensor).name] += tensor_nbytes(tensor)
    return dict(totals.most_common())
