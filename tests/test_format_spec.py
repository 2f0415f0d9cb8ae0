"""The codec's streams equal a literal, loop-by-loop reading of docs/FORMAT.md.

This encoder is deliberately naive (Python loops over elements) so that it can be checked
line by line against the spec; the fast codec must agree with it byte for byte."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import zipgen

from conftest import bits_of, from_bits


def spec_encode(bits: np.ndarray):
    """bits: uint16 [N, K] -> (base, sign_mantissa, planes, fallback_entries, offsets)."""
    n, k = bits.shape
    exp = (bits >> 7) & 0xFF
    hist = np.bincount(exp.reshape(-1), minlength=256)
    counts = [hist[w:w + 8].sum() for w in range(249)]  # §2: windows [w, w + 7], w <= 248
    w = int(np.argmax(counts))  # first maximum
    base = w
    np_, kp = -(-n // 16) * 16, -(-k // 64) * 64
    padded = np.full((np_, kp), w << 7, dtype=np.uint16)  # §3
    padded[:n, :k] = bits
    strips = (np_ // 16) * (kp // 64)
    sm = np.zeros(strips * 1024, dtype=np.uint8)
    planes = np.zeros((strips, 3, 32), dtype=np.uint32)
    records, offsets = [], [0]
    for rg in range(np_ // 16):
        for kg in range(kp // 64):
            s = rg * (kp // 64) + kg
            strip_records = []
            for lane in range(32):
                g, q = lane >> 2, lane & 3
                for i in range(32):
                    t, f, e = i // 8, (i // 2) % 4, i % 2
                    row = 16 * rg + g + 8 * (f & 1)
                    col = 64 * kg + 16 * t + 8 * (f >> 1) + 2 * q + e
                    u = int(padded[row, col])
                    ex = (u >> 7) & 0xFF
                    sm[1024 * s + 512 * (i >> 4) + 16 * lane + (i & 15)] = \
                        ((u >> 15) << 7) | (u & 0x7F)
                    inside = w <= ex <= w + 7
                    code = ex - base if inside else 0
                    r, b = i >> 1, (i >> 1) + 16 * (i & 1)
                    for p in range(3):  # §5, version 3: five 3-bit slots per word, then bit 15
                        word, bit = (r // 5, 3 * (r % 5) + p) if r < 15 else (p, 15)
                        planes[s, word, lane] |= ((code >> p) & 1) << (bit + 16 * (i & 1))
                    if not inside:  # §5: position 32 lane + b, exponent above it
                        strip_records.append((32 * lane + b) | (ex << 10))
            records += sorted(strip_records, key=lambda r: r & 1023)  # increasing position
            offsets.append(len(records))
    stream = 0
    for j, r in enumerate(records):  # record j at bits 18 j .. 18 j + 17, little-endian
        stream |= r << (18 * j)
    size = -(-(18 * len(records) // 8 + 8) // 16) * 16
    entries = np.frombuffer(stream.to_bytes(size, "little"), dtype=np.uint8)
    return base, sm, planes.view(np.int32), entries, np.array(offsets, dtype=np.int32)


@pytest.mark.parametrize("shape,seed", [((16, 64), 0), ((32, 128), 1), ((20, 70), 2),
                                        ((5, 3), 3), ((48, 192), 4)])
def test_streams_match_the_spec(shape, seed):
    g = torch.Generator().manual_seed(seed)
    w = (torch.randn(shape, generator=g) * 0.02).to(torch.bfloat16)
    flat = bits_of(w).view(-1).clone()
    # sprinkle specials so that fallbacks land in many lanes and strips
    idx = torch.randperm(flat.numel(), generator=g)[: max(1, flat.numel() // 20)]
    flat[idx] = torch.tensor([0x7FC1, 0x0000, 0x8000, 0x7F80, 0x0001, 0x4100],
                             dtype=torch.int32).to(torch.int16).repeat(len(idx))[: len(idx)]
    w = from_bits(flat.view(shape))
    base, sm, planes, fb, offsets = spec_encode(bits_of(w).numpy().view(np.uint16))
    ct = zipgen.compress(w)
    assert ct.base == base
    np.testing.assert_array_equal(ct.sign_mantissa.numpy(), sm)
    np.testing.assert_array_equal(ct.planes.numpy(), planes)
    np.testing.assert_array_equal(ct.fallback_entries.numpy(), fb)
    np.testing.assert_array_equal(ct.fallback_offsets.numpy(), offsets)
    assert ct.num_fallbacks == offsets[-1] > 0
