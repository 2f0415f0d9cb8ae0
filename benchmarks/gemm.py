"""ZipGEMM against cuBLAS (F.linear on the original BF16 weights), same process, same run.

    python benchmarks/gemm.py [--json out.json] [--models 8b,70b] [--ms 1,8,16,32,64,128,256]

Both sides are captured in CUDA graphs (a Python launch alone doubles a small layer's time)
with their weights rotated past L2; times are medians of graph replays timed with CUDA events.
Weights are synthetic N(0, 0.015) BF16 (exponent statistics like trained checkpoints, coverage
~97 %); activations N(0, 1). For every cell the fused kernel, the decode+cuBLAS path and the
automatic choice of zipgen.runtime.gemm are timed.
"""
from __future__ import annotations

import argparse
import json
import math

import torch
import torch.nn.functional as F

import zipgen
from zipgen.runtime import FUSED_MAX_M, gemm
from zipgen.tune import dispatch

from _timing import copy_bandwidth_tbs, graph_time_us, header, rotation_count

LAYERS = {
    "8b": [("8B qkv", 6144, 4096), ("8B o", 4096, 4096), ("8B gate_up", 28672, 4096),
           ("8B down", 4096, 14336)],
    "70b": [("70B qkv", 10240, 8192), ("70B o", 8192, 8192), ("70B gate_up", 57344, 8192),
            ("70B down", 8192, 28672)],
}


def rotated_layer(n, k, seed):
    """Copies of one layer (BF16 and compressed) enough to exceed L2 several times."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    first = (torch.randn(n, k, device="cuda", generator=g) * 0.015).to(torch.bfloat16)
    ct = zipgen.compress(first)
    copies = rotation_count(n * k * 2 + ct.nbytes)
    ws, cts = [first], [ct]
    for _ in range(copies - 1):
        w = (torch.randn(n, k, device="cuda", generator=g) * 0.015).to(torch.bfloat16)
        ws.append(w)
        cts.append(zipgen.compress(w))
    return ws, cts


def relative_error(y, x, w) -> float:
    """|y - x @ w^T| / |x @ w^T|, the reference in FP32."""
    ref = x.float() @ w.float().t()
    return float((y.float() - ref).norm() / ref.norm())


def check(x, w, ct):
    for fused in (True, False):
        rel = relative_error(gemm(x, ct, fused=fused), x, w)
        assert rel < 5e-3, f"wrong result (fused={fused}): relative error {rel:.3g}"


def checked_fused_time_us(cfg, xs, ws, cts) -> float:
    """The fused kernel with `cfg` over the rotated weights: its result on the first checked
    against FP32, then its CUDA-graph time (benchmarks/gemm_sweep.py, wgmma_ab.py)."""
    rel = relative_error(gemm(xs[0], cts[0], config=cfg, fused=True), xs[0], ws[0])
    assert rel < 5e-3, f"{cfg.describe()}: relative error {rel:.3g}"
    return graph_time_us([lambda x=x, c=c: gemm(x, c, config=cfg, fused=True)
                          for x, c in zip(xs, cts)])


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json")
    ap.add_argument("--models", default="8b,70b")
    ap.add_argument("--ms", default="1,8,16,32,64,128,256")
    args = ap.parse_args()
    ms = [int(v) for v in args.ms.split(",")]
    print(header("ZipGEMM vs cuBLAS (benchmarks/gemm.py)"))
    copy = copy_bandwidth_tbs()
    print(f"# device-to-device copy: {copy:.2f} TB/s (read + write); zipgen = the runtime's "
          f"choice: fused up to the tuned switch point of the shape (default M <= {FUSED_MAX_M})")
    print("| layer | M | cuBLAS µs | zipgen µs | speedup | fused µs | decode+cuBLAS µs "
          "| fused stream TB/s | % of copy |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = []
    for model in args.models.split(","):
        for li, (name, n, k) in enumerate(LAYERS[model]):
            ws, cts = rotated_layer(n, k, seed=li)
            comp = cts[0].nbytes
            for m in ms:
                xs = [torch.randn(m, k, device="cuda").to(torch.bfloat16) for _ in ws]
                check(xs[0], ws[0], cts[0])
                t_cublas = graph_time_us([lambda x=x, w=w: F.linear(x, w) for x, w in zip(xs, ws)])
                t_fused = graph_time_us([lambda x=x, c=c: gemm(x, c, fused=True)
                                         for x, c in zip(xs, cts)]) if m <= 256 else math.nan
                t_decode = graph_time_us([lambda x=x, c=c: gemm(x, c, fused=False)
                                          for x, c in zip(xs, cts)])
                # the runtime's choice: the tuned switch point of the shape, else FUSED_MAX_M
                switch = dispatch.fused_max_m(torch.device("cuda"), n, k, FUSED_MAX_M)
                t_auto = t_fused if m <= switch else t_decode
                stream_tbs = comp / (t_fused * 1e-6) / 1e12
                r = dict(layer=name, n=n, k=k, m=m, cublas_us=t_cublas, zipgen_us=t_auto,
                         speedup=t_cublas / t_auto, fused_us=t_fused, decode_cublas_us=t_decode,
                         fused_stream_tbs=stream_tbs, copy_share=stream_tbs / copy,
                         compressed_bytes=comp, bf16_bytes=n * k * 2)
                rows.append(r)
                print(f"| {name} | {m} | {t_cublas:.1f} | {t_auto:.1f} | {r['speedup']:.2f}x | "
                      f"{t_fused:.1f} | {t_decode:.1f} | {stream_tbs:.2f} | "
                      f"{100 * stream_tbs / copy:.0f}% |", flush=True)
            del ws, cts
            torch.cuda.empty_cache()
    small = [r["speedup"] for r in rows if r["m"] in (1, 8, 16, 32)]
    if small:
        geo = math.exp(sum(map(math.log, small)) / len(small))
        print(f"# geometric-mean speedup at M in (1, 8, 16, 32): {geo:.3f}x over {len(small)} cells; "
              f"min {min(small):.2f}x")
    for m in (64, 128):
        cells = [r["speedup"] for r in rows if r["m"] == m]
        if cells:
            print(f"# M = {m}: min speedup {min(cells):.2f}x, "
                  f"geomean {math.exp(sum(map(math.log, cells)) / len(cells)):.3f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(copy_tbs=copy, fused_max_m=FUSED_MAX_M, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
