"""Time every valid fused-kernel configuration on a few layers (a manual tuning run).

    python benchmarks/gemm_sweep.py [--layers "8B o,8B gate_up"] [--ms 1,16] [--stage-x 1]
                                    [--row-strips 1,2] [--depths 1,2]

Same method as benchmarks/gemm.py (CUDA graphs, weights rotated past L2, medians, cuBLAS from
the same run); prints the configurations fastest first per (layer, M).
"""
from __future__ import annotations

import argparse
import itertools
import json

import torch
import torch.nn.functional as F

from zipgen.codegen import ARCHES, ZipGemmConfig
from zipgen.runtime import device_arch

from _timing import graph_time_us, header, warm_up_gpu
from gemm import LAYERS, checked_fused_time_us, rotated_layer


def token_tiles_for(m: int) -> list[int]:
    return [t for t in (1, 2, 4, 8) if 8 * t >= m][:2] or [8]


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--layers", default="8B o,8B gate_up,8B down")
    ap.add_argument("--ms", default="1,16")
    ap.add_argument("--stage-x", choices=("both", "0", "1"), default="both",
                    help="only direct (0) or only staged (1) activation configurations")
    ap.add_argument("--row-strips", default="1,2", help="strip rows per warp to try")
    ap.add_argument("--depths", default="1,2", help="load depths to try")
    ap.add_argument("--json")
    args = ap.parse_args()
    print(header("fused ZipGEMM configuration sweep (benchmarks/gemm_sweep.py)"))
    traits = ARCHES[device_arch(torch.device("cuda"))]
    table = {name: (n, k) for model in LAYERS.values() for name, n, k in model}
    stages = {"both": (False, True), "0": (False,), "1": (True,)}[args.stage_x]
    warm_up_gpu()
    results = []
    for name in args.layers.split(","):
        n, k = table[name]
        ws, cts = rotated_layer(n, k, seed=3)
        for m in map(int, args.ms.split(",")):
            xs = [torch.randn(m, k, device="cuda").to(torch.bfloat16) for _ in ws]
            t_cublas = graph_time_us([lambda x=x, w=w: F.linear(x, w) for x, w in zip(xs, ws)])
            rows = []
            for warps, tiles, depth, groups, stage, strips in itertools.product(
                    (4, 8, 16), token_tiles_for(m), map(int, args.depths.split(",")), (1, 2, 4),
                    stages, map(int, args.row_strips.split(","))):
                cfg = ZipGemmConfig(warps, tiles, depth, groups, stage, strips)
                if cfg.problems(traits):
                    continue
                t = checked_fused_time_us(cfg, xs, ws, cts)
                rows.append((t, cfg))
                results.append(dict(layer=name, m=m, config=cfg.as_dict(), us=t, cublas_us=t_cublas))
            rows.sort(key=lambda r: r[0])
            print(f"\n## {name} ({n}x{k}), M = {m}: cuBLAS {t_cublas:.1f} µs")
            print("| config | µs | speedup |\n|---|---|---|")
            for t, cfg in rows[:8]:
                print(f"| {cfg.describe()} | {t:.1f} | {t_cublas / t:.2f}x |")
            for strips in sorted({c.row_strips for _, c in rows}):  # the best of each
                t, cfg = next(r for r in rows if r[1].row_strips == strips)
                print(f"| (best, row_strips={strips}) {cfg.describe()} | {t:.1f} | "
                      f"{t_cublas / t:.2f}x |")
            print(f"| (slowest) {rows[-1][1].describe()} | {rows[-1][0]:.1f} | "
                  f"{t_cublas / rows[-1][0]:.2f}x |", flush=True)
        del ws, cts
        torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
