"""Same configurations, two kernel trees: the tuning database's winners for the benchmark
layers, timed in this checkout, whichever kernel headers the records were measured with.

    python benchmarks/winners_ab.py --db tuning_db [--ms 1,8,16,32,64] [--json out.json]
                                    [--compare other.json] [--vary FIELD=V1,V2]

Run it in a checkout before a kernel change (--json before.json), then after it with
--compare before.json on the same GPU, in the same call: the table gives both times of each
cell's configuration and their ratio, which isolates the change from any re-tuning. Same
method as benchmarks/gemm.py (CUDA graphs, weights rotated past L2, medians; every config is
checked against FP32 first); cuBLAS is timed alongside as the reference.
"""
from __future__ import annotations

import argparse
import dataclasses
import json

import torch
import torch.nn.functional as F

from zipgen.codegen import arch_traits
from zipgen.runtime import fused_config
from zipgen.tune import db, dispatch

from _timing import graph_time_us, header, warm_up_gpu
from gemm import LAYERS, checked_fused_time_us, rotated_layer


def winner_cells(index, models: str, ms: str):
    """Per benchmark layer (rotated copies) and M: (layer, n, k, m, the database's winner or
    the default, where it came from, the rotated BF16 and compressed weights, activations per
    copy, cuBLAS's time in µs), each layer's copies freed after its last M."""
    name = torch.cuda.get_device_name()
    arch = "sm_%d%d" % torch.cuda.get_device_capability()
    for model in models.split(","):
        for li, (layer, n, k) in enumerate(LAYERS[model]):
            ws, cts = rotated_layer(n, k, seed=li)
            for m in map(int, ms.split(",")):
                cfg, source = dispatch.lookup("zipgemm", name, arch, n, k, m, index=index)
                xs = [torch.randn(m, k, device="cuda").to(torch.bfloat16) for _ in ws]
                t_cublas = graph_time_us([lambda x=x, w=w: F.linear(x, w) for x, w in zip(xs, ws)])
                yield layer, n, k, m, cfg or fused_config(m, n, k), source, ws, cts, xs, t_cublas
            del ws, cts
            torch.cuda.empty_cache()


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--db", required=True, help="tuning database folder to take winners from")
    ap.add_argument("--models", default="8b,70b")
    ap.add_argument("--ms", default="1,8,16,32,64")
    ap.add_argument("--json")
    ap.add_argument("--compare", help="this script's --json output from the other tree")
    ap.add_argument("--vary", metavar="FIELD=V1,V2",
                    help="also time each winner with FIELD set to each value (where valid on "
                         "this GPU), e.g. x_strips=2,4 or depth=2,3: a column each")
    args = ap.parse_args()
    vary_field, vary_values = None, []
    if args.vary:
        vary_field, _, values = args.vary.partition("=")
        vary_values = [int(v) for v in values.split(",")]
    index = db.winners(db.read_records([args.db]))  # every record: headers are not checked
    before = {}
    if args.compare:
        with open(args.compare) as f:
            before = {(r["layer"], r["m"]): r for r in json.load(f)}
    arch = "sm_%d%d" % torch.cuda.get_device_capability()
    print(header("database winners in this tree (benchmarks/winners_ab.py)"))
    varied = "".join(f" {vary_field}={v} µs |" for v in vary_values)
    print("| layer | M | config | cuBLAS µs | this tree µs | other tree µs | other / this |"
          + varied)
    print("|---" * (7 + len(vary_values)) + "|")
    warm_up_gpu()
    rows = []
    for layer, n, k, m, cfg, source, ws, cts, xs, t_cublas in winner_cells(index, args.models,
                                                                           args.ms):
        t = checked_fused_time_us(cfg, xs, ws, cts)
        variants = {}
        for v in vary_values:
            alt = dataclasses.replace(cfg, **{vary_field: v})
            if alt != cfg and not alt.problems(arch_traits(arch)):
                variants[v] = checked_fused_time_us(alt, xs, ws, cts)
        rows.append(dict(layer=layer, n=n, k=k, m=m, config=cfg.as_dict(), source=source,
                         cublas_us=t_cublas, us=t,
                         **({"varied": {vary_field: variants}} if vary_field else {})))
        other = before.get((layer, m))
        mine = cfg.as_dict()  # a field only one tree has (a new one) is not compared
        same = other is not None and all(other["config"][f] == mine[f]
                                         for f in other["config"].keys() & mine.keys())
        cells = (f"{other['us']:.1f} | {other['us'] / t:.3f}" if same
                 else "- | -")
        alts = "".join(f" {variants[v]:.1f} ({t / variants[v]:.3f}x) |" if v in variants
                       else " - |" for v in vary_values)
        print(f"| {layer} | {m} | {cfg.describe()} | {t_cublas:.1f} | {t:.1f} | {cells} |"
              + alts, flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
