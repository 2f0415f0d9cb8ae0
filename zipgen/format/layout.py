"""Tile geometry of TCA-TBE (docs/FORMAT.md §3-§5) as tensor views.

The codec never loops over elements: it reshapes a padded [Np, Kp] matrix into tile axes and
permutes them into the order the streams store. Natural axes of a padded matrix:

    row = 16*rg + 8*f0 + g              (rg: row group of a strip, g = lane >> 2)
    col = 64*kg + 32*h + 16*t1 + 8*f1 + 2*q + e
                                        (t = 2*h + t1: tensor-core tile, q = lane & 3,
                                         f = f0 + 2*f1: A-register a0..a3, e: register half)
"""
from __future__ import annotations

import math

import torch

ROWS_PER_STRIP = 16
COLS_PER_STRIP = 64
STRIP_ELEMS = ROWS_PER_STRIP * COLS_PER_STRIP  # 1024
LANES = 32
PLANES = 3  # 32-bit code words per lane and strip (version 2's bit-planes; the name stayed)
CODE_SLOTS = 5  # register pairs per code word in format version 3 (the 16th takes spare bits)
WINDOW = 8  # exponents covered by the codes 0..7
STREAM_ALIGN = 16  # bytes; the fallback entry stream is padded to a multiple of this


def padded_shape(n: int, k: int) -> tuple[int, int]:
    """Rows padded to a multiple of 16, columns to a multiple of 64 (FORMAT.md §3)."""
    return (math.ceil(n / ROWS_PER_STRIP) * ROWS_PER_STRIP,
            math.ceil(k / COLS_PER_STRIP) * COLS_PER_STRIP)


def num_strips(n: int, k: int) -> int:
    np_, kp = padded_shape(n, k)
    return (np_ // ROWS_PER_STRIP) * (kp // COLS_PER_STRIP)


def code_bit_locations() -> tuple[torch.Tensor, torch.Tensor]:
    """Format version 3 (FORMAT.md §5): where bit p of the code at position b = r + 16 e of a
    lane (register pair r, half e) lives among the lane's three code words: (word, bit), each
    int64 [32 positions, 3 bits]. Pair r < 15 sits in word r // 5 at bit 3 (r % 5) + 16 e + p;
    pair 15's bit p in word p at bit 15 + 16 e."""
    b = torch.arange(32).unsqueeze(1)
    p = torch.arange(PLANES).unsqueeze(0)
    r, e = b % 16, b // 16
    slotted = r < 3 * CODE_SLOTS
    word = torch.where(slotted, r // CODE_SLOTS, p)
    bit = torch.where(slotted, 3 * (r % CODE_SLOTS) + p, torch.full_like(p, 15)) + 16 * e
    return word, bit


# The register half e is innermost both in natural and in lane order, so the permutation moves
# pairs of BF16 values as int32 (4x faster than moving single values), and (h, t1, f1) stay
# adjacent, so they move as one axis "htf" of size 8:
#   natural [rg, f0, g, kg, htf, q] (pairs)  ->  lane order [rg, kg, g, q, htf, f0] (pairs)
_NATURAL_TO_LANE = (0, 3, 2, 5, 4, 1)
_LANE_TO_NATURAL = (0, 5, 2, 1, 4, 3)


def to_lane_order(bits):
    """int16 [Np, Kp] BF16 patterns in natural order -> int16 [S * 1024] in lane order
    (strip by strip, lane-major, element i = 8t + 2f + e within a lane)."""
    np_, kp = bits.shape
    pairs = bits.contiguous().view(torch.int32)
    tiled = pairs.view(np_ // 16, 2, 8, kp // 64, 8, 4).permute(_NATURAL_TO_LANE)
    return tiled.contiguous().view(torch.int16).view(-1)


def from_lane_order(lane, np_: int, kp: int):
    """Inverse of to_lane_order: int16 [S * 1024] -> int16 [Np, Kp]."""
    pairs = lane.contiguous().view(torch.int32)
    tiled = pairs.view(np_ // 16, kp // 64, 8, 4, 8, 2).permute(_LANE_TO_NATURAL)
    return tiled.contiguous().view(torch.int16).view(np_, kp)
