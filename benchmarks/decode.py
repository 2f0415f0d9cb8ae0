"""Throughput of the generated TCA-TBE decoder on the GPU, against the copy bandwidth and the
time cuBLAS needs to read the same BF16 weights at M = 1, all measured in one run.

    python benchmarks/decode.py [--json out.json] [--quick]

Weights are synthetic: N(0, 0.02) (attention) / N(0, 0.015) (MLP) cast to BF16, whose exponent
statistics resemble trained checkpoints (coverage ~97 %). Every operand set is rotated past L2;
each timing is the median of CUDA-graph replays timed with CUDA events.
"""
from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

import zipgen
from zipgen.codegen import DecodeConfig
from zipgen.runtime import decompress_cuda

from _timing import copy_bandwidth_tbs, graph_time_us, header, rotation_count

MATRICES = [("4096x4096", 4096, 4096, 0.02), ("4096x14336", 4096, 14336, 0.015),
            ("14336x4096", 14336, 4096, 0.015), ("28672x4096", 28672, 4096, 0.015),
            ("8192x8192", 8192, 8192, 0.02), ("28672x8192", 28672, 8192, 0.015)]
LLAMA8B_BLOCK = [("q", 4096, 4096, 0.02), ("k", 1024, 4096, 0.02), ("v", 1024, 4096, 0.02),
                 ("o", 4096, 4096, 0.02), ("gate", 14336, 4096, 0.015),
                 ("up", 14336, 4096, 0.015), ("down", 4096, 14336, 0.015)]


def weights(n, k, sigma, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return (torch.randn(n, k, device="cuda", generator=g) * sigma).to(torch.bfloat16)


def measure(layers, config, seed=0):
    """Time decoding and a cuBLAS M=1 GEMM over a list of (name, N, K, sigma), rotated."""
    def layer_set(copy):
        ws = [weights(n, k, s, seed + 1000 * copy + i) for i, (_, n, k, s) in enumerate(layers)]
        return ws, [zipgen.compress(x) for x in ws]

    sets = [layer_set(0)]
    bf16_bytes = sum(x.numel() * 2 for x in sets[0][0])
    comp_bytes = sum(c.nbytes for c in sets[0][1])
    copies = rotation_count(2 * bf16_bytes + comp_bytes)  # weights + decoded output + streams
    sets += [layer_set(j) for j in range(1, copies)]
    outs = [[torch.empty_like(x) for x in ws] for ws, _ in sets]
    for (ws, cs), os_ in zip(sets, outs):  # correctness first, on poisoned outputs
        for x, c, o in zip(ws, cs, os_):
            o.fill_(float("nan"))
            decompress_cuda(c, out=o, config=config)
            assert torch.equal(o.view(torch.int16), x.view(torch.int16)), "decoder is not bit-exact"
    w = sets[0][0]
    xs = [torch.randn(1, x.shape[1], device="cuda", dtype=torch.bfloat16) for x in w]

    def decode_calls():
        return [lambda c=c, o=o: decompress_cuda(c, out=o, config=config)
                for (_, cs), os_ in zip(sets, outs) for c, o in zip(cs, os_)]

    def cublas_calls():
        return [lambda ws=ws, i=i: F.linear(xs[i], ws[i]) for ws, _ in sets for i in range(len(ws))]

    per_set = len(layers)
    t_decode = graph_time_us(decode_calls()) * per_set  # per set of layers
    t_cublas = graph_time_us(cublas_calls()) * per_set
    return dict(bf16_bytes=bf16_bytes, comp_bytes=comp_bytes, decode_us=t_decode,
                cublas_m1_us=t_cublas, copies=copies,
                bits_per_weight=8 * comp_bytes / (bf16_bytes / 2))


def codec_speed(layers):
    """The torch codec (compress, reference decompress) on the GPU, GB/s of BF16."""
    w = [weights(n, k, s, 100 + i) for i, (_, n, k, s) in enumerate(layers)]
    zipgen.compress(w[0])
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    cts = [zipgen.compress(x) for x in w]
    torch.cuda.synchronize()
    t1 = time.perf_counter()
    from zipgen.format import decompress_reference
    for c in cts:
        decompress_reference(c)
    torch.cuda.synchronize()
    t2 = time.perf_counter()
    total = sum(x.numel() * 2 for x in w)
    return total / (t1 - t0) / 1e9, total / (t2 - t1) / 1e9


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json", help="write the raw results here")
    ap.add_argument("--warps", type=int, default=DecodeConfig().warps_per_cta)
    ap.add_argument("--strips", type=int, default=DecodeConfig().strips_per_warp)
    ap.add_argument("--quick", action="store_true", help="two matrices only")
    ap.add_argument("--sweep", action="store_true",
                    help="also time every valid decoder config on 14336x4096")
    args = ap.parse_args()
    config = DecodeConfig(args.warps, args.strips)
    print(header("zipgen decoder benchmark (benchmarks/decode.py)"))
    print(f"# decoder config: {config.describe()}")
    copy = copy_bandwidth_tbs()
    print(f"# device-to-device copy: {copy:.2f} TB/s (read + write)")
    rows = []
    cases = [[m] for m in (MATRICES[:2] if args.quick else MATRICES)] + [LLAMA8B_BLOCK]
    print("| weights | BF16 MB | bits/w | decode µs | BF16 out TB/s | moved TB/s | % of copy "
          "| cuBLAS M=1 µs | decode / cuBLAS |")
    print("|---|---|---|---|---|---|---|---|---|")
    for layers in cases:
        name = layers[0][0] if len(layers) == 1 else "Llama-3.1-8B block (7 matrices)"
        r = measure(layers, config)
        out_tbs = r["bf16_bytes"] / (r["decode_us"] * 1e-6) / 1e12
        moved = (r["bf16_bytes"] + r["comp_bytes"]) / (r["decode_us"] * 1e-6) / 1e12
        r.update(name=name, out_tbs=out_tbs, moved_tbs=moved, copy_share=moved / copy)
        rows.append(r)
        print(f"| {name} | {r['bf16_bytes'] / 1e6:.0f} | {r['bits_per_weight']:.2f} | "
              f"{r['decode_us']:.1f} | {out_tbs:.2f} | {moved:.2f} | {100 * moved / copy:.0f}% | "
              f"{r['cublas_m1_us']:.1f} | {r['decode_us'] / r['cublas_m1_us']:.2f}x |", flush=True)
    if args.sweep:
        print("\n| decoder config (14336x4096) | decode µs | moved TB/s | % of copy |")
        print("|---|---|---|---|")
        for warps in (2, 4, 8, 16):
            for strips in (1, 2, 4, 8):
                cfg = DecodeConfig(warps, strips)
                r = measure([MATRICES[2]], cfg)
                moved = (r["bf16_bytes"] + r["comp_bytes"]) / (r["decode_us"] * 1e-6) / 1e12
                print(f"| {cfg.describe()} | {r['decode_us']:.1f} | {moved:.2f} | "
                      f"{100 * moved / copy:.0f}% |", flush=True)
    copy_end = copy_bandwidth_tbs()
    print(f"# device-to-device copy at the end of the run: {copy_end:.2f} TB/s")
    comp_gbs, dec_gbs = codec_speed(LLAMA8B_BLOCK)
    print(f"# torch codec on this GPU, Llama-3.1-8B block: compress {comp_gbs:.1f} GB/s, "
          f"reference decompress {dec_gbs:.1f} GB/s of BF16 "
          f"(a 16 GB checkpoint: ~{16 / comp_gbs:.0f} s of compression)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(copy_tbs=copy, config=config.as_dict(), rows=rows,
                           codec_gpu_gbs=dict(compress=comp_gbs, decompress=dec_gbs)), f, indent=1)


if __name__ == "__main__":
    main()
