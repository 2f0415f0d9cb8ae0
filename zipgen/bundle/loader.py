"""Where the runtime gets a kernel's cubin, in this order (FlashInfer's cubin packages):

1. the bundle in $ZIPGEN_BUNDLE_DIR;
2. installed bundles: the folders of `search_path` (a `zipgen_kernels` package, zipgen/bundles/),
   each a bundle or a folder of bundles;
3. the user's cubin cache (zipgen.compile), on a hit only;
4. NVRTC, now, unless ZIPGEN_DISABLE_JIT=1: then MissingKernelError names the kernel and the
   command that builds it.

A bundle made for another zipgen / format version or whose cubin fails its sha256 is skipped with a
warning (an error under ZIPGEN_DISABLE_JIT=1, where a broken deployment must not go unnoticed).
A bundle's manifest is checked once per process, each cubin when it is read.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from ..codegen import (OPS, arch_traits, build_kernel, compile_options, default_config, include_dir,
                       render)
from ..codegen.render import RenderedKernel
from ..compile import CubinCache, cache_key, cache_root
from ..errors import BundleError, InputError, MissingKernelError, ZipgenError
from .manifest import MANIFEST_NAME, KernelEntry, config_key, read_manifest
from .verify import arch_problem, check_manifest, read_cubin, source_problem

log = logging.getLogger(__name__)

ENV_BUNDLE_DIR = "ZIPGEN_BUNDLE_DIR"
ENV_DISABLE_JIT = "ZIPGEN_DISABLE_JIT"


def default_search_path() -> list[Path]:
    path = []
    spec = importlib.util.find_spec("zipgen_kernels")  # finds it without importing it
    if spec is not None and spec.submodule_search_locations:
        path += [Path(p) for p in spec.submodule_search_locations]
    path.append(Path(__file__).resolve().parents[1] / "bundles")
    return path


# Where installed bundles are looked for, in order; a plain list so tests and packagers can edit it.
search_path: list[Path] = default_search_path()


@dataclass(frozen=True)
class ResolvedKernel:
    op: str
    arch: str
    config: object
    kernel_name: str
    cubin: bytes
    origin: str  # "bundle <dir>", "cache" or "nvrtc"


def jit_disabled() -> bool:
    return os.environ.get(ENV_DISABLE_JIT, "").strip().lower() in ("1", "true", "yes", "on")


def bundle_dirs() -> list[Path]:
    """Bundles to look in, in order: $ZIPGEN_BUNDLE_DIR, then each installed one."""
    dirs = []
    if explicit := os.environ.get(ENV_BUNDLE_DIR):
        dirs.append(Path(explicit).expanduser())
    for folder in search_path:
        folder = Path(folder)
        if (folder / MANIFEST_NAME).is_file():
            dirs.append(folder)
        elif folder.is_dir():
            dirs += sorted(p for p in folder.iterdir() if (p / MANIFEST_NAME).is_file())
    return dirs


@dataclass(frozen=True)
class _Bundle:
    problem: str | None  # why it is refused, or None
    index: dict  # KernelEntry.key -> KernelEntry


_lock = threading.Lock()
_bundles: dict[tuple, _Bundle] = {}


def clear_cache() -> None:
    """Forget the manifests checked so far (they are checked once per process)."""
    with _lock:
        _bundles.clear()


def _open(root: Path) -> _Bundle:
    """The bundle at `root`, its manifest checked once per process (a replaced bundle is a new
    bundle.json, so its stat is part of the key)."""
    try:
        st = (root / MANIFEST_NAME).stat()
        key = (str(root.resolve()), st.st_ino, st.st_mtime_ns, st.st_size)
    except OSError:
        key = (str(root), None)
    with _lock:
        bundle = _bundles.get(key)
        if bundle is None:
            try:
                manifest = read_manifest(root)
                check_manifest(manifest, root)
                bundle = _Bundle(None, {e.key: e for e in manifest.kernels})
            except BundleError as e:
                bundle = _Bundle(str(e), {})
                if not jit_disabled():  # once per process; strict mode raises at each lookup
                    log.warning("%s; skipping it", e)
            _bundles[key] = bundle
    return bundle


def _from_bundle(root: Path, rendered: RenderedKernel) -> bytes | None:
    bundle = _open(root)
    if bundle.problem:
        if jit_disabled():
            raise BundleError(bundle.problem)
        return None  # _open warned
    entry: KernelEntry | None = bundle.index.get(
        (rendered.op, rendered.arch, config_key(rendered.config.as_dict())))
    if entry is None:
        return None
    cubin, problem = read_cubin(root, entry)
    problem = problem or source_problem(entry, rendered.source)
    if problem:
        message = (f"bundle {root}: kernel {entry.describe()} refused: {problem}; rebuild the "
                   f"bundle (zipgen bundle build --arch {entry.arch} --out DIR --overwrite)")
        if jit_disabled():  # a broken deployment must not go unnoticed
            raise BundleError(message)
        log.warning("%s; trying the next source", message)
        return None
    return cubin


def _from_cache(rendered: RenderedKernel) -> bytes | None:
    """A cache hit only: the key is the one build_kernel's get_or_compile would use."""
    key = cache_key(rendered.source, rendered.arch, rendered.op, rendered.config.as_dict(),
                    compile_options(), (include_dir(),))
    return CubinCache().get(key)


def resolve_kernel(op: str, arch: str, config=None) -> ResolvedKernel:
    """The cubin of (op, arch, config) from the first source that has a good one (see above)."""
    if op not in OPS:
        raise InputError(f"unknown op {op!r}; known: {', '.join(OPS)}")
    cfg = config if config is not None else default_config(op, arch_traits(arch))
    rendered = render(op, arch, cfg)  # InputError for an invalid config; the source is checked

    arch = rendered.arch  # sm_90a for a wgmma configuration (codegen.compile_arch)

    def found(cubin: bytes, origin: str) -> ResolvedKernel:
        log.debug("%s: from %s", rendered.kernel_name, origin)
        return ResolvedKernel(op, arch, cfg, rendered.kernel_name, cubin, origin)

    for root in bundle_dirs():
        cubin = _from_bundle(root, rendered)
        if cubin is not None:  # read_cubin checked its ELF arch
            return found(cubin, f"bundle {root}")
    cubin = _from_cache(rendered)
    if cubin is None:
        if jit_disabled():
            raise missing_kernel_error(rendered)
        built = build_kernel(op, arch, cfg)
        cubin, origin = built.cubin, ("cache" if built.entry.hit else "nvrtc")  # hit: a race
    else:
        origin = "cache"
    # The cache key holds the arch, so this means a damaged cache; never load such a cubin.
    if problem := arch_problem(cubin, arch):
        raise ZipgenError(f"the cached cubin of {rendered.kernel_name} {problem}, not an {arch} "
                          f"cubin; delete the cubin cache at {cache_root()} and retry")
    return found(cubin, origin)


def missing_kernel_error(rendered: RenderedKernel) -> MissingKernelError:
    from .build import default_configs  # only on this error path

    cfg, arch = rendered.config, rendered.arch
    looked = [f"bundle {d}" for d in bundle_dirs()] or [f"no bundle (${ENV_BUNDLE_DIR} unset, "
                                                        f"none installed)"]
    lines = [f"kernel {rendered.kernel_name} ({rendered.op}, {arch}, {cfg.describe()}) is not "
             f"prebuilt and {ENV_DISABLE_JIT}=1 forbids compiling it.",
             f"Looked in: {'; '.join(looked)}; the cubin cache at {cache_root()}.",
             f"Build it ahead of time: zipgen bundle build --arch {arch} --out DIR, then "
             f"export {ENV_BUNDLE_DIR}=DIR"]
    if cfg == default_config(rendered.op, arch_traits(arch)):  # what `zipgen gen` compiles
        lines.append(f"(or fill the cubin cache: zipgen gen --arch {arch} --out DIR --cubin)")
    elif cfg not in default_configs(rendered.op, arch):
        lines.append("(not a default configuration: add --db TUNING_DB, the database whose "
                     "winner it is)")
    return MissingKernelError("\n".join(lines), op=rendered.op, arch=arch, config=cfg,
                              kernel_name=rendered.kernel_name)
