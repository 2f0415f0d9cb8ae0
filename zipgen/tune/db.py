"""The tuning database: folders of JSON Lines files, one Record per line, append-only.

Writers append whole lines with a single O_APPEND write under a file lock, so two tuners can
share a file and a reader never needs the lock. Reading is forgiving: corrupt lines and records
of another schema or format version are skipped with one warning per file, never an error.
"""
from __future__ import annotations

import json
import os
import re
import warnings
from collections import Counter
from pathlib import Path

from filelock import FileLock

from ..compile.paths import cache_root
from .record import SWITCH_OP, Record, StaleRecord

_SOURCE_TREE_DB = Path(__file__).resolve().parents[2] / "tuning_db"


class TuningDBWarning(UserWarning):
    """Something in a tuning database was skipped, or a tuned configuration is missing."""


def shipped_folder() -> Path | None:
    """tuning_db/ of a source checkout, else the copy a wheel installs as zipgen/tuning_db/."""
    for folder in (_SOURCE_TREE_DB, Path(__file__).resolve().parents[1] / "tuning_db"):
        if folder.is_dir():
            return folder
    return None


def user_folder() -> Path:
    return cache_root() / "tuning"


def read_folders() -> list[Path]:
    """What the runtime reads: $ZIPGEN_TUNING_DB alone when set, else the shipped winners and
    the user's own measurements."""
    env = os.environ.get("ZIPGEN_TUNING_DB")
    if env:
        return [Path(env).expanduser()]
    return [f for f in (shipped_folder(), user_folder()) if f is not None]


def write_folder() -> Path:
    """Where `zipgen tune` writes without --db."""
    env = os.environ.get("ZIPGEN_TUNING_DB")
    return Path(env).expanduser() if env else user_folder()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_") or "unknown"


class TuningDB:
    """One database folder."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder).expanduser()

    def path_for(self, arch: str, device_name: str) -> Path:
        """Each target gets its own file: winners are contributed per card (tuning_db/README.md)."""
        return self.folder / f"{arch}-{_slug(device_name)}.jsonl"

    def append(self, record: Record, fsync: bool = False) -> Path:
        path = self.path_for(record.arch, record.device_name)
        line = (json.dumps(record.to_json(), allow_nan=False) + "\n").encode()
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock"):
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    line = b"\n" + line  # a writer died mid-line: keep our record on its own line
                written = os.write(fd, line)  # one write: readers see whole lines
                while written < len(line):  # only on a full disk or a signal
                    written += os.write(fd, line[written:])
                if fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
        return path

    def read(self) -> list[Record]:
        return read_records([self.folder])


def read_records(folders) -> list[Record]:
    """Every readable record under the folders (*.jsonl, in name order, then line order)."""
    records = []
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*.jsonl")):
            records += _read_file(path)
    return records


def _read_file(path: Path) -> list[Record]:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        warnings.warn(f"tuning database {path} is unreadable and was ignored: {exc}",
                      TuningDBWarning, stacklevel=3)
        return []
    records, skipped, first = [], Counter(), {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(Record.from_json(json.loads(line)))
        except StaleRecord as exc:
            skipped["stale"] += 1
            first.setdefault("stale", f"line {number}: {exc}")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            skipped["corrupt"] += 1
            first.setdefault("corrupt", f"line {number}: {type(exc).__name__}: {exc}")
    if skipped:
        what = "; ".join(f"{count} {kind} (first at {first[kind]})" for kind, count in skipped.items())
        warnings.warn(f"tuning database {path}: skipped {what}", TuningDBWarning, stacklevel=3)
    return records


def config_key(config: dict) -> str:
    return json.dumps(config, sort_keys=True)


def latest_per_config(records) -> dict[tuple, Record]:
    """(record key, config) -> its latest record: a retune (after a generator change, say)
    replaces the older measurement of the same configuration."""
    latest = {}
    for r in sorted(records, key=lambda r: r.time):  # stable: file order breaks ties
        latest[(r.key, config_key(r.config))] = r
    return latest


def ranked(records) -> dict[tuple, list[Record]]:
    """Per (op, arch, device_name, N, K, M bucket), its timed ok records (the latest of each
    configuration), fastest first: a study's runners-up as well as its winner."""
    out: dict[tuple, list[Record]] = {}
    for (key, _), r in latest_per_config(records).items():
        if r.status == "ok" and r.op != SWITCH_OP:
            out.setdefault(key, []).append(r)
    for rs in out.values():
        rs.sort(key=lambda r: r.median_us)
    return out


def winners(records, op: str | None = None) -> dict[tuple, Record]:
    """The best ok record per (op, arch, device_name, N, K, M bucket): the fastest for timed
    ops, the latest for the switch point. Failures never win: they carry no time."""
    best: dict[tuple, Record] = {}
    for (key, _), r in latest_per_config(records).items():
        if r.status != "ok" or (op is not None and r.op != op):
            continue
        old = best.get(key)
        if r.op == SWITCH_OP:
            if old is None or r.time >= old.time:
                best[key] = r
        elif old is None or r.median_us < old.median_us:
            best[key] = r
    return best
