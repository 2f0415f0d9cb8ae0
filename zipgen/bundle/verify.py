"""Is a bundle intact and made for this zipgen? Each problem names the kernel and what is wrong.

The loader runs `manifest_problems` once per bundle and process and `cubin_problem` on each cubin
it loads; `verify_bundle` (`zipgen bundle verify`) runs everything on every kernel.
"""
from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

from .. import FORMAT_VERSION, __version__
from ..codegen import ARCHES, OPS, include_dir, render
from ..compile import cubin_sm
from ..compile.key import headers_digest
from ..errors import BundleError
from .manifest import KernelEntry, Manifest, read_manifest


@lru_cache(maxsize=1)
def current_headers_sha256() -> str:
    return headers_digest((include_dir(),))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def entry_config(entry: KernelEntry):
    """The config object of an entry (TypeError/KeyError for an unknown op or field)."""
    return OPS[entry.op](**entry.config)


def manifest_problems(m: Manifest, root: Path | None = None) -> list[str]:
    """Versions and entries; with `root`, also every cubin file and every kernel's source."""
    out = []
    if m.zipgen_version != __version__:
        out.append(f"built by zipgen {m.zipgen_version}, this is zipgen {__version__}")
    if m.format_version != FORMAT_VERSION:
        out.append(f"built for TCA-TBE format version {m.format_version}, this zipgen reads "
                   f"version {FORMAT_VERSION}")
    if m.headers_sha256 != current_headers_sha256():
        out.append("built from other kernel headers (templates/include changed since)")
    seen = set()
    for e in m.kernels:
        problem = _entry_problem(e) or ("listed twice" if e.key in seen else None)
        seen.add(e.key)
        if problem is None and root is not None:
            problem = (read_cubin(root, e)[1]
                       or source_problem(e, render(e.op, e.arch, entry_config(e)).source))
        if problem:
            out.append(f"kernel {e.describe()}: {problem}")
    return out


def _entry_problem(e: KernelEntry) -> str | None:
    if e.arch not in ARCHES:
        return f"unknown arch {e.arch!r}"
    try:
        config = entry_config(e)
    except (KeyError, TypeError) as exc:
        return f"not a valid {e.op} config ({exc})"
    if invalid := config.problems(ARCHES[e.arch]):
        return "invalid config: " + "; ".join(invalid)
    name = config.kernel_name(ARCHES[e.arch])
    if e.kernel_name != name:
        return f"this config's kernel is {name}, the manifest says {e.kernel_name}"
    if e.cubin != f"{e.arch}/{name}.cubin":  # also keeps every path inside the bundle
        return f"cubin path {e.cubin!r} is not {e.arch}/{name}.cubin"
    return None


def check_manifest(m: Manifest, root: Path) -> None:
    problems = manifest_problems(m)
    if problems:
        arches = " ".join(f"--arch {a}" for a in sorted({e.arch for e in m.kernels}))
        raise BundleError(f"bundle {root} refused: " + "; ".join(problems) + "; rebuild it with "
                          f"this zipgen: zipgen bundle build {arches or '--arch ARCH'} --out {root} "
                          "--overwrite")


def arch_problem(cubin: bytes, arch: str) -> str | None:
    """Why `cubin` cannot be an `arch` cubin (its ELF header names another SM), or None."""
    major, minor = ARCHES[arch].capability
    try:
        sm = cubin_sm(cubin)
    except ValueError as exc:
        return f"is {exc}"
    return None if sm == 10 * major + minor else f"is an sm_{sm} cubin"


def cubin_problem(entry: KernelEntry, data: bytes) -> str | None:
    """Why these bytes are not this entry's cubin, or None."""
    if len(data) != entry.size:
        return f"{entry.cubin} is {len(data)} bytes, the manifest says {entry.size}"
    if sha256(data) != entry.sha256:
        return f"sha256 of {entry.cubin} differs from the manifest's (corrupt or replaced)"
    if problem := arch_problem(data, entry.arch):
        return f"{entry.cubin} {problem}, the manifest says {entry.arch}"
    if entry.kernel_name.encode() not in data:
        return f"{entry.cubin} does not contain the kernel {entry.kernel_name}"
    return None


def source_problem(entry: KernelEntry, source: str) -> str | None:
    if sha256(source.encode()) != entry.source_sha256:
        return "built from another kernel source (the template changed since)"
    return None


def read_cubin(root: Path, entry: KernelEntry) -> tuple[bytes | None, str | None]:
    """(cubin, None) when the file checks out, else (None, why)."""
    try:
        data = (Path(root) / entry.cubin).read_bytes()
    except OSError as exc:
        return None, f"cannot read {entry.cubin} ({exc.strerror})"
    problem = cubin_problem(entry, data)
    return (None, problem) if problem else (data, None)


def verify_bundle(root: Path) -> Manifest:
    """Every check on every kernel; BundleError lists all problems found."""
    root = Path(root)
    m = read_manifest(root)
    problems = manifest_problems(m, root)
    if problems:
        raise BundleError(f"bundle {root} failed verification ({len(problems)} problem"
                          f"{'s' if len(problems) != 1 else ''}):\n  " + "\n  ".join(problems))
    return m
