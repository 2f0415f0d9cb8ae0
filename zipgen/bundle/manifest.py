"""bundle.json: what a prebuilt kernel bundle holds, with the versions it was built for.

A bundle is a folder: <arch>/<kernel_name>.cubin files and bundle.json, plain JSON that other tools
can read.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from ..errors import BundleError

# Bump when a field changes meaning or a required one is added; readers refuse other versions.
SCHEMA_VERSION = 1
MANIFEST_NAME = "bundle.json"


def config_key(config: dict) -> str:
    """A config dict as a canonical string, to compare a manifest's configs with a dataclass's."""
    return json.dumps(config, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class KernelEntry:
    op: str
    arch: str
    config: dict
    kernel_name: str
    cubin: str  # path relative to the bundle root: "<arch>/<kernel_name>.cubin"
    sha256: str
    size: int
    source_sha256: str  # of the rendered CUDA source: a stale template is caught at load
    threads_per_cta: int  # launch shape
    static_smem_bytes: int  # shared memory per CTA (for zipgemm: dynamic, passed at launch)
    registers: int | None  # from cuobjdump when it was available at build time, else None
    shared_memory: int | None
    local_memory: int | None
    default: bool  # a configuration the runtime picks when nothing was tuned
    tuned: bool  # a winner from the tuning database

    @property
    def origin(self) -> str:
        return "+".join(n for n, on in (("default", self.default), ("tuned", self.tuned)) if on)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.op, self.arch, config_key(self.config))

    def describe(self) -> str:
        config = " ".join(f"{k}={v}" for k, v in self.config.items())
        return f"{self.kernel_name} ({self.op}, {self.arch}, {config})"


# JSON type(s) each field must have; `None` allowed where listed.
_ENTRY_TYPES = {"op": str, "arch": str, "config": dict, "kernel_name": str, "cubin": str,
                "sha256": str, "size": int, "source_sha256": str, "threads_per_cta": int,
                "static_smem_bytes": int, "registers": (int, type(None)),
                "shared_memory": (int, type(None)), "local_memory": (int, type(None)),
                "default": bool, "tuned": bool}
_MANIFEST_TYPES = {"schema_version": int, "zipgen_version": str, "format_version": int,
                   "nvrtc_version": str, "created": str, "headers_sha256": str, "kernels": list}


@dataclass(frozen=True)
class Manifest:
    schema_version: int
    zipgen_version: str
    format_version: int  # TCA-TBE
    nvrtc_version: str  # "13.5"
    created: str  # ISO 8601, UTC
    headers_sha256: str  # of templates/include when built: a changed header is caught at load
    kernels: tuple[KernelEntry, ...]

    def to_json(self) -> str:
        data = asdict(self)
        data["kernels"] = [asdict(k) for k in self.kernels]
        return json.dumps(data, indent=1) + "\n"  # field order: versions first, configs as declared

    @classmethod
    def from_json(cls, text: str, where: str = "bundle.json") -> Manifest:
        """Parse and type-check; BundleError names every problem (another schema version first,
        since then the rest cannot be trusted)."""
        try:
            data = json.loads(text)
        except ValueError as e:
            raise BundleError(f"{where}: not valid JSON ({e})") from None
        if not isinstance(data, dict):
            raise BundleError(f"{where}: a manifest is a JSON object, got {type(data).__name__}")
        if data.get("schema_version") != SCHEMA_VERSION:
            raise BundleError(f"{where}: bundle schema version {data.get('schema_version')!r}; this "
                              f"zipgen reads version {SCHEMA_VERSION}: rebuild the bundle with "
                              f"`zipgen bundle build`")
        problems = _type_problems(data, _MANIFEST_TYPES, "manifest")
        entries = data.get("kernels") if isinstance(data.get("kernels"), list) else []
        for i, e in enumerate(entries):
            name = e.get("kernel_name", f"#{i}") if isinstance(e, dict) else f"#{i}"
            problems += (_type_problems(e, _ENTRY_TYPES, f"kernel {name}") if isinstance(e, dict)
                         else [f"kernel #{i} is not a JSON object"])
        if problems:
            raise BundleError(f"{where}: " + "; ".join(problems))
        kernels = tuple(KernelEntry(**{f.name: e[f.name] for f in fields(KernelEntry)})
                        for e in entries)
        return cls(**{**{k: data[k] for k in _MANIFEST_TYPES}, "kernels": kernels})


def _type_problems(data: dict, types: dict, what: str) -> list[str]:
    out = []
    for name, kind in types.items():
        if name not in data:
            out.append(f"{what} lacks {name!r}")
        # bool is an int in Python; a count must not be True
        elif not isinstance(data[name], kind) or (kind is int and isinstance(data[name], bool)):
            out.append(f"{what}: {name!r} is {data[name]!r}")
    return out


def read_manifest(root: Path) -> Manifest:
    path = Path(root) / MANIFEST_NAME
    try:
        text = path.read_text()
    except OSError as e:
        raise BundleError(f"{root} is not a kernel bundle: cannot read {MANIFEST_NAME} "
                          f"({e.strerror})") from None
    return Manifest.from_json(text, where=str(path))
