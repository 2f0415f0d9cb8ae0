"""Property tests (hypothesis): any shape, any bit patterns, any exponent spread."""
from __future__ import annotations

import torch
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

import zipgen

from conftest import assert_bit_exact, from_bits

shapes = st.tuples(st.integers(1, 80), st.integers(1, 300))


@settings(max_examples=60, deadline=None)
@given(data=st.data(), shape=shapes)
def test_arbitrary_bit_patterns(data, shape):
    import numpy as np
    raw = data.draw(arrays(np.int16, shape))
    w = from_bits(torch.from_numpy(raw))
    assert_bit_exact(zipgen.decompress(zipgen.compress(w)), w)


@settings(max_examples=60, deadline=None)
@given(shape=shapes, scale=st.floats(1e-30, 1e30), seed=st.integers(0, 2**31 - 1),
       outliers=st.floats(0, 0.5))
def test_normal_weights_with_outliers(shape, scale, seed, outliers):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g, dtype=torch.float64) * scale
    mask = torch.rand(shape, generator=g) < outliers
    w = torch.where(mask, w * 1e6, w).to(torch.bfloat16)  # inf where it overflows: fine
    ct = zipgen.compress(w)
    assert 0.0 <= ct.coverage <= 1.0
    assert_bit_exact(zipgen.decompress(ct), w)


@settings(max_examples=40, deadline=None)
@given(lo=st.integers(0, 255), width=st.integers(0, 12), shape=shapes, seed=st.integers(0, 999))
def test_exponent_ranges_anywhere(lo, width, shape, seed):
    g = torch.Generator().manual_seed(seed)
    hi = min(255, lo + width)
    exp = torch.randint(lo, hi + 1, shape, generator=g, dtype=torch.int32)
    rest = torch.randint(0, 256, shape, generator=g, dtype=torch.int32)
    bits = ((rest & 0x80) << 8) | (exp << 7) | (rest & 0x7F)
    w = from_bits(bits)
    ct = zipgen.compress(w)
    if width < 7:
        assert ct.coverage == 1.0
    assert_bit_exact(zipgen.decompress(ct), w)
