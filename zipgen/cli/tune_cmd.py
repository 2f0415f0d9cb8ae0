"""`zipgen tune`: autotune the generated kernels on this GPU and record every measurement.

    zipgen tune --arch sm_90 --model llama-3.1-8b
    zipgen tune --arch sm_80 --shape 4096x4096 --m 1,16 --op zipgemm --dry-run
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from ..codegen import ARCHES
from ..errors import InputError
from ..report import table
from ..tune.buckets import M_BUCKETS
from ..tune.db import TuningDB, read_folders, write_folder
from ..tune.shapes import MODELS, shapes_for
from ..tune.space import VALUES, enumerate_space, planned_trials

OPS_CHOICES = {"all": ("decode", "zipgemm"), "decode": ("decode",), "zipgemm": ("zipgemm",)}


def add_parsers(sub) -> None:
    p = sub.add_parser("tune", help="autotune the kernels on this GPU into the tuning database",
                       description="Search the valid decoder and fused-GEMM configurations per "
                                   "shape and M bucket on the present GPU (each verified, then "
                                   "timed), record every measurement in the tuning database, "
                                   "and tune the fused-vs-decode switch point. Resumes: work "
                                   "already recorded for this GPU is not repeated.")
    p.add_argument("--arch", required=True, choices=list(ARCHES),
                   help="the arch to tune; must be the present GPU's")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--model", choices=list(MODELS), help="tune this model's linear layers")
    what.add_argument("--shape", nargs="+", metavar="NxK", help="weight shapes, e.g. 4096x4096")
    p.add_argument("--m", default=",".join(map(str, M_BUCKETS)), metavar="M,...",
                   help=f"M buckets to tune (default: {','.join(map(str, M_BUCKETS))})")
    p.add_argument("--op", choices=list(OPS_CHOICES), default="all", help="ops to tune")
    p.add_argument("--trials", type=int, default=100, metavar="N",
                   help="trials per study; a space this small or smaller is searched whole "
                        "(default 100)")
    p.add_argument("--seed", type=int, default=0, help="sampler and operand seed")
    p.add_argument("--db", type=Path, metavar="PATH",
                   help=f"database folder (default: $ZIPGEN_TUNING_DB, else {write_folder()})")
    p.add_argument("--start-from", type=Path, action="append", default=[], metavar="PATH",
                   help="a database folder whose winners for this GPU each study tries first, "
                        "whatever kernel version they timed (e.g. the shipped database, after a "
                        "kernel change made it stale); repeatable. This database's own older "
                        "winners are always tried")
    p.add_argument("--refresh", type=int, default=0, metavar="K",
                   help="no search: each study re-times the default, its last winner and the K "
                        "fastest configurations of older kernels (this database's stale records "
                        "and --start-from's). A re-tune after a kernel change in minutes instead "
                        "of the full search; the search can follow later")
    p.add_argument("--keep-going", action="store_true",
                   help="record a wrong result as status correctness and go on (default: stop)")
    p.add_argument("--dry-run", action="store_true",
                   help="list the valid and filtered-out configurations; no GPU needed")
    p.add_argument("--timeout-s", type=float, default=60.0, metavar="T",
                   help="limit for verifying + timing one candidate (default 60)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_tune)


def parse_ms(text: str) -> tuple[int, ...]:
    try:
        ms = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise InputError(f"--m {text!r}: write comma-separated integers, e.g. 1,16") from None
    bad = [m for m in ms if m not in M_BUCKETS]
    if bad or not ms:
        raise InputError(f"--m {text!r}: tuned M values are buckets; choose from "
                         f"{','.join(map(str, M_BUCKETS))}")
    return tuple(ms)


def cmd_tune(args) -> int:
    ms = parse_ms(args.m)
    shapes = shapes_for([args.model] if args.model else [], args.shape or [])
    ops = OPS_CHOICES[args.op]
    if args.trials < 1:
        raise InputError("--trials must be at least 1")
    if args.refresh < 0:
        raise InputError("--refresh must be 0 (search) or a count of configurations")
    missing = [str(p) for p in args.start_from if not p.is_dir()]
    if missing:
        raise InputError(f"--start-from: no such database folder: {', '.join(missing)}")
    db = TuningDB(args.db if args.db is not None else write_folder())
    if args.dry_run:
        print(dry_run(args.arch, shapes, ms, ops, args.trials, db))
        return 0
    target = present_target(args.arch)

    from tqdm import tqdm

    from ..tune.search import Options, Tuner
    from ..tune.worker import Worker
    tuner = Tuner(Options(shapes, ms, ops, args.trials, args.seed, args.keep_going,
                          tuple(args.start_from), args.refresh), target, db,
                  measurer=Worker(timeout_s=args.timeout_s))
    plan = tuner.plan()
    switch_steps = len(ms) if "zipgemm" in ops and 1 in ms else 0  # decode + cuBLAS per bucket
    total = sum(s[-1] for s in plan) + sum(switch_steps for _, _, k in shapes if k % 8 == 0)
    print(f"zipgen tune: {target.device_name} ({target.arch}, {target.sm_count} SMs); "
          f"{len(plan)} studies; records go to {db.folder}", flush=True)
    started = time.monotonic()
    with tqdm(total=total, unit="trial", disable=args.quiet, file=sys.stderr) as bar:
        tuner.progress = bar
        report = tuner.run()
    print(summary(report, db))
    print(f"Took {time.monotonic() - started:.0f} s.")
    return 0


def present_target(arch: str):
    """The present GPU as a search.Target; refuses without a GPU or for another arch."""
    import torch
    if not torch.cuda.is_available():
        raise InputError("no CUDA GPU is visible: tuning times kernels on the GPU it tunes for. "
                         "Run it there, or add --dry-run to list the configurations without one.")
    from ..tune.search import Target
    target = Target.current()
    if target.arch != arch:
        raise InputError(f"--arch {arch} is not this GPU's arch: {target.device_name} runs "
                         f"{target.arch} kernels. Tune {arch} on a GPU of that arch, or pass "
                         f"--arch {target.arch}.")
    return target


def dry_run(arch: str, shapes, ms, ops, trials: int, db: TuningDB) -> str:
    out = [f"zipgen tune --dry-run: {arch}; shapes {', '.join(f'{n}x{k}' for _, n, k in shapes)}; "
           f"ops {', '.join(ops)}; M buckets {','.join(map(str, ms))}; database {db.folder}",
           "No GPU used, nothing measured. Candidates per study (kept: searched; else the reason):"]
    total = 0
    for op in ops:
        fused_shapes = [s for s in shapes if op != "zipgemm" or s[2] % 8 == 0]
        for bucket in (ms if op == "zipgemm" else (None,)):
            space = enumerate_space(op, arch, bucket)
            sampler, n = planned_trials(len(space.valid), trials)
            total += n * len(fused_shapes)
            out += ["", f"{op} on {arch}" + (f", M bucket {bucket}" if bucket else "") +
                    f": {len(space.valid)} valid, {len(space.rejected)} filtered out; "
                    f"{sampler}, {n} trials per shape"]
            fields = list(VALUES[op])
            rows = [[getattr(c, f) for f in fields] + ["yes", ""] for c in space.valid]
            rows += [[getattr(c, f) for f in fields] + ["no", "; ".join(r)]
                     for c, r in space.rejected]
            out.append(table(fields + ["kept", "reason"], rows))
        skipped = [f"{n}x{k}" for _, n, k in shapes if op == "zipgemm" and k % 8]
        if skipped:
            out.append(f"zipgemm skipped for {', '.join(skipped)}: the fused kernel needs K % 8 == 0")
    out += ["", f"Would run {total} trials"
            + (" plus the fused-vs-decode switch point per shape" if "zipgemm" in ops else "")
            + "."]
    return "\n".join(out)


def _us(record) -> str:
    return f"{record.median_us:.1f}" if record is not None and record.status == "ok" else "-"


def summary(report, db: TuningDB) -> str:
    rows = []
    for r in report.rows:
        speedup = (f"{r.default.median_us / r.winner.median_us:.2f}x"
                   if r.winner and r.default and r.default.status == "ok" else "-")
        winner = " ".join(f"{k}={v}" for k, v in r.winner.config.items()) if r.winner else \
            "(no configuration ran correctly)"
        rows.append([r.label, f"{r.n}x{r.k}", r.op, "-" if r.m_bucket is None else r.m_bucket,
                     winner, _us(r.winner), _us(r.default), speedup])
    out = ["", table(["shape", "NxK", "op", "M", "winner", "µs", "default µs", "speedup"], rows,
                     align="llllrrrr")]
    if report.switches:
        out += ["", table(["shape", "NxK", "fused up to M", "buckets", "fused µs", "decode+cuBLAS µs"],
                          [[label, f"{r.n}x{r.k}", r.config["fused_max_m"],
                            ",".join(map(str, r.detail["buckets"])),
                            " ".join(f"{t:.1f}" for t in r.detail["fused_us"]),
                            " ".join(f"{t:.1f}" for t in r.detail["decode_us"])]
                           for label, r in report.switches], align="llrlll")]
    counts = ", ".join(f"{v} {k}" for k, v in sorted(report.counts.items())) or "nothing"
    out += ["", f"Candidates: {counts}. Records: {db.folder}"]
    out += report.notes
    if db.folder not in read_folders():
        out.append(f"The runtime reads {', '.join(map(str, read_folders()))}; to use these "
                   f"winners set ZIPGEN_TUNING_DB={db.folder}")
    return "\n".join(out)
