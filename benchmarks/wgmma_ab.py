"""ZipGEMM's wgmma variant (ZipGemmConfig.wgmma, sm_90a) against the mma.sync kernel and
cuBLAS, same process, same run.

    python benchmarks/wgmma_ab.py [--json out.json] [--models 8b,70b] [--ms 8,16,32,64,128]

Per cell: cuBLAS (F.linear on the BF16 weights), the mma.sync kernel with the runtime's
configuration (the tuned winner, else fused_config), and the best of a small set of wgmma
configurations (warps 4 / 8 / 16 x depth 1 / 2, the token tiles M needs). Same method as
benchmarks/gemm.py: CUDA graphs, weights rotated past L2, medians; every variant is checked
against an FP32 reference first.
"""
from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

from zipgen.codegen import ZipGemmConfig, arch_traits
from zipgen.runtime import fused_config
from zipgen.tune import dispatch

from _timing import graph_time_us, header, warm_up_gpu
from gemm import LAYERS, checked_fused_time_us, rotated_layer


def wgmma_configs(m: int) -> list[ZipGemmConfig]:
    """Warps 4 / 8 / 16 x depth 1 / 2 at the token tiles that cover M (16 at most: 128 tokens);
    those that fit the GPU's shared memory."""
    tiles = next((t for t in (1, 2, 4, 8, 16) if 8 * t >= m), 16)
    configs = [ZipGemmConfig(w, tiles, d, 4, True, 1, True) for w in (4, 8, 16) for d in (1, 2)]
    return [c for c in configs if not c.problems(arch_traits("sm_90a"))]


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json")
    ap.add_argument("--models", default="8b,70b")
    ap.add_argument("--ms", default="8,16,32,64,128")
    args = ap.parse_args()
    print(header("wgmma variant vs mma.sync vs cuBLAS (benchmarks/wgmma_ab.py)"))
    print("| layer | M | cuBLAS µs | mma.sync µs | best wgmma µs | wgmma config | mma.sync "
          "speedup | wgmma speedup |")
    print("|---|---|---|---|---|---|---|---|")
    warm_up_gpu()
    rows = []
    device = torch.device("cuda")
    for model in args.models.split(","):
        for li, (name, n, k) in enumerate(LAYERS[model]):
            ws, cts = rotated_layer(n, k, seed=li)
            for m in map(int, args.ms.split(",")):
                xs = [torch.randn(m, k, device="cuda").to(torch.bfloat16) for _ in ws]
                t_cublas = graph_time_us([lambda x=x, w=w: F.linear(x, w) for x, w in zip(xs, ws)])
                # timed apart: the runtime's choice may be one of the wgmma candidates too
                mma_cfg = dispatch.choose("zipgemm", device, n, k, m, fused_config)
                t_mma = checked_fused_time_us(mma_cfg, xs, ws, cts)
                timed = {cfg: checked_fused_time_us(cfg, xs, ws, cts) for cfg in wgmma_configs(m)}
                best = min(timed, key=timed.get)
                rows.append(dict(layer=name, n=n, k=k, m=m, cublas_us=t_cublas, mma_us=t_mma,
                                 mma_config=mma_cfg.as_dict(), wgmma_us=timed[best],
                                 wgmma_config=best.as_dict(),
                                 wgmma_all={c.describe(): t for c, t in timed.items()}))
                print(f"| {name} | {m} | {t_cublas:.1f} | {t_mma:.1f} | {timed[best]:.1f} | "
                      f"w{best.warps_per_cta} t{best.token_tiles} d{best.depth} | "
                      f"{t_cublas / t_mma:.2f}x | {t_cublas / timed[best]:.2f}x |", flush=True)
            del ws, cts
            torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
