"""The fallback entry stream (docs/FORMAT.md §5; format versions 2 and 3): one 18-bit record
per fallback, bits 0-9 its position in the strip (32 lane + b, b = r + 16 e), bits 10-17 its
exponent, record j at bits 18 j .. 18 j + 17 of a little-endian byte stream."""
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


def last_readable(stream: torch.Tensor) -> int:
    """The largest record index unpack_entries may be given for this stream without reading
    past its end (callers clamp speculative indices to it and mask the results)."""
    return max(0, (stream.numel() // 4 - 2) * 32 // ENTRY_BITS)


def unpack_entries(stream: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The int64 records at int64 indices `index` (any shape, each <= last_readable(stream))
    of a pack_entries stream: two gathers of the 32-bit words holding each record, so usable
    inside CUDA graph capture."""
    words = _words(stream)
    bit = index * ENTRY_BITS
    w = bit >> 5
    pair = (words[w].to(torch.int64) & 0xFFFFFFFF) | (words[w + 1].to(torch.int64) << 32)
    return (pair >> (bit & 31)) & ((1 << ENTRY_BITS) - 1)  # bits past 63 never needed: <= 49


def _words(stream: torch.Tensor) -> torch.Tensor:
    """The stream as little-endian int32 words (a view when its start is 4-byte aligned)."""
    if stream.numel() % 4:
        raise FormatError(f"fallback entry stream of {stream.numel()} bytes is not a whole "
                          f"number of 32-bit words: the data is truncated")
    try:
        return stream.view(torch.int32)
    except RuntimeError:  # a view starting off a 4-byte boundary: copy
        return stream.clone().view(torch.int32)


def read_entries(stream: torch.Tensor, count: int) -> torch.Tensor:
    """Records 0 .. count - 1, checking that the stream holds them."""
    if count and count - 1 > last_readable(stream):
        raise FormatError(f"fallback entry stream of {stream.numel()} bytes ends before record "
                          f"{count - 1}: the data is truncated")
    return unpack_entries(stream, torch.arange(count, dtype=torch.int64, device=stream.device))
