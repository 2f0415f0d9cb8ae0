"""Whether a tuning record still describes a kernel that exists: the hash of the kernel it timed
(env "kernel_sha256", zipgen.codegen.digest) against the hash of that configuration's kernel
today. Records written before those hashes fall back to the hash of all headers."""
from __future__ import annotations

from ..codegen import OPS, DecodeConfig, ZipGemmConfig
from ..codegen.digest import combined_sha256, kernel_sha256
from ..errors import InputError
from .record import SWITCH_OP, Record


def switch_sha256(arch: str, decode_config: dict, fused_configs) -> str:
    """A switch point compares the decoder with the fused winners: it holds while they all do."""
    return combined_sha256([kernel_sha256("decode", arch, DecodeConfig(**decode_config))]
                           + [kernel_sha256("zipgemm", arch, ZipGemmConfig(**c))
                              for c in fused_configs])


def record_kernel_sha256(record: Record) -> str | None:
    """The hash of the kernel(s) the record's configuration renders to today; None when the
    configuration no longer exists (renamed fields, invalid) or the record does not say."""
    try:
        if record.op in OPS:
            return kernel_sha256(record.op, record.arch, OPS[record.op](**record.config))
        detail = record.detail or {}
        if record.op == SWITCH_OP and {"decode_config", "fused_configs"} <= detail.keys():
            return switch_sha256(record.arch, detail["decode_config"], detail["fused_configs"])
    except (TypeError, InputError):
        return None
    return None


def is_current(record: Record, headers_sha256: str) -> bool:
    """Whether the record timed the kernel its configuration renders to today."""
    stamp = record.env.get("kernel_sha256")
    if stamp is not None:
        return stamp == record_kernel_sha256(record)
    return record.measured_with(headers_sha256)
