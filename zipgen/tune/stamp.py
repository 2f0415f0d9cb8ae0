"""Give the records of a tuning database written before per-kernel hashes (env
"kernel_sha256", zipgen.codegen.digest) the hash of the kernel they timed.

    python -m zipgen.tune.stamp FOLDER [FOLDER ...]

Only records measured with today's headers (their env's hash of all headers equals today's)
are stamped: for them the kernel they timed is the one their configuration renders to now.
A switch record also gets the fused configurations it compared (detail "fused_configs"), found
as the zipgemm records of its shape whose medians are its fused times. Everything else is left
as it is. Each file is rewritten atomically, its lines in their order.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from ..bundle.verify import current_headers_sha256
from ..fileio import write_atomic
from .current import record_kernel_sha256
from .record import SWITCH_OP, Record


def _fused_configs(switch: Record, records: list[Record]) -> list[dict] | None:
    """The configs of the zipgemm records of the switch's shape timed at its fused times."""
    out = []
    for bucket, us in zip(switch.detail["buckets"], switch.detail["fused_us"]):
        match = [r for r in records if r.op == "zipgemm" and r.status == "ok"
                 and (r.arch, r.device_name, r.n, r.k, r.m_bucket)
                 == (switch.arch, switch.device_name, switch.n, switch.k, bucket)
                 and r.median_us == us]
        if not match:
            return None
        out.append(match[-1].config)
    return out


def stamp_file(path: Path, headers_sha256: str | None = None) -> tuple[int, int]:
    """Stamp one .jsonl file; (records stamped, records left as they were)."""
    headers_sha256 = headers_sha256 or current_headers_sha256()
    lines = path.read_text().splitlines()
    parsed = []
    for line in lines:
        try:
            parsed.append(Record.from_json(json.loads(line)) if line.strip() else None)
        except (ValueError, KeyError, TypeError, AttributeError):
            parsed.append(None)  # unreadable or stale: kept verbatim
    records = [r for r in parsed if r is not None]
    out, stamped = [], 0
    for line, record in zip(lines, parsed):
        if (record is None or "kernel_sha256" in record.env
                or record.env.get("headers_sha256") != headers_sha256):
            out.append(line)
            continue
        detail = record.detail
        if record.op == SWITCH_OP and "fused_configs" not in (detail or {}):
            configs = _fused_configs(record, records)
            if configs is None:
                out.append(line)
                continue
            detail = {**detail, "fused_configs": configs}
        digest = record_kernel_sha256(dataclasses.replace(record, detail=detail))
        if digest is None:  # a configuration that no longer renders (constraint records)
            out.append(line)
            continue
        d = record.to_json()
        d["detail"], d["env"] = detail, {**record.env, "kernel_sha256": digest}
        out.append(json.dumps(d, allow_nan=False))
        stamped += 1
    write_atomic(path, ("\n".join(out) + "\n").encode())
    return stamped, len(lines) - stamped


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folders", nargs="+", type=Path)
    args = ap.parse_args(argv)
    for folder in args.folders:
        for path in sorted(folder.rglob("*.jsonl")):
            stamped, left = stamp_file(path)
            print(f"{path}: {stamped} records stamped, {left} left as they were")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
