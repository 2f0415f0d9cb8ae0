"""build_bundle: the runtime's default kernels (and tuned winners) compiled for some arches into a
bundle folder, with NVRTC, on a machine without a GPU.

The bundle is built in a temp folder beside OUT, verified, then renamed to OUT, so a reader never
sees half a bundle.
"""
from __future__ import annotations

import datetime
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from .. import FORMAT_VERSION, __version__
from ..codegen import OPS, arch_traits, build_kernel, default_config
from ..codegen.render import RenderedKernel
from ..compile import nvrtc_version
from ..compile.cuobjdump import find_cuobjdump, resource_usage
from ..errors import InputError
from .manifest import MANIFEST_NAME, SCHEMA_VERSION, KernelEntry, Manifest
from .verify import current_headers_sha256, sha256, verify_bundle

# Weight shapes (N, K) whose fused_config the bundle covers: the Llama-3.1 8B / 70B projections and
# a small one. fused_config only looks at the shape class, so these reach every config it returns.
GEMM_SHAPES = ((1024, 4096), (4096, 4096), (6144, 4096), (14336, 4096), (28672, 4096),
               (4096, 14336), (8192, 8192), (10240, 8192), (57344, 8192), (8192, 28672))
GEMM_MS = (1, 8, 16)


@dataclass(frozen=True)
class BuildResult:
    path: Path
    manifest: Manifest
    notes: list[str]  # tuning records skipped, and why


def default_configs(op: str, arch: str) -> list:
    """The configs the runtime picks for `op` on `arch` when nothing was tuned."""
    if op == "zipgemm":
        from ..runtime.gemm import fused_config  # here: the runtime imports this package
        configs = dict.fromkeys(fused_config(m, n, k) for m in GEMM_MS for n, k in GEMM_SHAPES)
    else:
        configs = [default_config(op, arch_traits(arch))]
    return [c for c in configs if not c.problems(arch_traits(arch))]


def _tuner():
    """zipgen.tune (its Record and winners), or None where this zipgen has no tuner."""
    try:
        from .. import tune
    except ImportError:
        return None
    return tune if hasattr(tune, "Record") and hasattr(tune, "winners") else None


def _ok_records(db: Path) -> tuple[list[tuple[str, dict]], list[str]]:
    """(where, record) of every record with status "ok" in a JSON-lines file or a folder of
    *.jsonl files, and notes on the lines that are not JSON objects."""
    db = Path(db)
    paths = sorted(db.rglob("*.jsonl")) if db.is_dir() else [db]
    records, notes = [], []
    for path in paths:
        try:
            lines = path.read_text().splitlines()
        except OSError as e:
            raise InputError(f"cannot read the tuning database {path}: {e.strerror}") from None
        for number, line in enumerate(lines, 1):
            try:
                record = json.loads(line) if line.strip() else {}
            except ValueError as e:
                notes.append(f"{path}:{number}: skipped, not JSON ({e})")
                continue
            if isinstance(record, dict) and record.get("status") == "ok":
                records.append((f"{path}:{number}", record))
    return records, notes


def read_winners(db: Path) -> tuple[list[tuple[str, object]], list[str]]:
    """(arch, config) of the kernel winners of a tuning database (a JSON-lines file or a folder of
    them; ZipGEMM and, since the runtime picks tuned decoders too, decode), and notes on what was
    skipped. With zipgen.tune present, its winners (the fastest ok record per op, target, shape
    and M bucket); without it every ok record, read only for problem.op, target.arch and config:
    at worst the bundle holds a few kernels more."""
    records, notes = _ok_records(db)
    tune, picked = _tuner(), []
    for where, record in records:
        try:
            if tune is not None:
                picked.append((where, tune.Record.from_json(record)))
            elif record["problem"]["op"] in OPS:
                picked.append((where, (record["problem"]["op"], record["target"]["arch"],
                                       record["config"])))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            notes.append(f"{where}: skipped, not a usable record ({type(e).__name__}: {e})")
    if tune is not None:
        best = {id(r) for r in tune.winners([r for _, r in picked]).values() if r.op in OPS}
        picked = [(where, (r.op, r.arch, r.config)) for where, r in picked if id(r) in best]
    winners = []
    for where, (op, arch, config) in picked:
        try:
            config = OPS[op](**config)
            invalid = config.problems(arch_traits(arch))
        except (TypeError, InputError) as e:
            invalid = [str(e)]
        if invalid:
            notes.append(f"{where}: skipped, config {config} on {arch}: " + "; ".join(invalid))
        else:
            winners.append((arch, config))
    return winners, notes


def kernel_entry(rendered: RenderedKernel, cubin: bytes, *, default: bool, tuned: bool,
                 usage: dict | None = None) -> KernelEntry:
    """The manifest entry of one compiled kernel; `usage` is cuobjdump's REG/SHARED/LOCAL."""
    cfg, usage = rendered.config, usage or {}
    return KernelEntry(
        op=rendered.op, arch=rendered.arch, config=cfg.as_dict(), kernel_name=rendered.kernel_name,
        cubin=f"{rendered.arch}/{rendered.kernel_name}.cubin", sha256=sha256(cubin),
        size=len(cubin), source_sha256=sha256(rendered.source.encode()),
        threads_per_cta=cfg.threads, static_smem_bytes=cfg.smem_bytes, registers=usage.get("REG"),
        shared_memory=usage.get("SHARED"), local_memory=usage.get("LOCAL"), default=default,
        tuned=tuned)


def new_manifest(kernels) -> Manifest:
    now = datetime.datetime.now(datetime.timezone.utc)
    return Manifest(schema_version=SCHEMA_VERSION, zipgen_version=__version__,
                    format_version=FORMAT_VERSION,
                    nvrtc_version=".".join(map(str, nvrtc_version())),
                    created=now.isoformat(timespec="seconds"),
                    headers_sha256=current_headers_sha256(), kernels=tuple(kernels))


def with_variants(configs: list) -> list:
    """The tuned configs and the variants the runtime derives from them: the gated-MLP
    epilogue (silu_mul) of a paired winner that can take it (zipgen.runtime.gemm_silu_mul),
    so that a bundle serves it without NVRTC too."""
    out = list(configs)
    for c in configs:
        if c.op == "zipgemm" and c.takes_silu_mul and not c.silu_mul:
            out.append(replace(c, silu_mul=True))
    return list(dict.fromkeys(out))


def plan(arches: list[str], winners: list[tuple[str, object]], notes: list[str]) -> list:
    """(op, arch, config, default, tuned) of every kernel to build, defaults first; "tuned"
    includes the variants derived from the winners (with_variants)."""
    jobs = []
    for arch in arches:
        tuned = with_variants(list(dict.fromkeys(c for a, c in winners if a == arch)))
        for op in OPS:
            defaults = default_configs(op, arch)
            jobs += [(op, arch, c, True, c in tuned) for c in defaults]
            jobs += [(op, arch, c, False, True) for c in tuned if c.op == op and c not in defaults]
    elsewhere = sorted({a for a, _ in winners} - set(arches))
    if elsewhere:
        notes.append(f"tuning records for arches not built were left out: {', '.join(elsewhere)}")
    return jobs


def build_bundle(arches, db=None, out=None, *, overwrite: bool = False) -> BuildResult:
    """Compile the bundle for `arches` (plus the winners of the tuning database `db`) into OUT:
    OUT/<arch>/<kernel_name>.cubin and OUT/bundle.json. An existing OUT (a bundle) is replaced
    only with overwrite=True."""

    if out is None:
        raise InputError("build_bundle needs out=DIR")
    arches = list(dict.fromkeys(arches))
    if not arches:
        raise InputError("name at least one arch to build the bundle for")
    for arch in arches:
        arch_traits(arch)  # InputError for an unknown one, before any compile
    out = Path(out).absolute()
    _check_out(out, overwrite)
    winners, notes = read_winners(db) if db is not None else ([], [])
    jobs = plan(arches, winners, notes)
    tool = find_cuobjdump()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.building-"))
    try:
        entries = []
        for op, arch, cfg, is_default, is_tuned in jobs:
            built = build_kernel(op, arch, cfg)
            path = tmp / built.rendered.arch / f"{built.kernel_name}.cubin"  # sm_90a: wgmma
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(built.cubin)
            usage = resource_usage(tool, path).get(built.kernel_name) if tool else None
            entries.append(kernel_entry(built.rendered, built.cubin, default=is_default,
                                        tuned=is_tuned, usage=usage))
        manifest = new_manifest(entries)
        (tmp / MANIFEST_NAME).write_text(manifest.to_json())
        verify_bundle(tmp)  # never publish a bundle that fails its own check
        os.chmod(tmp, 0o755)  # mkdtemp made it private; a bundle is meant to be shared
        _publish(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return BuildResult(out, manifest, notes)


def _check_out(out: Path, overwrite: bool) -> None:
    if not (out.exists() or out.is_symlink()):
        return
    if not overwrite:
        raise InputError(f"{out} exists; pass --overwrite to replace it")
    if not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST_NAME).is_file()):
        raise InputError(f"{out} exists and is not a kernel bundle (no {MANIFEST_NAME}); "
                         "refusing to replace it")


def _publish(tmp: Path, out: Path, overwrite: bool) -> None:
    """Rename the finished bundle to OUT. A replaced OUT is moved aside first (a directory cannot
    be renamed over a non-empty one) and restored if the second rename fails."""
    _check_out(out, overwrite)  # again: OUT may have appeared while we compiled
    if not (out.exists() or out.is_symlink()):
        os.rename(tmp, out)
        return
    old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
    os.rename(out, old / "bundle")
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(old / "bundle", out)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)
