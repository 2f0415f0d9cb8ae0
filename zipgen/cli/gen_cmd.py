"""`zipgen gen`: render every op's default kernel for each arch (and optionally compile it).

    zipgen gen --out generated                 # the checked-in sources (see generated/README.md)
    zipgen gen --arch sm_90 --out k --cubin    # plus cubins, with registers / shared memory / spills
"""
from __future__ import annotations

import time
from pathlib import Path

from ..codegen import ARCHES, DEFAULT_ARCHES, OPS, arch_traits, build_kernel, default_config, render
from ..compile.cuobjdump import find_cuobjdump, resource_usage
from ..errors import InputError
from ..fileio import write_atomic
from ..report import table


def add_parsers(sub) -> None:
    p = sub.add_parser("gen", help="render (and optionally compile) the default kernels per arch",
                       description="Render the default config of every op for each arch into "
                                   "OUT/<arch>/<kernel>.cu; with --cubin also compile them with "
                                   "NVRTC (through the cubin cache) into OUT/<arch>/<kernel>.cubin.")
    p.add_argument("--arch", action="append", metavar="ARCH",
                   help=f"target arch (repeatable; default: {' '.join(DEFAULT_ARCHES)})")
    p.add_argument("--op", action="append", metavar="OP",
                   help=f"op to render (repeatable; default: all of {', '.join(OPS)})")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    p.add_argument("--cubin", action="store_true", help="also compile and write the cubins")
    p.set_defaults(func=cmd_gen)


def _unique(items) -> list[str]:
    return list(dict.fromkeys(items))


def write_if_changed(path: Path, data: bytes) -> bool:
    """Write `data` atomically; returns False (and leaves the file alone) when it already
    holds exactly `data`."""
    try:
        if path.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    write_atomic(path, data)
    return True


def cmd_gen(args) -> int:
    arches = _unique(args.arch or DEFAULT_ARCHES)
    ops = _unique(args.op or OPS)
    # Check every name (and render every source) before writing anything.
    _check_names("arch", arches, ARCHES)
    _check_names("op", ops, OPS)
    traits = {a: arch_traits(a) for a in arches}
    jobs = [(op, arch, default_config(op, traits[arch])) for arch in arches for op in ops]
    rendered = [render(op, arch, cfg) for op, arch, cfg in jobs]  # InputError for a bad default

    tool = find_cuobjdump() if args.cubin else None
    rows, written = [], 0
    for (op, arch, cfg), kernel in zip(jobs, rendered):
        folder = args.out / arch
        src_path = folder / kernel.file_name
        changed = write_if_changed(src_path, kernel.source.encode())
        written += changed
        row = [kernel.kernel_name, op, arch, "written" if changed else "unchanged"]
        if args.cubin:
            start = time.perf_counter()
            built = build_kernel(op, arch, cfg)
            seconds = time.perf_counter() - start
            cubin_path = folder / (kernel.kernel_name + ".cubin")
            written += write_if_changed(cubin_path, built.cubin)
            row += [f"{1000 * seconds:.0f}", "yes" if built.entry.hit else "no"]
            if tool:
                use = resource_usage(tool, cubin_path).get(kernel.kernel_name, {})
                row += [use.get(k, "-") for k in ("REG", "SHARED", "STACK", "LOCAL")]
        rows.append(row)

    headers, align = ["kernel", "op", "arch", "source"], "llll"
    if args.cubin:
        headers += ["compile ms", "cache hit"]
        align += "rl"
        if tool:
            headers += ["regs", "smem B", "stack B", "local B"]
            align += "rrrr"
    print(table(headers, rows, align=align))
    files = len(rows) * (2 if args.cubin else 1)
    print(f"{len(rows)} kernel{'s' if len(rows) != 1 else ''} "
          f"({'sources and cubins' if args.cubin else 'sources'}) in {args.out}: "
          f"{written} of {files} files written, {files - written} already up to date")
    if args.cubin and not tool:
        print("note: registers / shared memory / spills need cuobjdump "
              "(pip install nvidia-cuda-cuobjdump)")
    stale = _stale_sources(args.out, arches)
    if stale:
        print("note: these sources match no op's default kernel any more; delete them if they "
              "are left over: " + ", ".join(str(p) for p in stale))
    return 0


def _check_names(kind: str, names: list[str], known) -> None:
    unknown = [n for n in names if n not in known]
    if unknown:
        plural = {"arch": "arches"}.get(kind, kind + "s") if len(unknown) > 1 else kind
        raise InputError(f"unknown {plural} "
                         f"{', '.join(map(repr, unknown))}; supported: {', '.join(known)}")


def _stale_sources(out: Path, arches: list[str]) -> list[Path]:
    """.cu files in OUT/<arch>/ that no registered op's default config renders to."""
    stale = []
    for arch in arches:
        traits = arch_traits(arch)
        expected = {default_config(op, traits).kernel_name(traits) + ".cu" for op in OPS}
        stale += sorted(p for p in (out / arch).glob("*.cu") if p.name not in expected)
    return stale
