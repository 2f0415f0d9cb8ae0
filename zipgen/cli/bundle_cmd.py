"""`zipgen bundle`: prebuilt kernel bundles (no GPU needed to build one).

    zipgen bundle build --arch sm_80 --arch sm_90 [--db tuning.jsonl] --out DIR [--overwrite]
    zipgen bundle verify DIR
    zipgen bundle ls DIR

At run time, `export ZIPGEN_BUNDLE_DIR=DIR` makes the runtime load its cubins instead of compiling;
with `ZIPGEN_DISABLE_JIT=1` it never compiles.
"""
from __future__ import annotations

from pathlib import Path

from ..bundle import build_bundle, read_manifest, verify_bundle
from ..bundle.loader import ENV_BUNDLE_DIR
from ..codegen import DEFAULT_ARCHES
from ..report import human_bytes, table


def add_parsers(sub) -> None:
    p = sub.add_parser("bundle", help="build, verify or list a prebuilt kernel bundle",
                       description="Prebuilt kernel bundles: cubins per arch plus bundle.json.")
    bsub = p.add_subparsers(dest="bundle_command", required=True, metavar="SUBCOMMAND")

    b = bsub.add_parser("build", help="compile the default kernels (and tuned winners) into DIR",
                        description="Compile every op's default kernels, plus the winners of a "
                                    "tuning database, for each arch into DIR/<arch>/*.cubin and "
                                    "DIR/bundle.json (NVRTC; no GPU needed).")
    b.add_argument("--arch", action="append", metavar="ARCH",
                   help=f"target arch (repeatable; default: {' '.join(DEFAULT_ARCHES)})")
    b.add_argument("--db", type=Path, metavar="PATH",
                   help="tuning database (a JSON-lines file or a folder of them) whose "
                        "winners to include")
    b.add_argument("--out", type=Path, required=True, metavar="DIR", help="bundle folder")
    b.add_argument("--overwrite", action="store_true", help="replace an existing bundle at DIR")
    b.set_defaults(func=cmd_build)

    v = bsub.add_parser("verify", help="check a bundle's checksums, arches and versions")
    v.add_argument("dir", type=Path, metavar="DIR")
    v.set_defaults(func=cmd_verify)

    ls = bsub.add_parser("ls", help="list a bundle's kernels")
    ls.add_argument("dir", type=Path, metavar="DIR")
    ls.set_defaults(func=cmd_ls)


def _na(value) -> object:
    return "-" if value is None else value


def kernel_table(manifest) -> str:
    rows = [[e.kernel_name, e.op, e.arch, " ".join(f"{k}={v}" for k, v in e.config.items()),
             e.origin, _na(e.registers), _na(e.shared_memory), human_bytes(e.size)]
            for e in manifest.kernels]
    return table(["kernel", "op", "arch", "config", "origin", "regs", "smem B", "size"], rows,
                 align="lllllrrr")


def _summary(manifest) -> str:
    arches = sorted({e.arch for e in manifest.kernels})
    return (f"{len(manifest.kernels)} kernels for {', '.join(arches) or 'no arch'}; zipgen "
            f"{manifest.zipgen_version}, TCA-TBE format {manifest.format_version}, NVRTC "
            f"{manifest.nvrtc_version}, built {manifest.created}")


def cmd_build(args) -> int:
    result = build_bundle(args.arch or DEFAULT_ARCHES, db=args.db, out=args.out,
                          overwrite=args.overwrite)
    print(kernel_table(result.manifest))
    print(f"{result.path}: {_summary(result.manifest)}")
    for note in result.notes:
        print(f"note: {note}")
    if all(e.registers is None for e in result.manifest.kernels):
        print("note: registers / shared memory need cuobjdump (pip install nvidia-cuda-cuobjdump)")
    print(f"use it: export {ENV_BUNDLE_DIR}={result.path}")
    return 0


def cmd_verify(args) -> int:
    manifest = verify_bundle(args.dir)  # BundleError (exit 2) lists every problem
    print(f"{args.dir}: OK: {_summary(manifest)}")
    return 0


def cmd_ls(args) -> int:
    manifest = read_manifest(args.dir)
    print(kernel_table(manifest))
    print(_summary(manifest))
    return 0
