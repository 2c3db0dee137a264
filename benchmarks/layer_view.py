"""How long the layer view's statistics take on large layers (what the window computes in a
worker when a layer is selected):

    python -m benchmarks.layer_view [--json PATH]

Times :func:`studio.core.engine.layer_stats.layer_stats` on Linear layers of 1M, 16.7M and
33.5M weights with a 2:4 int4 plan and an unstructured 50% int8 plan; CPU seconds beside wall
seconds, since the machine may be shared.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import nn

from benchmarks.common import machine_info, write_json
from studio.core.engine.layer_stats import layer_stats
from studio.core.graph.torch_tree import build_torch_tree
from studio.core.plan import LayerSpec, Plan

SHAPES = ((1024, 1024), (4096, 4096), (8192, 4096))
PLANS = {"2:4 int4": LayerSpec(sparsity=0.5, granularity="2:4", weight_bits="int4"),
         "50% int8": LayerSpec(sparsity=0.5, weight_bits="int8")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    rows = []
    for out_features, in_features in SHAPES:
        model = nn.Sequential(nn.Linear(in_features, out_features))
        tree = build_torch_tree(model, None, "layer")
        for label, spec in PLANS.items():
            resolved = Plan({"0": spec}).resolve(tree)[1]
            wall, cpu = time.perf_counter(), time.process_time()
            stats = layer_stats(model, "0", resolved)
            row = {"weights": out_features * in_features, "plan": label,
                   "cpu_s": round(time.process_time() - cpu, 2),
                   "wall_s": round(time.perf_counter() - wall, 2),
                   "sqnr_db": round(stats.sqnr_db, 1)}
            rows.append(row)
            print(f"{row['weights']:>12,} weights  {label:<9} {row['cpu_s']:6.2f} CPU-s  "
                  f"{row['wall_s']:6.2f} s wall  SQNR {row['sqnr_db']} dB", flush=True)
    if args.json:
        write_json(args.json, {"machine": machine_info(), "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
