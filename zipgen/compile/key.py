"""The content-addressed key of a compiled kernel: everything that can change the cubin NVRTC makes."""
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from ..errors import InputError
from ..format import FORMAT_VERSION
from .nvrtc import BASE_OPTIONS, as_tuple, check_arch, nvrtc_version


@dataclass(frozen=True)
class CacheKey:
    digest: str  # sha256 hex of the canonical JSON of `inputs`
    op: str
    arch: str
    inputs: Mapping[str, object]  # written into the entry's sidecar, to see why two keys differ


def cache_key(source: str, arch: str, op: str, config: Mapping, options: Iterable[str] = (),
              include_dirs: Iterable[str | Path] = ()) -> CacheKey:
    check_arch(arch)
    if not op or op.startswith(".") or not all(c.isalnum() or c in "_-." for c in op):
        raise InputError(f"op name {op!r} must be letters, digits, '_', '-' or '.' (it names a cache folder)")
    inputs = {
        "zipgen_version": __version__,
        "format_version": FORMAT_VERSION,
        "op": op,
        "config": dict(config),
        "arch": arch,  # exact: sm_90 and sm_90a cubins differ
        "nvrtc_version": list(nvrtc_version()),
        "options": sorted((*BASE_OPTIONS, *as_tuple(options, "options"))),
        "source_sha256": _sha256(source.encode()),
        # Headers in include_dirs change the cubin as much as the source does; their paths do not.
        "headers_sha256": headers_digest(as_tuple(include_dirs, "include_dirs")),
    }
    try:
        canonical = json.dumps(inputs, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as e:
        raise InputError(f"config {config!r} must hold only JSON values (str, int, float, bool, None, "
                         f"lists, dicts): {e}") from None
    return CacheKey(_sha256(canonical.encode()), op, arch, json.loads(canonical))


def headers_digest(include_dirs: Iterable[str | Path]) -> str:
    """sha256 over every file under the include dirs (relative path and bytes), in a stable order."""
    h = hashlib.sha256()
    for index, folder in enumerate(include_dirs):
        folder = Path(folder)
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            h.update(f"{index}:{path.relative_to(folder).as_posix()}\0".encode())
            h.update(_sha256(path.read_bytes()).encode())
    return h.hexdigest()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
