"""Bit-exact round trips of the torch codec: every BF16 pattern, special values, edge windows,
odd shapes, real weights."""
from __future__ import annotations

import pytest
import torch

import zipgen
from zipgen.format import best_window, exponent_histogram

from conftest import ALL_PATTERNS, assert_bit_exact, bits_of, from_bits


@pytest.mark.parametrize("shape", [(256, 256), (1, 65536), (65536, 1), (512, 128), (100, 655)])
def test_all_65536_patterns(shape):
    n = shape[0] * shape[1]
    g = torch.Generator().manual_seed(n)
    bits = ALL_PATTERNS[torch.randperm(65536, generator=g)][:n] if n <= 65536 else None
    w = from_bits(bits.view(shape))
    ct = zipgen.compress(w)
    assert_bit_exact(zipgen.decompress(ct), w)


def test_all_patterns_inside_a_realistic_matrix():
    """Every pattern as a fallback or in-window value among normal weights."""
    g = torch.Generator().manual_seed(1)
    w = (torch.randn(512, 1024, generator=g) * 0.02).to(torch.bfloat16)
    flat = bits_of(w).reshape(-1).clone()
    pos = torch.randperm(flat.numel(), generator=g)[:65536]
    flat[pos] = ALL_PATTERNS
    w = from_bits(flat.view(512, 1024))
    assert_bit_exact(zipgen.decompress(zipgen.compress(w)), w)


SPECIALS = {
    "zeros": [0x0000],
    "neg_zeros": [0x8000],
    "pos_neg_zero": [0x0000, 0x8000],
    "inf": [0x7F80, 0xFF80],
    "nan_payloads": [0x7FC0, 0x7F81, 0xFFFF, 0x7FFF, 0xFFC1, 0x7FA5],
    "subnormals": [0x0001, 0x007F, 0x8001, 0x807F, 0x0040],
    "max_min_normal": [0x7F7F, 0xFF7F, 0x0080, 0x8080],
    "constant": [0x3F80],
}


@pytest.mark.parametrize("name", sorted(SPECIALS))
@pytest.mark.parametrize("shape", [(1, 1), (17, 70), (64, 64)])
def test_special_values(name, shape):
    values = torch.tensor(SPECIALS[name], dtype=torch.int32).to(torch.int16)
    n = shape[0] * shape[1]
    w = from_bits(values.repeat(n // len(values) + 1)[:n].view(shape))
    assert_bit_exact(zipgen.decompress(zipgen.compress(w)), w)


def _tensor_with_exponents(lo, hi, shape=(96, 200), seed=0):
    g = torch.Generator().manual_seed(seed)
    exp = torch.randint(lo, hi + 1, shape, generator=g, dtype=torch.int32)
    sign = torch.randint(0, 2, shape, generator=g, dtype=torch.int32)
    mant = torch.randint(0, 128, shape, generator=g, dtype=torch.int32)
    return from_bits((sign << 15) | (exp << 7) | mant)


@pytest.mark.parametrize("lo,hi,window", [(0, 7, 0), (0, 3, 0), (248, 255, 248), (252, 255, 248),
                                          (0, 255, None), (120, 127, 120), (121, 127, 120)])
def test_windows_at_both_ends(lo, hi, window):
    """The published code's uint8 base wraps at window 0 and flips signs; ours must not. Ties
    go to the lowest window, which cannot pass exponent 248 (FORMAT.md §2)."""
    w = _tensor_with_exponents(lo, hi)
    ct = zipgen.compress(w)
    if window is not None:
        assert ct.base == window
        assert ct.coverage == 1.0
    assert_bit_exact(zipgen.decompress(ct), w)


def test_window_maximises_coverage():
    hist = torch.zeros(256, dtype=torch.int64)
    hist[10] = 5  # a presence heuristic would start here
    hist[100:108] = 10
    hist[108] = 11
    win = best_window(hist)
    assert win.lo == 101 and win.base == 101
    assert win.coverage == pytest.approx((70 + 11) / hist.sum().item())


def test_window_ties_go_to_lowest_exponent():
    hist = torch.zeros(256, dtype=torch.int64)
    hist[50] = hist[200] = 3
    assert best_window(hist).lo == 43  # [43, 50] is the first window holding exponent 50


@pytest.mark.parametrize("shape", [(1, 1), (1, 64), (16, 1), (63, 65), (64, 64), (4097, 130),
                                   (15, 63), (17, 129), (33, 1000)])
def test_odd_shapes(shape):
    g = torch.Generator().manual_seed(shape[0] * 7919 + shape[1])
    w = (torch.randn(shape, generator=g) * 0.05).to(torch.bfloat16)
    ct = zipgen.compress(w)
    assert ct.shape == shape
    assert_bit_exact(zipgen.decompress(ct), w)


def test_real_minilm_weights_bit_exact(minilm_bf16, record_property):
    total_bytes = total_weights = 0
    for name, w in minilm_bf16.items():
        ct = zipgen.compress(w, name=name)
        assert_bit_exact(zipgen.decompress(ct), w)
        record_property(name, f"{ct.bits_per_weight:.3f} bits/weight, coverage {ct.coverage:.4f}")
        if min(w.shape) >= 64 and "embed" not in name:
            total_bytes += ct.nbytes
            total_weights += w.numel()
    bits = 8 * total_bytes / total_weights
    record_property("linear_bits_per_weight", f"{bits:.3f}")
    assert bits <= 11.4, f"MiniLM linear weights take {bits:.3f} bits/weight"


def test_size_matches_the_formula(minilm_bf16):
    """FORMAT.md §6: 11 bits per weight, 18 per fallback, 32 bits of offsets per strip, and the
    entry stream's padding (8 to 23 bytes)."""
    w = minilm_bf16["encoder.layer.0.intermediate.dense.weight"]
    ct = zipgen.compress(w)
    n = w.numel()
    expected_bits = 11 * n + 18 * ct.num_fallbacks + 32 * (ct.num_strips + 1)
    assert 8 * 8 <= 8 * ct.nbytes - expected_bits < 8 * 24
    hist = exponent_histogram(bits_of(w))
    assert ct.coverage == pytest.approx(best_window(hist).coverage)
