"""A proposed TCA-TBE version 2 (docs/ZIPGEMM.md, next steps; not yet the checkpoint format):
the codec in torch ops, CPU or GPU, bit-exact.

Differences from version 1 (docs/FORMAT.md):
* the 3-bit code names one of 8 consecutive exponents, lo .. lo + 7 (version 1 reserves code 0
  as the fallback escape and covers 7), so `base` = lo and exponent = base + code everywhere;
* an element outside the window (a fallback) is stored with code 0 and listed in its strip's
  entries: 18 bits each, bits 0-9 its position p = 32 lane + b (b = plane bit r + 16 e, the
  element's place in the lane's registers), bits 10-17 its exponent. Entry j of strip s is the
  18-bit record at bit 18 (offsets[s] + j) of the little-endian entry stream.

A GPU warp can then patch a strip's fallbacks cooperatively, lane t taking entry t, with no
scan over the lanes and no per-lane loop; the wider window halves the fallbacks, which pays
for the longer entries (benchmarks/format_v2_estimate.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import FormatError
from .codec import (_check_input, _lane_to_sm_order, _pack_planes, _padded_rows,
                    _sm_to_lane_order, _to_bit_order, _to_element_order, _unpack_codes)
from .layout import LANES, PLANES, STREAM_ALIGN, STRIP_ELEMS, from_lane_order, num_strips, \
    padded_shape, to_lane_order

WINDOW_V2 = 8
ENTRY_BITS = 18
POSITION_BITS = 10


@dataclass(frozen=True)
class CompressedTensorV2:
    shape: tuple[int, int]
    base: int                   # exponent of code 0: the window is base .. base + 7
    sign_mantissa: torch.Tensor  # uint8 [S * 1024], as in version 1
    planes: torch.Tensor         # int32 [S, 3, 32], as in version 1
    entries: torch.Tensor        # uint8: 18-bit fallback records, padded to 16 bytes + slack
    offsets: torch.Tensor        # int32 [S + 1]: first entry of each strip, then the total

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size()
                   for t in (self.sign_mantissa, self.planes, self.entries, self.offsets))

    @property
    def num_fallbacks(self) -> int:
        return int(self.offsets[-1])

    @property
    def device(self) -> torch.device:
        return self.sign_mantissa.device

    def to(self, device) -> "CompressedTensorV2":
        return CompressedTensorV2(self.shape, self.base, *(t.to(device) for t in (
            self.sign_mantissa, self.planes, self.entries, self.offsets)))


def best_window_v2(hist: torch.Tensor) -> int:
    """lo of the 8 consecutive exponents holding the most elements (ties: the lowest)."""
    hist = hist.to(torch.int64).cpu()  # a 256-bin scan: cheaper on the host for any device
    sums = torch.cumsum(torch.cat([hist.new_zeros(1), hist]), 0)
    return int(torch.argmax(sums[WINDOW_V2:] - sums[:-WINDOW_V2]))


def pack_entries(values: torch.Tensor) -> torch.Tensor:
    """int64 [T] values < 2^18 -> uint8 stream: record i at bits 18 i .. 18 i + 17, padded to
    a multiple of 16 bytes with at least 4 bytes of slack (readers may load 8 bytes)."""
    total = values.numel()
    size = -(-(ENTRY_BITS * total // 8 + 8) // STREAM_ALIGN) * STREAM_ALIGN
    stream = torch.zeros(size, dtype=torch.int32, device=values.device)
    if total:
        bit = torch.arange(total, dtype=torch.int64, device=values.device) * ENTRY_BITS
        shifted = values.to(torch.int64) << (bit & 7)  # < 2^25: four bytes
        first = bit >> 3
        for j in range(4):  # records never share a bit, so adding bytes is or-ing them
            stream.index_add_(0, first + j, ((shifted >> (8 * j)) & 0xFF).to(torch.int32))
    return stream.to(torch.uint8)


def unpack_entries(stream: torch.Tensor, first: int, count: int) -> torch.Tensor:
    """Records first .. first + count - 1 of a pack_entries stream, as int64."""
    bit = (torch.arange(count, dtype=torch.int64, device=stream.device) + first) * ENTRY_BITS
    byte = bit >> 3
    if count and int(byte[-1]) + 3 >= stream.numel():
        raise FormatError(f"entry stream of {stream.numel()} bytes ends before record "
                          f"{first + count - 1}: the data is truncated")
    word = torch.zeros(count, dtype=torch.int64, device=stream.device)
    for j in range(4):
        word |= stream[byte + j].to(torch.int64) << (8 * j)
    return (word >> (bit & 7)) & ((1 << ENTRY_BITS) - 1)


def compress_v2(w: torch.Tensor, name: str = "tensor") -> CompressedTensorV2:
    """Compress a 2-D BF16 matrix of any shape into version 2, on its own device."""
    _check_input(w, name)
    n, k = w.shape
    bits = w.contiguous().view(torch.int16)
    lo = best_window_v2(torch.bincount((bits >> 7).to(torch.uint8).reshape(-1), minlength=256))
    np_, kp = padded_shape(n, k)
    s = num_strips(n, k)
    lane = to_lane_order(_padded_rows(bits, 0, np_, kp, lo << 7))  # padding: exponent lo
    sign_mantissa = _lane_to_sm_order(((lane >> 8).to(torch.uint8) & 0x80)
                                      | (lane.to(torch.uint8) & 0x7F))
    exponent = _to_bit_order((lane >> 7).to(torch.uint8)).reshape(s, STRIP_ELEMS)
    offset = exponent - lo  # uint8 arithmetic wraps: < 8 exactly inside the window
    outside = offset >= WINDOW_V2
    codes = offset.masked_fill(outside, 0)
    planes = _pack_planes(codes.view(s, LANES, 32))
    strip, position = outside.nonzero(as_tuple=True)  # by strip, then by position
    values = position | (exponent[strip, position].to(torch.int64) << POSITION_BITS)
    offsets = torch.zeros(s + 1, dtype=torch.int64, device=w.device)
    torch.cumsum(torch.bincount(strip, minlength=s), 0, out=offsets[1:])
    return CompressedTensorV2(shape=(n, k), base=lo, sign_mantissa=sign_mantissa,
                              planes=planes.view(s, PLANES, LANES), entries=pack_entries(values),
                              offsets=offsets.to(torch.int32))


def decompress_v2(ct: CompressedTensorV2) -> torch.Tensor:
    """The original BF16 matrix, bit for bit, with torch ops on the tensor's device."""
    n, k = ct.shape
    np_, kp = padded_shape(n, k)
    s = num_strips(n, k)
    offsets = ct.offsets.to(torch.int64)
    counts = offsets[1:] - offsets[:-1]
    if offsets[0] != 0 or bool((counts < 0).any()):
        raise FormatError("version 2 offsets must start at 0 and never decrease: the data is corrupt")
    total = int(offsets[-1])
    exponent = (_unpack_codes(ct.planes) + ct.base).view(-1)  # uint8
    if total:
        values = unpack_entries(ct.entries, 0, total)
        position = values & ((1 << POSITION_BITS) - 1)
        strip = torch.repeat_interleave(torch.arange(s, device=values.device), counts)
        exponent[strip * STRIP_ELEMS + position] = (values >> POSITION_BITS).to(torch.uint8)
    exponent = _to_element_order(exponent)
    sm16 = _sm_to_lane_order(ct.sign_mantissa).view(exponent.shape).to(torch.int16)
    lane = ((sm16 & 0x80) << 8) | (exponent.to(torch.int16) << 7) | (sm16 & 0x7F)
    return from_lane_order(lane.reshape(-1), np_, kp)[:n, :k].contiguous().view(torch.bfloat16)
