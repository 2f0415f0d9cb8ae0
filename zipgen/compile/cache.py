"""An on-disk cubin cache addressed by content, safe to share between processes.

Layout: <root>/<zipgen version>/<arch>/<op>/<key>.cubin, plus <key>.json (the key's inputs and the cubin's
sha256, size and creation time). Files are replaced atomically, so readers need no lock; a per-key file lock
only makes a second process wait for the first one's compile instead of repeating it. Any entry that does
not check out (sidecar missing or unreadable, size or sha256 off) is a miss and gets rewritten.
"""
import hashlib
import json
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from .. import __version__
from ..errors import InputError, ZipgenError
from ..fileio import write_atomic  # no fsync: a torn cubin fails its sha256 check and is recompiled
from .elf import ELF_MAGIC
from .key import CacheKey, cache_key
from .nvrtc import as_tuple, compile_cubin
from .paths import cache_root

log = logging.getLogger(__name__)
# Long enough for the slowest kernel compile; a process that dies releases its lock at once.
LOCK_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class CubinEntry:
    cubin: bytes
    key: str  # the digest
    path: Path  # the .cubin file
    hit: bool  # False when this call ran NVRTC


class CubinCache:
    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else cache_root()

    def path(self, key: CacheKey) -> Path:
        return self.root / __version__ / key.arch / key.op / f"{key.digest}.cubin"

    def get(self, key: CacheKey) -> bytes | None:
        """The cached cubin, or None when it is missing or does not match its sidecar."""
        path = self.path(key)
        try:
            cubin = path.read_bytes()
        except FileNotFoundError:
            return None
        problem = _problem(key, cubin, path.with_suffix(".json"))
        if problem:
            log.warning("ignoring cache entry %s (%s); it will be recompiled", path, problem)
            return None
        return cubin

    def put(self, key: CacheKey, cubin: bytes, meta: Mapping | None = None) -> Path:
        """Store a cubin and its sidecar (with `meta` added to it); returns the cubin's path.

        The cubin is replaced before the sidecar, and a reader only trusts a cubin its sidecar vouches for,
        so a reader racing a writer sees a miss at worst, never a wrong cubin.
        """
        if not cubin.startswith(ELF_MAGIC):
            raise InputError("refusing to cache data that is not a cubin (no ELF header)")
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        sidecar = {**(meta or {}), "key": key.digest, "inputs": dict(key.inputs),
                   "cubin_sha256": hashlib.sha256(cubin).hexdigest(), "cubin_size": len(cubin),
                   "created": time.time()}
        write_atomic(path, cubin)
        write_atomic(path.with_suffix(".json"), json.dumps(sidecar, indent=1, sort_keys=True).encode())
        return path

    def lock(self, key: CacheKey, timeout: float = LOCK_TIMEOUT_S) -> FileLock:
        """A lock on one key, held around compiling it so that it is compiled once."""
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        return FileLock(path.with_suffix(".lock"), timeout=timeout)


def get_or_compile(source: str, arch: str, op: str, config: Mapping, options: Iterable[str] = (),
                   include_dirs: Iterable[str | Path] = (), *, cache: CubinCache | None = None) -> CubinEntry:
    """The cubin for this source/arch/config: from the cache, or compiled with NVRTC and stored."""
    options, include_dirs = as_tuple(options, "options"), as_tuple(include_dirs, "include_dirs")
    key = cache_key(source, arch, op, config, options, include_dirs)
    cache = cache if cache is not None else CubinCache()
    path = cache.path(key)
    if (cubin := cache.get(key)) is not None:
        return CubinEntry(cubin, key.digest, path, hit=True)
    lock = cache.lock(key)
    try:
        with lock:
            # Whoever held the lock before us has probably just stored this very key.
            if (cubin := cache.get(key)) is not None:
                return CubinEntry(cubin, key.digest, path, hit=True)
            result = compile_cubin(source, arch, options=options, include_dirs=include_dirs, source_name=f"{op}.cu")
            cache.put(key, result.cubin, {"nvrtc_log": result.log, "nvrtc_options": list(result.options)})
    except Timeout:
        raise ZipgenError(f"another process has been compiling {path.name} for over {lock.timeout:.0f} s "
                          f"(lock {lock.lock_file}); it may be stuck") from None
    return CubinEntry(result.cubin, key.digest, path, hit=False)


def _problem(key: CacheKey, cubin: bytes, sidecar_path: Path) -> str | None:
    """Why a cached cubin cannot be trusted, or None if it can."""
    try:
        sidecar = json.loads(sidecar_path.read_text())
    except (OSError, ValueError) as e:
        return f"sidecar unreadable: {e}"
    if not isinstance(sidecar, dict) or sidecar.get("key") != key.digest:
        return "sidecar is for another key"
    if sidecar.get("cubin_size") != len(cubin):
        return f"cubin is {len(cubin)} bytes, sidecar says {sidecar.get('cubin_size')}"
    if sidecar.get("cubin_sha256") != hashlib.sha256(cubin).hexdigest():
        return "cubin sha256 differs from the sidecar's"
    return None
