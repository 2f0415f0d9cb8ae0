"""Measure a grid of split-K configurations of the wgmma kernel through the tuner (each one
verified, then timed, and recorded in the tuning database like any trial), for shapes where
the 64-row tiles leave SMs idle, and print each study's winner before and after.

    ZIPGEN_TUNING_DB=DIR python benchmarks/split_sweep.py [--splits 5,6,7,8] [--ms 16,32]
        [--shapes 6144x4096,4096x4096,...] [--budget-s 150] [--specialized 12,16,20] [--pairs]
        [--stage-x] [--depths 1,2]

--specialized W,... measures the warp-specialised kernel instead (ZipGemmConfig.specialized:
W warps, load depth 1, each of --splits), to add its records to a database without a re-tune;
--pairs measures the paired-strip kernel (ZipGemmConfig.strip_pairs: 4 / 8 / 16 warps, 1 / 2 / 4
row groups, depth 1 / 2, at M <= 16), with --stage-x its staged-activation variant (sm_90, at
M <= 32).

The tuner's own search (`zipgen tune`) samples k_splits from zipgen.tune.space.VALUES; this
script tries values outside it, on chosen shapes, to decide whether they belong there.
"""
from __future__ import annotations

import argparse
import itertools
import time

from zipgen.codegen import ZipGemmConfig
from zipgen.tune import TuningDB, winners
from zipgen.tune.db import write_folder
from zipgen.tune.search import Options, Target, Tuner
from zipgen.tune.worker import Worker

from pairs_ab import paired_grid
from specialized_ab import specialized_grid

# the layers with the fewest 64-row tiles for 132 SMs (8B o and down: 64, qkv: 96, 70B qkv: 160)
SHAPES = {"8B qkv": (6144, 4096), "8B o": (4096, 4096), "8B down": (4096, 14336),
          "8B gate_up": (28672, 4096), "70B qkv": (10240, 8192)}


def grid(splits, m_bucket, specialized=(), pairs=False, stage_x=False, depths=(1, 2)):
    """wgmma configurations: warps 4 / 8 / 16, depth 1-2, the token tiles that cover M; or
    the specialized kernel's with `specialized` warps, depth 1; or (pairs) the paired-strip
    kernel's (stage_x: with staged activations)."""
    if pairs:
        if m_bucket <= (32 if stage_x else 16):
            yield from [c for c in paired_grid(m_bucket, ZipGemmConfig(), (4, 8, 16), (1, 2, 4),
                                               depths, (stage_x,)) if c.stage_x == stage_x]
        return
    tiles = [t for t in (1, 2, 4, 8, 16) if 8 * t >= m_bucket][:1]
    if specialized:
        if tiles:  # M <= 128, as for the wgmma grid
            yield from specialized_grid(m_bucket, specialized, (1,), splits)
        return
    for w, d, t, s in itertools.product((4, 8, 16), (1, 2), tiles, splits):
        yield ZipGemmConfig(warps_per_cta=w, token_tiles=t, depth=d, row_groups=4, stage_x=True,
                            row_strips=1, wgmma=True, x_strips=1, k_splits=s)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--splits", default="5,6,7,8")
    ap.add_argument("--ms", default="16,32")
    ap.add_argument("--shapes", default=",".join(f"{n}x{k}" for n, k in SHAPES.values()))
    ap.add_argument("--budget-s", type=float, default=150.0)
    ap.add_argument("--specialized", default="", help="warp counts of the specialized kernel")
    ap.add_argument("--pairs", action="store_true", help="the paired-strip kernel's grid")
    ap.add_argument("--stage-x", action="store_true", help="with --pairs: staged activations")
    ap.add_argument("--depths", default="1,2", help="with --pairs: load depths")
    args = ap.parse_args()
    splits = [int(v) for v in args.splits.split(",")]
    specialized = [int(v) for v in args.specialized.split(",") if v]
    ms = [int(v) for v in args.ms.split(",")]
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    names = {v: k for k, v in SHAPES.items()}
    db = TuningDB(write_folder())  # $ZIPGEN_TUNING_DB when set
    target = Target.current()
    tuner = Tuner(Options([(names.get(s, f"{s[0]}x{s[1]}"),) + s for s in shapes], tuple(ms),
                          ("zipgemm",)), target, db, measurer=Worker())
    key = lambda n, k, m: ("zipgemm", target.arch, target.device_name, n, k, m)  # noqa: E731
    before = winners(tuner.records, "zipgemm")
    started, rows = time.monotonic(), []
    try:
        for (n, k), m in itertools.product(shapes, ms):
            for cfg in grid(splits, m, specialized, args.pairs, args.stage_x,
                            [int(v) for v in args.depths.split(",")]):
                if time.monotonic() - started > args.budget_s:
                    break
                tuner.evaluate("zipgemm", n, k, m, cfg)
            rows.append((n, k, m))
    finally:
        tuner.measurer().close()
    after = winners(tuner.records, "zipgemm")
    what = ((f"specialized {specialized}, " if specialized else "")
            + ("strip pairs, " if args.pairs else "") + ("staged, " if args.stage_x else ""))
    print(f"# split_sweep on {target.device_name}: {what}k_splits {splits}, {db.folder}")
    print("| layer | M | winner before µs | after µs | gain | new winner |")
    print("|---|---|---|---|---|---|")
    for n, k, m in rows:
        b, a = before.get(key(n, k, m)), after.get(key(n, k, m))
        if b is None or a is None:
            continue
        print(f"| {names.get((n, k), f'{n}x{k}')} | {m} | {b.median_us:.1f} | {a.median_us:.1f} "
              f"| {b.median_us / a.median_us:.3f} | {'' if a is b else a.config} |")


if __name__ == "__main__":
    main()
