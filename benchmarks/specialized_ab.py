"""The warp-specialised kernel (ZipGemmConfig.specialized) against the tuning database's
winners: per layer and M, the winner, every specialised configuration of a small grid, and
cuBLAS, timed in one process.

    python benchmarks/specialized_ab.py --db tuning_db [--models 8b,70b] [--ms 16,32,64,128]
                                        [--warps 8,12,16,20] [--depths 1,2] [--splits 1,2,4]
                                        [--json out.json]

Same method as benchmarks/gemm.py (CUDA graphs, weights rotated past L2, medians; every config
is checked against FP32 first). The database's records are read whatever kernel headers they
were measured with: the winners' kernels must be unchanged in this tree for the comparison to
mean anything (the specialised kernel has its own header).
"""
from __future__ import annotations

import argparse
import itertools
import json

from zipgen.codegen import ZipGemmConfig, arch_traits
from zipgen.tune import db

from _timing import header, warm_up_gpu
from gemm import checked_fused_time_us
from winners_ab import winner_cells


def specialized_grid(m: int, warps, depths, splits):
    """Specialised configurations for M tokens: the smallest token tile count that covers M in
    one CTA along M (up to 128 tokens), with each warp count, load depth and split-K."""
    tiles = next(t for t in (1, 2, 4, 8, 16) if 8 * t >= min(m, 128))
    for w, d, z in itertools.product(warps, depths, splits):
        cfg = ZipGemmConfig(w, tiles, d, 4, True, 1, True, 1, z, specialized=True)
        if not cfg.problems(arch_traits("sm_90a")):
            yield cfg


def variant_table(args, title: str, label: str, grid):
    """Per winner cell (winners_ab.winner_cells): the winner, every configuration grid(m,
    winner) yields, and cuBLAS, timed in one process, as a markdown table (and JSON rows)."""
    index = db.winners(db.read_records([args.db]))  # every record: headers are not checked
    print(header(title))
    print(f"| layer | M | cuBLAS µs | winner µs | best {label} µs | {label} / winner "
          f"| vs cuBLAS (winner → best) | best {label} config | all {label} µs |")
    print("|---" * 9 + "|")
    warm_up_gpu()
    rows = []
    for layer, n, k, m, cfg, source, ws, cts, xs, t_cublas in winner_cells(index, args.models,
                                                                           args.ms):
        t_winner = checked_fused_time_us(cfg, xs, ws, cts)
        times = {alt: checked_fused_time_us(alt, xs, ws, cts) for alt in grid(m, cfg)}
        if not times:
            continue
        best = min(times, key=times.get)
        t_best = min(t_winner, times[best])
        rows.append(dict(layer=layer, n=n, k=k, m=m, cublas_us=t_cublas,
                         winner=cfg.as_dict(), winner_source=source, winner_us=t_winner,
                         variants=[dict(config=c.as_dict(), us=t) for c, t in times.items()]))
        alls = ", ".join(f"{short(c)} {t:.1f}" for c, t in times.items())
        print(f"| {layer} | {m} | {t_cublas:.1f} | {t_winner:.1f} | {times[best]:.1f} | "
              f"{t_winner / times[best]:.3f} | {t_cublas / t_winner:.3f} → "
              f"{t_cublas / t_best:.3f} | {short(best)} | {alls} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


def short(cfg) -> str:
    """w16 t32 d1 k2 rg4 (+ ws / p2 for the specialised / paired kernels)."""
    return (f"w{cfg.warps_per_cta} t{cfg.tokens} d{cfg.depth} k{cfg.k_splits} rg{cfg.row_groups}"
            + (" ws" if cfg.specialized else "") + (" p2" if cfg.strip_pairs else "")
            + (" sx" if cfg.stage_x and cfg.strip_pairs else ""))


def variant_parser(doc: str, ms: str) -> argparse.ArgumentParser:
    """The options every variant table takes: --db, --models, --ms, --json."""
    ap = argparse.ArgumentParser(description=doc)
    ap.add_argument("--db", required=True, help="tuning database folder to take winners from")
    ap.add_argument("--models", default="8b,70b")
    ap.add_argument("--ms", default=ms)
    ap.add_argument("--json")
    return ap


def main():
    ap = variant_parser(__doc__, "16,32,64,128")
    ap.add_argument("--warps", default="8,12,16,20")
    ap.add_argument("--depths", default="1,2")
    ap.add_argument("--splits", default="1,2,4")
    args = ap.parse_args()
    warps = [int(v) for v in args.warps.split(",")]
    depths = [int(v) for v in args.depths.split(",")]
    splits = [int(v) for v in args.splits.split(",")]
    variant_table(args, "the warp-specialised kernel against the database's winners "
                  "(benchmarks/specialized_ab.py)", "specialised",
                  lambda m, winner: specialized_grid(m, warps, depths, splits))


if __name__ == "__main__":
    main()
