"""Decoding chosen rows of a compressed matrix (an embedding lookup) with gathers only.

decompress() decodes whole matrices, and its fallback bookkeeping reads strip boundaries back to
the host. A lookup of a few token rows must not: every step of a serving loop runs it, inside a
CUDA graph. Here each element finds its fallback exponent on its own (FORMAT.md §5):

    rank = fallback_offsets[s] + (fallbacks of lanes < l in strip s) + popc(fb_l & ((1 << b) - 1))

so the whole decode is a fixed sequence of gathers and integer ops on tensors whose shapes depend
only on how many rows are asked for: no host synchronisation, capturable in a CUDA graph.
"""
from __future__ import annotations

from functools import lru_cache

import torch

from ..errors import InputError
from .codec import _popcount_table
from .layout import COLS_PER_STRIP, ROWS_PER_STRIP, STRIP_ELEMS, padded_shape
from .tensor import CompressedTensor

# Rows decoded per pass: bounds the intermediates (~40 bytes per element) for long prompts.
_ROWS_PER_PASS = 256


@lru_cache(maxsize=None)
def _strip_tables(device) -> tuple[torch.Tensor, torch.Tensor]:
    """(lane, element) int64 [16 rows, 64 columns]: where element (row, col) of a strip lives
    (FORMAT.md §4: row = g + 8 (f & 1), col = 16 t + 8 (f >> 1) + 2 q + e, lane = 4 g + q,
    element i = 8 t + 2 f + e)."""
    row = torch.arange(ROWS_PER_STRIP).view(-1, 1)
    col = torch.arange(COLS_PER_STRIP).view(1, -1)
    g, f_low = row % 8, row // 8
    t, f_high, q, e = col // 16, (col % 16) // 8, (col % 8) // 2, col % 2
    lane = 4 * g + q
    element = 8 * t + 2 * (f_low + 2 * f_high) + e
    return lane.to(device), element.to(device)


def _popcount(x: torch.Tensor) -> torch.Tensor:
    """Set bits of each non-negative int64, through the byte table the codec uses."""
    table = _popcount_table(x.device)
    as_bytes = x.contiguous().view(torch.uint8).to(torch.int64)
    return table[as_bytes].view(*x.shape, 8).sum(-1, dtype=torch.int64)


def decode_rows(ct: CompressedTensor, rows: torch.Tensor) -> torch.Tensor:
    """BF16 [*rows.shape, K]: rows `rows` of the matrix (integer indices in 0 .. N-1, any order,
    repeats allowed), bit for bit as decompress() gives them, on the tensor's device. Indices
    are not range-checked on the device (like F.embedding on a GPU): an out-of-range index
    gives an indexing error or device assert."""
    if not isinstance(ct, CompressedTensor):
        raise InputError(f"expected a CompressedTensor, got {type(ct).__name__}")
    if not isinstance(rows, torch.Tensor) or rows.dtype.is_floating_point or rows.is_complex():
        raise InputError(f"row indices must be an integer tensor, got "
                         f"{getattr(rows, 'dtype', type(rows).__name__)}")
    if rows.device != ct.device:
        raise InputError(f"row indices are on {rows.device}, the compressed matrix on "
                         f"{ct.device}")
    flat = rows.reshape(-1).to(torch.int64)
    k = ct.shape[1]
    parts = [_decode(ct, flat[i:i + _ROWS_PER_PASS]) for i in range(0, flat.numel(), _ROWS_PER_PASS)]
    out = torch.cat(parts) if parts else torch.empty((0, k), dtype=torch.int16, device=ct.device)
    return out.view(torch.bfloat16).view(*rows.shape, k)


def _decode(ct: CompressedTensor, rows: torch.Tensor) -> torch.Tensor:
    """int16 [R, K] for int64 row indices [R]."""
    n, k = ct.shape
    strips_per_row = padded_shape(n, k)[1] // COLS_PER_STRIP
    lane_table, element_table = _strip_tables(ct.device)
    lane = lane_table[rows % ROWS_PER_STRIP].unsqueeze(1)  # [R, 1, 64]
    element = element_table[rows % ROWS_PER_STRIP].unsqueeze(1)
    strips = ((rows // ROWS_PER_STRIP).unsqueeze(1) * strips_per_row
              + torch.arange(strips_per_row, device=ct.device))  # [R, S]
    s = strips.unsqueeze(2)  # [R, S, 1]

    sign_mantissa = ct.sign_mantissa[s * STRIP_ELEMS + 512 * (element >> 4) + 16 * lane
                                     + (element & 15)].to(torch.int16)  # [R, S, 64]
    words = ct.planes[strips].to(torch.int64) & 0xFFFFFFFF  # [R, S, 3 planes, 32 lanes]
    bit = (element >> 1) + 16 * (element & 1)  # plane bit of each element
    mine = words.gather(3, lane.unsqueeze(2).expand(*strips.shape, 3, COLS_PER_STRIP))
    mine = (mine >> bit.unsqueeze(2)) & 1  # [R, S, 3, 64]
    code = mine[:, :, 0] | (mine[:, :, 1] << 1) | (mine[:, :, 2] << 2)

    # fallbacks: the rank of each element's exponent in the stream
    fallback_words = ~(words[:, :, 0] | words[:, :, 1] | words[:, :, 2]) & 0xFFFFFFFF
    per_lane = _popcount(fallback_words)  # [R, S, 32]
    lanes_below = per_lane.cumsum(2) - per_lane
    own = fallback_words.gather(2, lane.expand(*strips.shape, COLS_PER_STRIP))
    rank = (ct.fallback_offsets[strips].to(torch.int64).unsqueeze(2)
            + lanes_below.gather(2, lane.expand(*strips.shape, COLS_PER_STRIP))
            + _popcount(own & ((1 << bit) - 1)))
    exponent = (code + ct.base) & 0xFF
    stream = ct.fallback_exponents
    if stream.numel():  # a code of 0 takes its exponent from the stream
        stored = stream[rank.clamp(max=stream.numel() - 1)].to(torch.int64)
        exponent = torch.where(code == 0, stored, exponent)

    value = ((sign_mantissa & 0x80) << 8) | (exponent.to(torch.int16) << 7) | (sign_mantissa & 0x7F)
    return value.view(rows.numel(), -1)[:, :k]
