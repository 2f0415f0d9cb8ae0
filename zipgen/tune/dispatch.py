"""Which tuned configuration a runtime call uses, from the tuning database.

The lookup ladder (Kernel Launcher's wisdom files, vLLM's per-device tables): the winner measured
on this exact device → on another device of the same arch → at the nearest tuned M bucket for the
shape (this device first) → nothing, and the runtime falls back to its default with a one-time
warning naming the command that would tune it. A record of another arch is never returned.
"""
from __future__ import annotations

import math
import threading
import warnings

import torch

from ..codegen import OPS, arch_for_capability, arch_traits
from .buckets import bucket_for
from .current import is_current
from .db import TuningDBWarning, read_folders, read_records, winners
from .record import SWITCH_OP, Record

_lock = threading.Lock()
_folders: list | None = None  # None: db.read_folders() at first use
_index: dict | None = None  # winners of the runtime database, loaded once
_choices: dict[tuple, object] = {}  # (op, device index, N, K, M bucket) -> config
_switches: dict[tuple, int] = {}  # (device index, N, K) -> largest fused M
_targets: dict[int, tuple[str, str]] = {}  # device index -> (device name, arch)
_warned: set[tuple] = set()


def reload(folders=None) -> None:
    """Forget the loaded database and every cached choice; read `folders` (default:
    db.read_folders()) at the next lookup. Call it after tuning in the same process."""
    global _folders, _index
    with _lock:
        _folders, _index = (list(folders) if folders is not None else None), None
        _choices.clear()
        _switches.clear()
        _warned.clear()


def current_kernels(records, headers_sha256: str | None = None) -> list[Record]:
    """The records that timed today's kernels. A record of a kernel whose code has changed
    since timed a kernel that no longer exists: its ranking of configurations says nothing
    about the present one, so it is dropped with one warning (zipgen.tune.current)."""
    if headers_sha256 is None:
        from ..bundle.verify import current_headers_sha256
        headers_sha256 = current_headers_sha256()
    kept = [r for r in records if is_current(r, headers_sha256)]
    if len(kept) < len(records):
        warnings.warn(f"zipgen: ignored {len(records) - len(kept)} tuning records measured with "
                      f"other kernel sources (the templates changed since); re-run `zipgen tune` "
                      f"to measure the current kernels", TuningDBWarning, stacklevel=4)
    return kept


def _winners() -> dict:
    global _index
    if _index is None:
        with _lock:
            if _index is None:
                folders = _folders if _folders is not None else read_folders()
                _index = winners(current_kernels(read_records(folders)))
    return _index


def _config(op: str, record: Record, arch: str):
    """The record's config as a config object, or None if it no longer fits this zipgen
    (renamed fields, or invalid for the arch)."""
    try:
        cfg = OPS[op](**record.config)
    except TypeError:
        return None
    return None if cfg.problems(arch_traits(arch)) else cfg


def _fastest(records):
    return sorted(records, key=lambda r: r.median_us)


def lookup(op: str, device_name: str, arch: str, n: int, k: int, m: int | None = None,
           index: dict | None = None):
    """(config, source) for op on an N x K weight and M tokens; source is "exact", "arch",
    "nearest-m" or "default" (config None). `index`: db.winners(...) (default: the runtime's)."""
    index = _winners() if index is None else index
    bucket = bucket_for(op, m)
    same = [r for r in index.values()  # same arch only: another arch's cubin may not even run
            if r.op == op and r.arch == arch and r.n == n and r.k == k]
    mine = [r for r in same if r.device_name == device_name]
    others = [r for r in same if r.device_name != device_name]
    for source, pool in (("exact", mine), ("arch", others)):
        for r in _fastest([r for r in pool if r.m_bucket == bucket]):
            if (cfg := _config(op, r, arch)) is not None:
                return cfg, source
    if bucket is not None:
        for pool in (mine, others):
            # log distance; a tie goes to the larger bucket (its CTAs decode W fewer times)
            for r in sorted(pool, key=lambda r: (abs(math.log2(r.m_bucket / bucket)), -r.m_bucket,
                                                 r.median_us)):
                if (cfg := _config(op, r, arch)) is not None:
                    return cfg, "nearest-m"
    return None, "default"


def switch_lookup(device_name: str, arch: str, n: int, k: int, index: dict | None = None):
    """(largest M for which the fused kernel won, source) for an N x K weight, or (None,
    "default"): this device's switch record, else one of another device of the same arch."""
    index = _winners() if index is None else index
    same = [r for r in index.values()
            if r.op == SWITCH_OP and r.arch == arch and r.n == n and r.k == k]
    for source, pool in (("exact", [r for r in same if r.device_name == device_name]),
                         ("arch", [r for r in same if r.device_name != device_name])):
        if pool:
            return int(max(pool, key=lambda r: r.time).config["fused_max_m"]), source
    return None, "default"


def _target(index: int) -> tuple[str, str]:
    target = _targets.get(index)
    if target is None:
        target = _targets[index] = (torch.cuda.get_device_name(index),
                                    arch_for_capability(torch.cuda.get_device_capability(index)))
    return target


def _index_of(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def choose(op: str, device: torch.device, n: int, k: int, m: int | None, default):
    """The config the runtime runs `op` with: tuned, else default(m, n, k) with a one-time
    warning. Cached per (op, device, N, K, M bucket): a hit is a dict lookup."""
    key = (op, _index_of(device), n, k, bucket_for(op, m))
    cfg = _choices.get(key)
    if cfg is None:
        name, arch = _target(key[1])
        cfg, _ = lookup(op, name, arch, n, k, m)
        if cfg is None:
            cfg = default(m, n, k)
            _warn_missing(op, name, arch, n, k, key[4])
        _choices[key] = cfg
    return cfg


def fused_max_m(device: torch.device, n: int, k: int, default: int) -> int:
    """The tuned fused-vs-decode switch point for this device and shape, else `default`."""
    key = (_index_of(device), n, k)
    value = _switches.get(key)
    if value is None:
        name, arch = _target(key[0])
        tuned, _ = switch_lookup(name, arch, n, k)
        value = _switches[key] = default if tuned is None else tuned
    return value


def _warn_missing(op, device_name, arch, n, k, bucket) -> None:
    if (op, device_name, n, k) in _warned:
        return
    _warned.add((op, device_name, n, k))
    folders = _folders if _folders is not None else read_folders()
    where = ", ".join(map(str, folders)) or "no folder"
    fix = f"zipgen tune --arch {arch} --shape {n}x{k} --op {op}"
    warnings.warn(f"zipgen: no tuned {op} configuration for N={n}, K={k}"
                  f"{'' if bucket is None else f', M bucket {bucket}'} on {device_name} ({arch}) "
                  f"in the tuning database ({where}); using the default. To tune it: {fix}",
                  TuningDBWarning, stacklevel=4)
