"""What a kernel's machine code depends on, as one hash: its rendered body and the headers it
includes (transitively), not every header zipgen ships.

A tuning record stores the hash of the kernel it timed (env "kernel_sha256"). It stays valid
while that kernel's code is unchanged, so a new kernel variant in a header of its own does not
make the records of the others stale (a hash over all headers did: every header change cost a
full re-tune). The generated comment block at the top (zipgen version, config description) is
left out: it changes no instruction.
"""
from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from pathlib import Path

from .render import include_dir, render

_INCLUDE = re.compile(r'^\s*#\s*include\s*[<"](zipgen/[^>"]+)[>"]', re.MULTILINE)


def _body(source: str) -> str:
    """The source without its leading comment block (render()'s header)."""
    lines = source.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if not line.startswith("//")), len(lines))
    return "".join(lines[start:])


@lru_cache(maxsize=None)
def _header(name: str, root: str) -> tuple[str, tuple[str, ...]]:
    """(sha256 of the header's bytes, the zipgen headers it includes)."""
    text = (Path(root) / name).read_text()
    return hashlib.sha256(text.encode()).hexdigest(), tuple(_INCLUDE.findall(text))


def included_headers(source: str, root: Path | None = None) -> dict[str, str]:
    """Every zipgen header the source includes, directly or through another: name -> sha256."""
    root = str(root or include_dir())
    seen: dict[str, str] = {}
    todo = list(_INCLUDE.findall(source))
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen[name], nested = _header(name, root)
        todo += nested
    return seen


def source_digest(source: str, root: Path | None = None) -> str:
    h = hashlib.sha256(_body(source).encode())
    for name, sha in sorted(included_headers(source, root).items()):
        h.update(f"\0{name}\0{sha}".encode())
    return h.hexdigest()


@lru_cache(maxsize=4096)
def kernel_sha256(op: str, arch: str, config) -> str:
    """The hash of the kernel `config` renders to for `arch` (InputError for an invalid config)."""
    return source_digest(render(op, arch, config).source)


def combined_sha256(digests) -> str:
    """One hash for a result that several kernels produced (a switch point), in a fixed order."""
    return hashlib.sha256("\0".join(sorted(digests)).encode()).hexdigest()
