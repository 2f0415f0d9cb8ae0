"""One tuning measurement: what was measured (problem), where (target), with which configuration,
how it went (status) and how fast (only when it ran and was right)."""
from __future__ import annotations

import datetime
import math
from dataclasses import dataclass, field

from .. import __version__
from ..errors import InputError
from ..format import FORMAT_VERSION
from .buckets import M_FREE_OPS, m_bucket

SCHEMA_VERSION = 1
STATUSES = ("ok", "constraint", "compile", "runtime", "correctness", "timeout")
SWITCH_OP = "switch"  # the largest M for which the fused kernel beat decode + cuBLAS
TIMED_OPS = ("zipgemm", "decode")  # their ok records carry a median time


class StaleRecord(ValueError):
    """A record written under another schema or format version: skipped, never an error."""


@dataclass(frozen=True)
class Record:
    op: str
    n: int
    k: int
    m: int | None  # the M measured (None for decode and switch, which do not depend on M)
    arch: str
    device_name: str
    sm_count: int
    config: dict
    status: str
    median_us: float | None = None
    p10_us: float | None = None
    p90_us: float | None = None
    error: str | None = None
    env: dict = field(default_factory=dict)
    detail: dict | None = None  # e.g. the switch point's per-bucket times
    m_bucket: int | None = None  # derived from m when not given
    dtypes: str = "bf16"
    format_version: int = FORMAT_VERSION

    def __post_init__(self):
        if self.status not in STATUSES:
            raise InputError(f"status {self.status!r} is not one of {', '.join(STATUSES)}")
        times = (self.median_us, self.p10_us, self.p90_us)
        # A placeholder time on a failure once made TVM pick failures as "best": never store one.
        if self.status != "ok" and any(t is not None for t in times):
            raise InputError(f"a {self.status} record carries no time (got {times})")
        if self.status != "ok" and not self.error:
            raise InputError(f"a {self.status} record needs its error text")
        if self.status == "ok" and self.op in TIMED_OPS and self.median_us is None:
            raise InputError(f"an ok {self.op} record needs median_us")
        if any(t is not None and not (math.isfinite(t) and t > 0) for t in times):
            raise InputError(f"times must be finite and positive, got {times}")
        if None not in times and not self.p10_us <= self.median_us <= self.p90_us:
            raise InputError(f"need p10 <= median <= p90, got {times}")
        if self.op not in M_FREE_OPS and self.op != SWITCH_OP and self.m is not None:
            expected = m_bucket(self.m)
            if self.m_bucket is None:
                object.__setattr__(self, "m_bucket", expected)
            elif self.m_bucket != expected:
                raise InputError(f"M = {self.m} belongs to bucket {expected}, not {self.m_bucket}")

    @property
    def key(self) -> tuple:
        """What a winner is chosen per: op, target, shape and M bucket."""
        return (self.op, self.arch, self.device_name, self.n, self.k, self.m_bucket)

    @property
    def time(self) -> str:
        return self.env.get("time", "")

    def measured_with(self, headers_sha256: str) -> bool:
        """Whether this record timed the kernels of these headers (a record without the hash,
        written by hand or by an older tool, counts as current)."""
        return self.env.get("headers_sha256") in (None, headers_sha256)

    def to_json(self) -> dict:
        return {
            "schema": SCHEMA_VERSION,
            "problem": {"op": self.op, "n": self.n, "k": self.k, "m": self.m,
                        "m_bucket": self.m_bucket, "dtypes": self.dtypes,
                        "format_version": self.format_version},
            "target": {"arch": self.arch, "device_name": self.device_name,
                       "sm_count": self.sm_count},
            "config": self.config, "status": self.status, "median_us": self.median_us,
            "p10_us": self.p10_us, "p90_us": self.p90_us, "error": self.error,
            "env": self.env, "detail": self.detail,
        }

    @classmethod
    def from_json(cls, d: dict) -> "Record":
        if d.get("schema") != SCHEMA_VERSION:
            raise StaleRecord(f"schema version {d.get('schema')!r} (this zipgen reads "
                              f"{SCHEMA_VERSION})")
        p, t = d["problem"], d["target"]
        if p.get("format_version") != FORMAT_VERSION:
            raise StaleRecord(f"TCA-TBE format version {p.get('format_version')!r} (this zipgen "
                              f"writes {FORMAT_VERSION})")
        return cls(op=p["op"], n=int(p["n"]), k=int(p["k"]), m=p["m"], m_bucket=p["m_bucket"],
                   dtypes=p["dtypes"], format_version=p["format_version"], arch=t["arch"],
                   device_name=t["device_name"], sm_count=int(t["sm_count"]),
                   config=dict(d["config"]), status=d["status"], median_us=d.get("median_us"),
                   p10_us=d.get("p10_us"), p90_us=d.get("p90_us"), error=d.get("error"),
                   env=dict(d.get("env") or {}), detail=d.get("detail"))


def environment(source_sha256: str | None = None, headers_sha256: str | None = None,
                kernel_sha256: str | None = None) -> dict:
    """Versions, the kernel's source hashes and the time, for a record's env. kernel_sha256:
    the timed kernel's body and the headers it includes (zipgen.codegen.digest), which decides
    whether the record is current (zipgen.tune.current); headers_sha256 (all headers) is kept
    for records written before it."""
    import torch

    from ..compile import nvrtc_version
    try:
        nvrtc = ".".join(map(str, nvrtc_version()))
    except Exception:  # no NVRTC here: the record still says everything else
        nvrtc = None
    return {"zipgen": __version__, "torch": torch.__version__, "nvrtc": nvrtc,
            "source_sha256": source_sha256, "headers_sha256": headers_sha256,
            "kernel_sha256": kernel_sha256,
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds")}
