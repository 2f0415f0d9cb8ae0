"""The fallback entry stream of format version 2 (docs/FORMAT.md §5): one 18-bit record per
fallback, bits 0-9 its position in the strip (32 lane + plane bit), bits 10-17 its exponent,
record j at bits 18 j .. 18 j + 17 of a little-endian byte stream."""
from __future__ import annotations

import torch

from ..errors import FormatError
from .layout import STREAM_ALIGN

ENTRY_BITS = 18
POSITION_BITS = 10
POSITION_MASK = (1 << POSITION_BITS) - 1


def entry_stream_bytes(count: int) -> int:
    """Bytes of a stream of `count` records: padded to a multiple of 16 with at least 8 bytes
    past the last record's first byte, so that a reader may load the two aligned 32-bit words
    holding any record."""
    return -(-(ENTRY_BITS * count // 8 + 8) // STREAM_ALIGN) * STREAM_ALIGN


def make_records(position: torch.Tensor, exponent: torch.Tensor) -> torch.Tensor:
    """int64 records from positions (0..1023) and exponents (0..255)."""
    return position.to(torch.int64) | (exponent.to(torch.int64) << POSITION_BITS)


def pack_entries(records: torch.Tensor) -> torch.Tensor:
    """int64 [T] records (< 2^18) -> the uint8 stream, on the records' device."""
    total = records.numel()
    stream = torch.zeros(entry_stream_bytes(total), dtype=torch.int32, device=records.device)
    if total:
        bit = torch.arange(total, dtype=torch.int64, device=records.device) * ENTRY_BITS
        shifted = records << (bit & 7)  # < 2^25: four bytes
        first = bit >> 3
        for j in range(4):  # records never share a bit, so adding their bytes is or-ing them
            stream.index_add_(0, first + j, ((shifted >> (8 * j)) & 0xFF).to(torch.int32))
    return stream.to(torch.uint8)


def unpack_entries(stream: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The int64 records at int64 indices `index` (any shape) of a pack_entries stream; pure
    gathers, so usable inside CUDA graph capture. Indices must lie inside the stream."""
    bit = index * ENTRY_BITS
    byte = bit >> 3
    word = stream[byte].to(torch.int64)
    for j in range(1, 4):
        word |= stream[byte + j].to(torch.int64) << (8 * j)
    return (word >> (bit & 7)) & ((1 << ENTRY_BITS) - 1)


def read_entries(stream: torch.Tensor, count: int) -> torch.Tensor:
    """Records 0 .. count - 1, checking that the stream holds them."""
    if count and ENTRY_BITS * (count - 1) // 8 + 3 >= stream.numel():
        raise FormatError(f"fallback entry stream of {stream.numel()} bytes ends before record "
                          f"{count - 1}: the data is truncated")
    return unpack_entries(stream, torch.arange(count, dtype=torch.int64, device=stream.device))
