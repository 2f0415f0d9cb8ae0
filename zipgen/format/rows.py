"""Decoding chosen rows of a compressed matrix (an embedding lookup) with gathers only.

decompress() decodes whole matrices and reads strip boundaries back to the host. A lookup of a
few token rows must not: every step of a serving loop runs it, inside a CUDA graph. Here each
element finds its fallback entry on its own, so the whole decode is a fixed sequence of gathers
and integer ops on tensors whose shapes depend only on how many rows are asked for: no host
synchronisation, capturable in a CUDA graph. Two ways to find an element's entry:

* with `keys` (entry_keys(): strip * 1024 + position of every record, sorted; 4 bytes per
  fallback, ~0.07 bit per weight), one torch.searchsorted: a handful of kernels;
* without, a binary search over the strip's records (FORMAT.md §5: in increasing position, at
  most 1024 per strip, so 11 halvings always finish): no extra memory, ~350 small ops, too
  many for a serving loop's every step (ZipEmbedding keeps the keys).
"""
from __future__ import annotations

from functools import lru_cache

import torch

from ..errors import InputError
from .codec import checked_entries
from .entries import POSITION_BITS, POSITION_MASK, last_readable, unpack_entries
from .layout import (COLS_PER_STRIP, PLANES, ROWS_PER_STRIP, STRIP_ELEMS, code_bit_locations,
                     padded_shape)
from .tensor import CompressedTensor

# Index dtypes the row decoders take (F.embedding's and the narrower integers).
INDEX_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def check_indices(rows, device: torch.device) -> None:
    """InputError unless `rows` is a tensor of INDEX_DTYPES on `device`: the indices the custom
    op and the GPU row decoder take."""
    if not isinstance(rows, torch.Tensor) or rows.dtype not in INDEX_DTYPES:
        raise InputError(f"row indices must be an integer tensor, got "
                         f"{getattr(rows, 'dtype', type(rows).__name__)}")
    if rows.device != device:
        raise InputError(f"row indices are on {rows.device}, the compressed matrix on {device}")


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


@lru_cache(maxsize=None)
def _code_tables(device) -> tuple[torch.Tensor, torch.Tensor]:
    """code_bit_locations() on `device`, made once: a copy from the host is not allowed while
    a CUDA graph is being captured (a ZipEmbedding in a captured step)."""
    return tuple(t.to(device) for t in code_bit_locations())


# A strip holds at most 1024 records; 11 halvings narrow any range of them to one place.
_SEARCH_STEPS = 11


def entry_keys(ct: CompressedTensor) -> torch.Tensor:
    """strip * 1024 + position of every fallback record, sorted (the stream's order), int32
    where it fits; on the tensor's device. Checks the entries (FormatError if corrupt) and reads
    values back to the host: build it before CUDA graph capture."""
    keys = checked_entries(ct)[3]
    return keys.to(torch.int32) if ct.num_strips * STRIP_ELEMS < 2**31 else keys


def decode_rows(ct: CompressedTensor, rows: torch.Tensor,
                keys: torch.Tensor | None = None) -> torch.Tensor:
    """BF16 [*rows.shape, K]: rows `rows` of the matrix (integer indices in 0 .. N-1, any order,
    repeats allowed), bit for bit as decompress() gives them, on the tensor's device. Indices
    are not range-checked on the device (like F.embedding on a GPU): an out-of-range index
    gives an indexing error or device assert. `keys`: entry_keys(ct), for the fast path."""
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
    parts = [_decode(ct, flat[i:i + _ROWS_PER_PASS], keys)
             for i in range(0, flat.numel(), _ROWS_PER_PASS)]
    out = torch.cat(parts) if parts else torch.empty((0, k), dtype=torch.int16, device=ct.device)
    return out.view(torch.bfloat16).view(*rows.shape, k)


def _decode(ct: CompressedTensor, rows: torch.Tensor, keys: torch.Tensor | None) -> torch.Tensor:
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
    words = ct.planes[strips].to(torch.int64) & 0xFFFFFFFF  # [R, S, 3 words, 32 lanes]
    bit = (element >> 1) + 16 * (element & 1)  # position of each element in its lane
    mine = words.gather(3, lane.unsqueeze(2).expand(*strips.shape, 3, COLS_PER_STRIP))
    code = torch.zeros_like(mine[:, :, 0])  # [R, S, 64]
    code_word, code_bit = _code_tables(ct.device)
    for p in range(PLANES):  # bit p of each code, from its word (format version 3)
        word = code_word[bit, p].expand(*strips.shape, COLS_PER_STRIP)  # [R, S, 64]
        value = mine.gather(2, word.unsqueeze(2)).squeeze(2)
        code |= ((value >> code_bit[bit, p]) & 1) << p

    exponent = code + ct.base
    position = 32 * lane + bit  # [R, 1, 64]
    if keys is None:
        found, record = _search_strips(ct, strips, position)
    elif keys.numel():
        query = (s * STRIP_ELEMS + position).to(keys.dtype)  # [R, S, 64]
        index = torch.searchsorted(keys, query).clamp_(max=keys.numel() - 1)
        found = keys[index] == query
        record = unpack_entries(ct.fallback_entries, index)
    else:  # no fallbacks at all
        found = record = None
    if found is not None:
        exponent = torch.where(found, record >> POSITION_BITS, exponent)

    value = ((sign_mantissa & 0x80) << 8) | (exponent.to(torch.int16) << 7) | (sign_mantissa & 0x7F)
    return value.view(rows.numel(), -1)[:, :k]


def _search_strips(ct: CompressedTensor, strips: torch.Tensor, position: torch.Tensor):
    """(found, record) per element: the first record of its strip at or past its position, by
    binary search, and whether that record names it."""
    first = ct.fallback_offsets[strips].to(torch.int64).unsqueeze(2)  # [R, S, 1]
    end = ct.fallback_offsets[strips + 1].to(torch.int64).unsqueeze(2)
    lo = first.expand(*strips.shape, COLS_PER_STRIP)
    hi = end.expand_as(lo)
    stream = ct.fallback_entries
    last = last_readable(stream)  # records past it would read past the stream; the search
    for _ in range(_SEARCH_STEPS):  # masks them
        mid = (lo + hi) >> 1
        inside = mid < hi
        right = inside & ((unpack_entries(stream, mid.clamp(max=last)) & POSITION_MASK) < position)
        lo = torch.where(right, mid + 1, lo)
        hi = torch.where(inside & ~right, mid, hi)
    record = unpack_entries(stream, lo.clamp(max=last))
    return (lo < end) & ((record & POSITION_MASK) == position), record
