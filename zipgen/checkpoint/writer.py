"""`zipgen compress SRC DST`: compress a checkpoint tensor by tensor into a new folder.

Peak memory stays near one output shard plus the largest tensor: tensors are read one at a
time and shards are flushed when they reach max_shard_bytes. DST appears only when complete:
everything is written into a hidden sibling folder that is renamed at the end.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from .. import __version__
from ..errors import InputError
from ..format import compress
from .digest import tensor_sha256
from .manifest import COMPRESSED, RAW, STREAM_SUFFIX, Manifest, TensorEntry
from .policy import Policy
from .source import list_tensors, other_files, safetensors_files

DEFAULT_MAX_SHARD_BYTES = 2 << 30


@dataclass
class TensorReport:
    name: str
    shape: tuple[int, ...]
    kind: str
    original_bytes: int
    stored_bytes: int
    seconds: float
    coverage: float | None = None
    cast_from: str | None = None

    @property
    def ratio(self) -> float:
        return self.stored_bytes / self.original_bytes if self.original_bytes else 1.0


@dataclass
class CompressReport:
    dst: Path
    tensors: list[TensorReport] = field(default_factory=list)
    copied: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0


class _ShardWriter:
    """Collects tensors and writes a safetensors shard whenever max_bytes is reached."""

    def __init__(self, folder: Path, max_bytes: int):
        self.folder, self.max_bytes = folder, max_bytes
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes = 0
        self.sizes: dict[str, int] = {}

    @property
    def current_file(self) -> str:
        return f"zipgen-{len(self.sizes) + 1:05d}.safetensors"

    def add(self, tensors: dict[str, torch.Tensor]) -> str:
        """Queue tensors; returns the file they will be stored in."""
        size = sum(t.numel() * t.element_size() for t in tensors.values())
        if self.pending and self.pending_bytes + size > self.max_bytes:
            self.flush()
        self.pending.update(tensors)
        self.pending_bytes += size
        return self.current_file

    def flush(self) -> None:
        if not self.pending:
            return
        name = self.current_file
        save_file(self.pending, str(self.folder / name), metadata={"format": "pt",
                                                                  "zipgen": __version__})
        self.sizes[name] = (self.folder / name).stat().st_size
        self.pending, self.pending_bytes = {}, 0


def _prepare_destination(dst: Path, overwrite: bool) -> Path:
    dst = Path(dst)
    if dst.exists() and not overwrite:
        raise InputError(f"{dst} exists; choose a new destination or pass --overwrite")
    parent = dst.resolve().parent
    if not parent.is_dir():
        raise InputError(f"{parent}: the destination's parent folder does not exist")
    try:
        return Path(tempfile.mkdtemp(prefix=f".{dst.name}.partial-", dir=parent))
    except OSError as exc:
        raise InputError(f"{dst}: cannot write there ({exc.strerror})") from exc


def _publish(tmp: Path, dst: Path) -> None:
    """Move the finished folder into place; an existing DST (--overwrite) is replaced only
    after the new one is complete."""
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.rename(dst, old)
        os.rename(tmp, dst)
        shutil.rmtree(old) if old.is_dir() else old.unlink()
    else:
        os.rename(tmp, dst)


def compress_checkpoint(src, dst, policy: Policy = Policy(), *, device="cpu",
                        overwrite: bool = False, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
                        progress: bool = True) -> CompressReport:
    """Compress every tensor the policy selects; copy the rest and the non-weight files."""
    started = time.perf_counter()
    src, dst = Path(src), Path(dst)
    files = safetensors_files(src)
    tensors = list_tensors(files)
    refusals = [r for r in map(policy.refusal, tensors) if r]
    if refusals:
        raise InputError(refusals[0] + (f" ({len(refusals) - 1} more like it)"
                                        if len(refusals) > 1 else ""))
    copy, skipped = other_files(src)

    tmp = _prepare_destination(dst, overwrite)
    report = CompressReport(dst=dst, skipped=[str(p) for p in skipped])
    manifest = Manifest(zipgen_version=__version__, source=str(src))
    try:
        shards = _ShardWriter(tmp, max_shard_bytes)
        bar = tqdm(total=sum(t.nbytes for t in tensors), unit="B", unit_scale=True,
                   desc="compressing", disable=not progress, leave=False)
        by_file: dict[Path, list] = {}
        for t in tensors:
            by_file.setdefault(t.file, []).append(t)
        for file, group in by_file.items():
            with safe_open(file, framework="pt") as f:
                for t in group:
                    bar.set_postfix_str(t.name[-40:], refresh=False)
                    entry, stored, tr = _process(t, f.get_tensor(t.name), policy, device)
                    entry.file = shards.add(stored)
                    manifest.tensors[t.name] = entry
                    report.tensors.append(tr)
                    bar.update(t.nbytes)
        shards.flush()
        bar.close()
        for rel in copy:
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / rel, tmp / rel)
        manifest.files = shards.sizes
        manifest.copied = [str(p) for p in copy]
        manifest.write(tmp)  # last: a folder with a manifest is complete
        _publish(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    report.copied = manifest.copied
    report.seconds = time.perf_counter() - started
    return report


def _process(t, tensor: torch.Tensor, policy: Policy, device):
    """-> (manifest entry, tensors to store, report row) for one source tensor."""
    start = time.perf_counter()
    original_bytes = tensor.numel() * tensor.element_size()
    if not policy.is_candidate(t):
        entry = TensorEntry(kind=RAW, file="", shape=list(tensor.shape),
                            dtype=str(tensor.dtype).removeprefix("torch."),
                            sha256=tensor_sha256(tensor), nbytes=original_bytes)
        row = TensorReport(t.name, tuple(tensor.shape), RAW, original_bytes, original_bytes,
                           time.perf_counter() - start)
        return entry, {t.name: tensor}, row

    cast_from = None
    if tensor.dtype != torch.bfloat16:
        cast_from = str(tensor.dtype).removeprefix("torch.")
        tensor = tensor.to(torch.bfloat16)
        original_bytes = tensor.numel() * 2  # ratios are against BF16
    ct = compress(tensor.to(device), name=t.name).cpu()
    stored = {t.name + STREAM_SUFFIX + k: v for k, v in ct.streams().items()}
    entry = TensorEntry(kind=COMPRESSED, file="", shape=list(ct.shape), dtype="bfloat16",
                        sha256=tensor_sha256(tensor), nbytes=ct.nbytes, base=ct.base,
                        coverage=ct.coverage, cast_from=cast_from)
    row = TensorReport(t.name, tuple(ct.shape), COMPRESSED, original_bytes, ct.nbytes,
                       time.perf_counter() - start, coverage=ct.coverage, cast_from=cast_from)
    return entry, stored, row
