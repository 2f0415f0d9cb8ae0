"""Embedding lookups from a compressed table: the row decoder kernel (zipgen.runtime.
decode_rows_cuda, what ZipEmbedding runs on a GPU) against F.embedding on the BF16 table and
against the gathers of zipgen.format.rows.decode_rows (what ZipEmbedding ran before), in CUDA
graphs, medians.

    python benchmarks/embedding.py [--rows 128256] [--dim 4096] [--tokens 1,8,32,128] [--json F]

The table is N(0, 0.010) in BF16 (the 8B e2e model's embedding sigma); each timed graph holds 16
lookups of different random ids (rows scattered over the table, as tokens are).
"""
from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

import zipgen
from zipgen.format.rows import decode_rows, entry_keys
from zipgen.runtime import decode_rows_cuda

from _timing import graph_time_us, header, warm_up_gpu

LOOKUPS = 16  # per graph, each with its own ids


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=128256)
    ap.add_argument("--dim", type=int, default=4096)
    ap.add_argument("--tokens", default="1,8,32,128")
    ap.add_argument("--json")
    args = ap.parse_args()
    print(header("embedding lookups from a compressed table (benchmarks/embedding.py)"))
    g = torch.Generator(device="cuda").manual_seed(0)
    table = (torch.randn(args.rows, args.dim, device="cuda", generator=g) * 0.010).to(torch.bfloat16)
    ct = zipgen.compress(table)
    keys = entry_keys(ct)
    warm_up_gpu()
    rows = []
    print(f"# table {args.rows} x {args.dim}: {ct.nbytes / 2**20:.0f} MiB compressed, "
          f"{table.numel() * 2 / 2**20:.0f} MiB in BF16")
    print("| tokens | F.embedding (BF16) µs | row decoder kernel µs | gathers (decode_rows) µs |")
    print("|---|---|---|---|")
    for tokens in (int(t) for t in args.tokens.split(",")):
        ids = [torch.randint(0, args.rows, (tokens,), device="cuda", generator=g)
               for _ in range(LOOKUPS)]
        for i in ids:  # the kernel is bit-exact here too before it is timed
            assert torch.equal(decode_rows_cuda(ct, i).view(torch.int16),
                               F.embedding(i, table).view(torch.int16))
        times = {
            "bf16": graph_time_us([lambda i=i: F.embedding(i, table) for i in ids]),
            "kernel": graph_time_us([lambda i=i: decode_rows_cuda(ct, i) for i in ids]),
            "gathers": graph_time_us([lambda i=i: decode_rows(ct, i, keys) for i in ids]),
        }
        rows.append({"tokens": tokens, **times})
        print(f"| {tokens} | {times['bf16']:.1f} | {times['kernel']:.1f} | {times['gathers']:.1f} |",
              flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
