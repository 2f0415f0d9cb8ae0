"""Which tensors get compressed. Model-agnostic: decided by dtype, shape and name globs only."""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from .source import SourceTensor

MIN_SIDE = 64  # smaller matrices gain little and are mostly not GEMM weights
FLOAT_DTYPES = {"BF16", "F16", "F32", "F64"}
# Embedding tables are gathered, not multiplied, so the fused GEMM never reads them.
DEFAULT_EXCLUDE = ("*embed*", "*.wte.*", "*.wpe.*")


@dataclass(frozen=True)
class Policy:
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE
    cast_bf16: bool = False

    def is_candidate(self, t: SourceTensor) -> bool:
        """A 2-D float matrix with both sides >= 64 whose name the globs select."""
        return (t.dtype in FLOAT_DTYPES and len(t.shape) == 2 and min(t.shape) >= MIN_SIDE
                and any(fnmatch.fnmatchcase(t.name, g) for g in self.include)
                and not any(fnmatch.fnmatchcase(t.name, g) for g in self.exclude))

    def refusal(self, t: SourceTensor) -> str | None:
        """Why a candidate cannot be compressed as it is, or None."""
        if self.is_candidate(t) and t.dtype != "BF16" and not self.cast_bf16:
            return (f"tensor {t.name!r} in {t.file.name} is {t.dtype}, not BF16; TCA-TBE is "
                    f"lossless for BF16 only. Pass --cast-bf16 to cast it first (the cast "
                    f"itself is lossy), or --exclude it to keep it raw")
        return None
