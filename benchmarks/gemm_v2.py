"""The proposed format version 2 against version 1 in the fused kernel, and both against
cuBLAS, same process, same run.

    python benchmarks/gemm_v2.py [--json out.json] [--models 8b,70b] [--ms 1,8,16,32]

Per cell the same weights in both formats, the same kernel configuration (the runtime's choice
for version 1: the tuned winner, else fused_config) for both, CUDA graphs, weights rotated past
L2, medians; cuBLAS = F.linear on the BF16 weights.
"""
from __future__ import annotations

import argparse
import json
import math

import torch
import torch.nn.functional as F

import zipgen
from zipgen.format.codec_v2 import compress_v2
from zipgen.runtime import fused_config, gemm
from zipgen.runtime.gemm_v2 import gemm_v2
from zipgen.tune import dispatch

from _timing import graph_time_us, header, rotation_count, warm_up_gpu
from gemm import LAYERS


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json")
    ap.add_argument("--models", default="8b,70b")
    ap.add_argument("--ms", default="1,8,16,32")
    args = ap.parse_args()
    print(header("format v2 vs v1 in the fused kernel (benchmarks/gemm_v2.py)"))
    print("| layer | M | config | cuBLAS µs | v1 µs | v2 µs | v1 speedup | v2 speedup | v2 / v1 "
          "| bits/weight v1 / v2 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    warm_up_gpu()
    rows = []
    for model in args.models.split(","):
        for li, (name, n, k) in enumerate(LAYERS[model]):
            g = torch.Generator(device="cuda").manual_seed(li)
            ws = [(torch.randn(n, k, device="cuda", generator=g) * 0.015).to(torch.bfloat16)
                  for _ in range(rotation_count(n * k * 2))]
            v1s = [zipgen.compress(w) for w in ws]
            v2s = [compress_v2(w) for w in ws]
            bits = (8 * v1s[0].nbytes / (n * k), 8 * v2s[0].nbytes / (n * k))
            for m in map(int, args.ms.split(",")):
                xs = [torch.randn(m, k, device="cuda").to(torch.bfloat16) for _ in ws]
                cfg = dispatch.choose("zipgemm", torch.device("cuda"), n, k, m, fused_config)
                ref = xs[0].float() @ ws[0].float().t()
                for y in (gemm(xs[0], v1s[0], config=cfg, fused=True), gemm_v2(xs[0], v2s[0], config=cfg)):
                    assert float((y.float() - ref).norm() / ref.norm()) < 5e-3
                t_cublas = graph_time_us([lambda x=x, w=w: F.linear(x, w) for x, w in zip(xs, ws)])
                t1 = graph_time_us([lambda x=x, c=c: gemm(x, c, config=cfg, fused=True)
                                    for x, c in zip(xs, v1s)])
                t2 = graph_time_us([lambda x=x, c=c: gemm_v2(x, c, config=cfg) for x, c in zip(xs, v2s)])
                rows.append(dict(layer=name, m=m, config=cfg.as_dict(), cublas_us=t_cublas,
                                 v1_us=t1, v2_us=t2, bits_v1=bits[0], bits_v2=bits[1]))
                print(f"| {name} | {m} | {cfg.describe()} | {t_cublas:.1f} | {t1:.1f} | {t2:.1f} | "
                      f"{t_cublas / t1:.2f}x | {t_cublas / t2:.2f}x | {t1 / t2:.3f} | "
                      f"{bits[0]:.2f} / {bits[1]:.2f} |", flush=True)
            del ws, v1s, v2s
            torch.cuda.empty_cache()
    for key in ("v1_us", "v2_us"):
        geo = math.exp(sum(math.log(r["cublas_us"] / r[key]) for r in rows) / len(rows))
        print(f"# {key[:2]}: geometric-mean speedup over cuBLAS {geo:.3f}x over {len(rows)} cells")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
