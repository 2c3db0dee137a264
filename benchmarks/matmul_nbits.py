"""Which weight-only MatMul pays off on this CPU: float32 MatMul against onnxruntime's 4- and
8-bit ``MatMulNBits`` on one matrix, timed side by side.

``python -m benchmarks.matmul_nbits [--k 576 --n 49152 --tokens 128] [--json PATH]``; the
default is SmolLM2's tied LM head over one block of 128 tokens, the largest matmul of that model.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from benchmarks.common import machine_info, write_json
from studio.core.export.measure import latency_ms
from studio.core.methods.quantization.ort import quantize_onnx


def matmul_file(k: int, n: int, tokens: int, path: Path) -> Path:
    weight = np.random.default_rng(0).standard_normal((k, n)).astype(np.float32) * 0.05
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="matmul")], "matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, tokens, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, tokens, n])],
        [numpy_helper.from_array(weight, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=576, help="input features")
    parser.add_argument("--n", type=int, default=49152, help="output features")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--block", type=int, default=32, help="MatMulNBits block size")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    figures: dict[str, object] = {"settings": {**vars(args), "json": str(args.json)}}
    with tempfile.TemporaryDirectory(prefix="nbits-") as scratch:
        work = Path(scratch)
        files = {"float32": matmul_file(args.k, args.n, args.tokens, work / "float32.onnx")}
        for bits in (4, 8):
            files[f"int{bits}"] = quantize_onnx(files["float32"], work / f"int{bits}.onnx",
                                                "nbits", bits=bits, block_size=args.block)
        inputs = np.random.default_rng(1).standard_normal(
            (1, args.tokens, args.k)).astype(np.float32)
        for threads in (1, 2):
            timed = latency_ms(files, {1: inputs}, repeats=args.repeats, threads=threads)
            figures[f"ms_threads_{threads}"] = {name: round(t[1], 1) for name, t in timed.items()}
            print(f"{threads} thread(s):", figures[f"ms_threads_{threads}"], flush=True)
    figures["machine"] = machine_info(onnxruntime=__import__("onnxruntime").__version__)
    if args.json:
        write_json(args.json, figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
