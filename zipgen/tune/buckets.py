"""M buckets: the token counts the tuner measures; any M is served by one of them."""
from __future__ import annotations

import bisect

M_BUCKETS = (1, 8, 16, 32, 64, 128, 256)
# Ops whose kernels do not depend on M (the decoder writes the whole weight matrix).
M_FREE_OPS = ("decode",)


def m_bucket(m: int) -> int:
    """The smallest bucket >= m, or the largest bucket for a larger M."""
    if m < 1:
        raise ValueError(f"M must be >= 1, got {m}")
    i = bisect.bisect_left(M_BUCKETS, m)
    return M_BUCKETS[min(i, len(M_BUCKETS) - 1)]


def bucket_for(op: str, m: int | None) -> int | None:
    """The bucket of a query: None for ops that do not depend on M."""
    return None if op in M_FREE_OPS or m is None else m_bucket(m)
