"""A GEMM's fixed cost: time against bytes over a grid of shapes, one kernel configuration, and the
least-squares line through them. Its intercept is what a launch costs before its bytes flow
(launch, ramp-up, epilogue, tail); its slope the streaming rate. zipgen's fused kernel and cuBLAS
(`F.linear` on the BF16 weights), same process, CUDA graphs, medians; weights rotated past L2
("cold") and one weight set reused ("hot", L2-resident where it fits).

    python benchmarks/fixed_cost.py [--m 1] [--ns 1024,2048,4096,6144,8192] [--ks 2048,4096,8192,14336]
        [--config "16 1 1 1 0 1 0 1 1 0 1"] [--json out.json]

--config: the ZipGemmConfig fields in declaration order, as sass_report.py takes them (default:
the paired M = 1 kernel the database picks for the 8B o layer, 16 warps, one row group, depth 1).
The small layers of a decode step (8B q / k / v and o at M = 1) stream at 53-59 % of the copy
rate (BENCHMARKS.md); this says how much of their time is the intercept, and whether cuBLAS pays
the same.
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import torch
import torch.nn.functional as F

from zipgen.codegen import ZipGemmConfig

from _timing import graph_time_us, header, warm_up_gpu
from gemm import checked_fused_time_us, rotated_layer

DEFAULT_CONFIG = "16 1 1 1 0 1 0 1 1 0 1"


def fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """(intercept µs, rate TB/s) of the least-squares line time = a + bytes / rate."""
    b, t = (np.array(v, dtype=float) for v in zip(*points))
    slope, intercept = np.polyfit(b, t, 1)  # µs per byte
    return float(intercept), float(1e-6 / slope) if slope > 0 else float("inf")  # bytes/µs -> TB/s


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--m", type=int, default=1)
    ap.add_argument("--ns", default="1024,2048,4096,6144,8192")
    ap.add_argument("--ks", default="2048,4096,8192,14336")
    ap.add_argument("--config", default=DEFAULT_CONFIG)
    ap.add_argument("--json")
    args = ap.parse_args()
    cfg = ZipGemmConfig.from_numbers(args.config.split())
    print(header("a GEMM's fixed cost: time against bytes (benchmarks/fixed_cost.py)"))
    print(f"# M = {args.m}; zipgen config: {cfg.describe()}")
    warm_up_gpu()
    rows = []
    print("| N | K | compressed MB | zipgen cold µs | zipgen hot µs | BF16 MB | cuBLAS cold µs "
          "| cuBLAS hot µs |")
    print("|---|---|---|---|---|---|---|---|")
    for n in (int(v) for v in args.ns.split(",")):
        for k in (int(v) for v in args.ks.split(",")):
            ws, cts = rotated_layer(n, k, seed=n + k)
            xs = [torch.randn(args.m, k, device="cuda").to(torch.bfloat16) for _ in ws]
            row = {"n": n, "k": k, "compressed_bytes": cts[0].nbytes, "bf16_bytes": 2 * n * k,
                   "zipgen_cold": checked_fused_time_us(cfg, xs, ws, cts),
                   "zipgen_hot": checked_fused_time_us(cfg, xs[:1] * len(ws), ws[:1] * len(ws),
                                                       cts[:1] * len(ws)),
                   "cublas_cold": graph_time_us([lambda x=x, w=w: F.linear(x, w)
                                                 for x, w in zip(xs, ws)]),
                   "cublas_hot": graph_time_us([lambda x=xs[0], w=ws[0]: F.linear(x, w)] * len(ws))}
            rows.append(row)
            print(f"| {n} | {k} | {row['compressed_bytes'] / 1e6:.1f} | {row['zipgen_cold']:.1f} "
                  f"| {row['zipgen_hot']:.1f} | {row['bf16_bytes'] / 1e6:.1f} "
                  f"| {row['cublas_cold']:.1f} | {row['cublas_hot']:.1f} |", flush=True)
            del ws, cts, xs
            torch.cuda.empty_cache()
    print("\n# least-squares lines (hot: the shapes whose weights fit in half the L2)")
    print("| kernel | weights | intercept µs | streaming rate TB/s |")
    print("|---|---|---|---|")
    lines = {}
    # hot: only the shapes whose weights fit in half the L2, so that the line is one regime
    half_l2 = torch.cuda.get_device_properties(0).L2_cache_size // 2
    for name, size in (("zipgen", "compressed_bytes"), ("cublas", "bf16_bytes")):
        for where in ("cold", "hot"):
            points = [(r[size], r[f"{name}_{where}"]) for r in rows
                      if where == "cold" or r[size] <= half_l2]
            if len(points) < 2:
                continue
            a, rate = fit(points)
            lines[f"{name}_{where}"] = {"intercept_us": a, "rate_tbs": rate}
            print(f"| {name} | {where} | {a:.2f} | {rate:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "config": cfg.as_dict(), "rows": rows, "fits": lines},
                      f, indent=1)


if __name__ == "__main__":
    main()
