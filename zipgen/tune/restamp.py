"""Keep the tuning records of kernels that a template change left as they were.

    python -m zipgen.tune.restamp --from OLD/templates FOLDER [FOLDER ...]

A record names the kernel it timed by the hash of its source (env "kernel_sha256",
zipgen.codegen.digest), so any edit of a header it includes makes it stale, even one that
changes no instruction (a comment, a helper moved between headers, a new template branch that
other configurations never take). This re-stamps such records: for each record stamped with
the hash its configuration had under OLD's templates (a checkout of the revision the records
were measured with, e.g. `git worktree add /tmp/old <rev>`), it compiles that configuration from
OLD's templates and from today's with NVRTC, without line information, and if the two kernels
are the same code it gives the record today's hash. Same code: byte-identical cubins, or the
same instructions, attributes and shared memory with no relocations in the code
(zipgen.compile.elf.kernel_sections; the symbol tables differ when a helper's template
arguments do). A switch record is re-stamped when
the decoder and every fused kernel it compared are. Everything else is left as it is; a record
whose kernel changed stays stale and needs measuring again. Times are never touched. Each file
is rewritten atomically, its lines in their order.

The cubins are this machine's NVRTC's: identical code here is taken as identical code on the
GPU machine that measured the record, whose NVRTC may differ (the same source went in).
"""
from __future__ import annotations

import argparse
import json
import os
from concurrent.futures import ProcessPoolExecutor
from functools import lru_cache
from itertools import repeat
from pathlib import Path

from ..codegen import OPS, DecodeConfig, ZipGemmConfig
from ..codegen.digest import combined_sha256, kernel_sha256, source_digest
from ..codegen.render import render, template_dir
from ..compile.elf import kernel_sections
from ..compile.nvrtc import compile_cubin
from ..errors import InputError
from ..fileio import write_atomic
from .record import SWITCH_OP, Record


def _key(config) -> str:
    return json.dumps(config.as_dict(), sort_keys=True)


class KernelComparison:
    """Per (op, arch, config): its hash under the old and the new templates, and whether it
    compiles to the same code from both (memoised: records share configurations)."""

    def __init__(self, old_templates: Path, new_templates: Path | None = None):
        self.old = Path(old_templates)
        self.new = Path(new_templates) if new_templates else template_dir()
        self._same: dict[tuple, bool] = {}

    def _digest(self, op: str, arch: str, config, root: Path) -> str:
        return source_digest(render(op, arch, config, templates=root).source, root / "include")

    def old_sha256(self, op: str, arch: str, config) -> str:
        return self._cached(op, arch, _key(config), "old")

    def new_sha256(self, op: str, arch: str, config) -> str:
        if self.new == template_dir():
            return kernel_sha256(op, arch, config)
        return self._cached(op, arch, _key(config), "new")

    def unchanged(self, op: str, arch: str, config) -> bool:
        key = (op, arch, _key(config))
        if key not in self._same:
            self._same[key] = _same_code(self.old, self.new, *key)
        return self._same[key]

    def compare_all(self, kernels, jobs: int) -> None:
        """Compile the (op, arch, config) kernels in `jobs` processes, ahead of unchanged()."""
        keys = sorted({(op, arch, _key(cfg)) for op, arch, cfg in kernels} - self._same.keys())
        if not keys:
            return
        ops, arches, configs = zip(*keys)
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            verdicts = pool.map(_same_code, repeat(self.old), repeat(self.new), ops, arches,
                                configs, chunksize=4)
            self._same.update(zip(keys, verdicts))

    @lru_cache(maxsize=None)
    def _cached(self, op: str, arch: str, key: str, what: str) -> str:
        config = OPS[op](**json.loads(key))
        return self._digest(op, arch, config, self.old if what == "old" else self.new)


def _same_code(old: Path, new: Path, op: str, arch: str, key: str) -> bool:
    """Whether the kernel compiles to the same code from both templates folders: the same
    instructions, attributes (registers, barriers, parameters) and shared memory
    (elf.kernel_sections), with no relocations in its code, so that the symbol tables it
    leaves out cannot change what runs; else the whole cubins must be equal."""
    config = OPS[op](**json.loads(key))
    cubins, name = [], None
    for root in (old, new):
        rendered = render(op, arch, config, templates=root)
        name = rendered.kernel_name
        cubins.append(compile_cubin(rendered.source, rendered.arch,
                                    include_dirs=(root / "include",)).cubin)
    if cubins[0] == cubins[1]:
        return True
    code = [kernel_sections(cubin, name) for cubin in cubins]
    relocations = [c.get(".rela.text." + name, (0, 0, b""))[1] for c in code]
    return code[0] == code[1] and f".text.{name}" in code[0] and relocations == [0, 0]


def _kernels(record: Record) -> list[tuple[str, object]] | None:
    """(op, config) of every kernel the record's hash covers; None if it does not say."""
    if record.op in OPS:
        return [(record.op, OPS[record.op](**record.config))]
    detail = record.detail or {}
    if record.op == SWITCH_OP and {"decode_config", "fused_configs"} <= detail.keys():
        return ([("decode", DecodeConfig(**detail["decode_config"]))]
                + [("zipgemm", ZipGemmConfig(**c)) for c in detail["fused_configs"]])
    return None


def _combined(compare: KernelComparison, record: Record, kernels, sha) -> str:
    digests = [sha(op, record.arch, cfg) for op, cfg in kernels]
    return digests[0] if record.op in OPS else combined_sha256(digests)


def _moved(compare: KernelComparison, record: Record):
    """(its kernels, today's hash) for a record stamped under the old templates whose hash
    moved since; None when it is current already, was not measured with the old templates, or
    its configuration no longer renders."""
    stamp = record.env.get("kernel_sha256")
    try:
        kernels = _kernels(record)
        if stamp is None or kernels is None:
            return None
        new = _combined(compare, record, kernels, compare.new_sha256)
        if stamp == new or stamp != _combined(compare, record, kernels, compare.old_sha256):
            return None
    except (TypeError, InputError):  # a configuration that no longer renders
        return None
    return kernels, new


def restamp_record(compare: KernelComparison, record: Record) -> str | None:
    """Today's hash for a record whose kernels are the same code as under the old templates;
    None when its hash did not move (_moved) or a kernel changed."""
    moved = _moved(compare, record)
    if moved is None:
        return None
    kernels, new = moved
    return new if all(compare.unchanged(op, record.arch, cfg) for op, cfg in kernels) else None


def _read(path: Path) -> list[tuple[str, Record | None]]:
    out = []
    for line in path.read_text().splitlines():
        try:
            record = Record.from_json(json.loads(line)) if line.strip() else None
        except (ValueError, KeyError, TypeError, AttributeError):
            record = None  # unreadable or stale by format: kept verbatim
        out.append((line, record))
    return out


def kernels_to_compare(compare: KernelComparison, records) -> list[tuple[str, str, object]]:
    """(op, arch, config) of every kernel a record stamped under the old templates needs
    compiled: its hash moved."""
    out = []
    for record in records:
        moved = _moved(compare, record)
        if moved is not None:
            out += [(op, record.arch, cfg) for op, cfg in moved[0]]
    return out


def restamp_file(path: Path, compare: KernelComparison) -> tuple[int, int]:
    """Re-stamp one .jsonl file; (records re-stamped, records left as they were)."""
    lines = _read(path)
    out, restamped = [], 0
    for line, record in lines:
        new = restamp_record(compare, record) if record is not None else None
        if new is None:
            out.append(line)
            continue
        d = json.loads(line)
        d["env"] = {**d["env"], "kernel_sha256": new}
        out.append(json.dumps(d, allow_nan=False))
        restamped += 1
    write_atomic(path, ("\n".join(out) + "\n").encode())
    return restamped, len(lines) - restamped


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--from", dest="old", required=True, type=Path,
                    help="the templates/ folder of the revision the records were measured with")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                    help="processes compiling the kernels to compare")
    ap.add_argument("folders", nargs="+", type=Path)
    args = ap.parse_args(argv)
    if not (args.old / "include").is_dir():
        ap.error(f"{args.old} is not a templates folder (no include/ in it)")
    compare = KernelComparison(args.old)
    paths = [path for folder in args.folders for path in sorted(folder.rglob("*.jsonl"))]
    records = [r for path in paths for _, r in _read(path) if r is not None]
    compare.compare_all(kernels_to_compare(compare, records), args.jobs)
    for path in paths:
        restamped, left = restamp_file(path, compare)
        print(f"{path}: {restamped} records re-stamped, {left} left as they were")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
