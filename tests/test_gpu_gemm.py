"""zipgen.runtime.gemm against an FP32 reference computed from the exact weights (GPU only)."""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

import zipgen
from zipgen.codegen import ARCHES, ZipGemmConfig
from zipgen.runtime import gemm

from conftest import bits_of, from_bits, requires_gpu

pytestmark = [pytest.mark.gpu, requires_gpu]

M_SWEEP = [1, 2, 3, 8, 16, 17, 32, 64, 118, 128, 256, 1024, 4096]
LLAMA_8B = [(6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336)]
LLAMA_70B = [(10240, 8192), (8192, 8192), (57344, 8192), (8192, 28672)]


def make(n, k, sigma=0.02, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    w = (torch.randn(n, k, device="cuda", generator=g) * sigma).to(torch.bfloat16)
    return w, zipgen.compress(w)


def activations(m, k, seed=1):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return torch.randn(m, k, device="cuda", generator=g).to(torch.bfloat16)


def reference(x, w, bias=None):
    y = x.float() @ w.float().t()
    return y + bias.float() if bias is not None else y


def assert_close(y, ref):
    """BF16 output of an FP32-accumulated product: one BF16 rounding (2^-8 relative) plus
    accumulation-order noise, measured against the output's scale."""
    assert y.dtype == torch.bfloat16 and y.shape == ref.shape
    assert torch.isfinite(y).all(), "non-finite output (unwritten or wrong element)"
    err = (y.float() - ref).abs()
    scale = ref.abs().amax().clamp_min(1e-30)
    tol = ref.abs() * 2**-7 + scale * 2e-4
    bad = err > tol
    assert not bad.any(), (f"{int(bad.sum())} of {y.numel()} outside tolerance; worst "
                           f"{float((err - tol).max()):.3g} over (scale {float(scale):.3g})")
    rel = float((y.float() - ref).norm() / ref.norm().clamp_min(1e-30))
    assert rel < 5e-3, rel


def fallback_heavy(n, k):
    """W with a quarter of its weights given exponents 90..139, outside any 8-exponent window:
    ~250 entries per strip, so a warp patches them in several rounds."""
    w, _ = make(n, k)
    flat = bits_of(w).view(-1).clone()
    idx = torch.randperm(flat.numel(), device=flat.device)[: flat.numel() // 4]
    exps = torch.randint(90, 140, (idx.numel(),), device=flat.device, dtype=torch.int32)
    flat[idx] = ((flat[idx].to(torch.int32) & 0x807F) | (exps << 7)).to(torch.int16)
    w = from_bits(flat.view(n, k))
    return w, zipgen.compress(w)


def poisoned(m, n):
    return torch.full((m, n), float("nan"), device="cuda", dtype=torch.bfloat16)


def check_fused(cfg, m, n=300, k=1608, seed=0):
    """The fused kernel with `cfg` against FP32: by default a partial last CTA along N and
    along M and a ragged last strip (K % 64 = 8); outputs poisoned first."""
    w, ct = make(n, k, seed=seed)
    x = activations(m, k, seed=seed)
    out = poisoned(m, n)
    gemm(x, ct, out=out, config=cfg, fused=True)
    assert_close(out, reference(x, w))


def check_selected_columns(cfg, w, ct, cols):
    """Token t of x one-hot at column cols[t]: y[t] must be W[:, cols[t]] bit for bit (one
    product per output, so any decode or patch error shows)."""
    x = torch.zeros(cols.numel(), w.shape[1], device="cuda", dtype=torch.bfloat16)
    x[torch.arange(cols.numel(), device="cuda"), cols] = 1.0
    y = gemm(x, ct, config=cfg, fused=True)
    assert torch.equal(bits_of(y), bits_of(w[:, cols].t().contiguous()))


def check_bias_and_determinism(cfg, m, n=4096, k=4096):
    """An N x K weight with bias against FP32, then five more calls with identical bits (the
    kernel's summation order is fixed)."""
    w, ct = make(n, k)
    bias = (torch.randn(n, device="cuda") * 0.1).to(torch.bfloat16)
    x = activations(m, k)
    y = gemm(x, ct, bias, config=cfg, fused=True)
    assert_close(y, reference(x, w, bias))
    for _ in range(5):
        assert torch.equal(bits_of(gemm(x, ct, bias, config=cfg, fused=True)), bits_of(y))


def check_graph_replays(cfg, m, seeds, n=1024, k=2048):
    """A captured fused launch, replayed with new activations each time (split-K's counters
    must be back at 0 after each launch)."""
    w, ct = make(n, k)
    x = activations(m, k)
    out = poisoned(m, n)
    gemm(x, ct, out=out, config=cfg, fused=True)  # loads the kernel outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        gemm(x, ct, out=out, config=cfg, fused=True)
    for seed in seeds:
        x.copy_(activations(m, k, seed=seed))
        out.fill_(float("nan"))
        graph.replay()
        assert_close(out, reference(x, w))


@pytest.mark.parametrize("m", M_SWEEP)
@pytest.mark.parametrize("fused", [None, True, False])
def test_m_sweep(m, fused):
    if fused and m > 256:
        pytest.skip("the fused kernel re-decodes W per 64 tokens; not meant for M > 256")
    w, ct = make(1000, 2048, seed=m)
    x = activations(m, 2048, seed=m + 1)
    y = gemm(x, ct, out=poisoned(m, 1000), fused=fused)
    assert_close(y, reference(x, w))


@pytest.mark.parametrize("n,k", LLAMA_8B + LLAMA_70B)
@pytest.mark.parametrize("m", [1, 16, 64])
def test_llama_shapes(n, k, m):
    w, ct = make(n, k, sigma=0.015, seed=n + k)
    x = activations(m, k)
    assert_close(gemm(x, ct, out=poisoned(m, n)), reference(x, w))


@pytest.mark.parametrize("n,k", [(1, 8), (17, 264), (1000, 1000), (4097, 136), (33, 4104)])
@pytest.mark.parametrize("m", [1, 5, 40])
def test_shapes_not_multiples_of_64(n, k, m):
    w, ct = make(n, k, seed=n * k)
    x = activations(m, k)
    assert_close(gemm(x, ct, fused=True), reference(x, w))


@pytest.mark.parametrize("n,k", [(100, 100), (65, 7), (3, 1)])
def test_k_not_multiple_of_8_uses_decode_path(n, k):
    w, ct = make(n, k)
    x = activations(9, k)
    assert_close(gemm(x, ct), reference(x, w))
    with pytest.raises(zipgen.InputError, match="K % 8"):
        gemm(x, ct, fused=True)


@pytest.mark.parametrize("cfg", [c for c in (ZipGemmConfig(w, t, d, rg, sx) for w in (1, 4, 8, 16)
                                               for t in (1, 2, 4, 8) for d in (1, 3)
                                               for rg in (1, 2, 4) for sx in (False, True))
                                 if not c.problems(ARCHES["sm_90"])])
def test_every_config(cfg):
    _check_config(cfg)


@pytest.mark.parametrize("cfg", [c for c in (ZipGemmConfig(w, t, d, rg, sx, 2) for w in (4, 8, 16)
                                               for t in (1, 2, 4, 8) for d in (1, 2)
                                               for rg in (1, 2, 4) for sx in (False, True))
                                 if not c.problems(ARCHES["sm_90"])])
def test_every_config_with_two_strip_rows_per_warp(cfg):
    _check_config(cfg)


@pytest.mark.parametrize("cfg", [c for c in (ZipGemmConfig(w, t, d, rg, True, rs, False, xs)
                                               for w in (4, 8, 16) for t in (1, 2, 4, 8)
                                               for d in (1, 2) for rg in (1, 2, 4)
                                               for rs in (1, 2) for xs in (2, 4))
                                 if not c.problems(ARCHES["sm_90"])])
def test_every_config_with_grouped_activation_strips(cfg):
    """x_strips: 2 or 4 K strips of staged activations per barrier, partial last groups."""
    _check_config(cfg)


FEW_STRIPS_CONFIGS = [ZipGemmConfig(16, 2, 1, 4, True, 1, False, 4),
                      ZipGemmConfig(8, 2, 2, 1, True, 2, False, 4),
                      ZipGemmConfig(4, 1, 1, 2, True, 1, False, 2)]
# Checked at collection, so on the CPU too: a hand-picked config over sm_90's shared memory
# would fail its GPU test with an InputError instead of testing the kernel.
for _cfg in FEW_STRIPS_CONFIGS:
    assert not _cfg.problems(ARCHES["sm_90"]), f"invalid test config: {_cfg.describe()}"


@pytest.mark.parametrize("k", [72, 136, 264, 1096])
@pytest.mark.parametrize("cfg", FEW_STRIPS_CONFIGS)
def test_grouped_activation_strips_with_few_strips_per_warp(cfg, k):
    """Groups larger than a warp's whole K share (no full group, a partial one, the ragged
    strip alone) still copy, wait and read the right slots."""
    w, ct = make(200, k, seed=k)
    x = activations(cfg.tokens - 1, k)
    assert_close(gemm(x, ct, config=cfg, fused=True), reference(x, w))


def _check_config(cfg):
    # 300 rows: a partial last row group and CTA; K = 1608: a ragged last strip (K % 64 = 8)
    w, ct = make(300, 1608, seed=7)
    x = activations(cfg.tokens + 3, 1608)  # a partial second token tile
    assert_close(gemm(x, ct, config=cfg, fused=True), reference(x, w))


def test_bias_and_leading_dims():
    w, ct = make(512, 1024)
    bias = (torch.randn(512, device="cuda") * 0.1).to(torch.bfloat16)
    x = activations(6, 1024).view(2, 3, 1024)
    for fused in (True, False):
        y = gemm(x, ct, bias, fused=fused)
        assert y.shape == (2, 3, 512)
        assert_close(y.view(6, 512), reference(x.view(6, 1024), w, bias))


def test_decode_path_equals_f_linear_exactly():
    w, ct = make(768, 1024)
    bias = (torch.randn(768, device="cuda") * 0.1).to(torch.bfloat16)
    for m in (1, 100, 300):
        x = activations(m, 1024, seed=m)
        assert torch.equal(bits_of(gemm(x, ct, bias, fused=False)), bits_of(F.linear(x, w, bias)))


@pytest.mark.parametrize("cfg", [None, ZipGemmConfig(8, 2, 1, 2, True, 2),
                                 ZipGemmConfig(4, 1, 2, 1, False, 2)])
def test_fallback_heavy_weights(cfg):
    """A quarter of the weights outside the window: ~250 entries per strip, so the warp patches
    in several rounds, all but the first reading its entries from global memory."""
    w, ct = fallback_heavy(256, 2048)
    assert ct.coverage < 0.8 and ct.num_fallbacks > 4 * 32 * ct.num_strips
    for m in (1, 16, 33):
        x = activations(m, 2048)
        assert_close(gemm(x, ct, config=cfg, fused=True), reference(x, w))


@pytest.mark.parametrize("lo,hi", [(0, 6), (240, 254)])
def test_windows_at_the_ends(lo, hi):
    shape = (128, 512)
    g = torch.Generator(device="cuda").manual_seed(lo)
    exp = torch.randint(lo, hi + 1, shape, device="cuda", dtype=torch.int32, generator=g)
    rest = torch.randint(0, 256, shape, device="cuda", dtype=torch.int32, generator=g)
    w = from_bits(((rest & 0x80) << 8) | (exp << 7) | (rest & 0x7F))
    ct = zipgen.compress(w)
    scale = 2.0 ** (-100 if lo > 127 else 100)  # keep x @ W^T finite
    x = (activations(8, 512) * scale).to(torch.bfloat16)
    y = gemm(x, ct, fused=True)
    ref = reference(x, w)
    assert torch.isfinite(ref).all()
    assert_close(y, ref)


def test_deterministic():
    w, ct = make(4096, 4096)
    x = activations(16, 4096)
    first = gemm(x, ct, fused=True)
    for _ in range(3):
        assert torch.equal(bits_of(gemm(x, ct, fused=True)), bits_of(first))


@pytest.mark.parametrize("cfg", [ZipGemmConfig(8, 1, 1, 2, True), ZipGemmConfig(8, 2, 1, 4, True),
                                 ZipGemmConfig(8, 4, 1, 4, True), ZipGemmConfig(4, 4, 2, 1, True),
                                 ZipGemmConfig(16, 1, 1, 2, True), ZipGemmConfig(16, 4, 1, 4, True),
                                 ZipGemmConfig(8, 4, 1, 4, True, 2), ZipGemmConfig(16, 2, 1, 2, True, 2),
                                 ZipGemmConfig(4, 4, 2, 1, True, 2),
                                 ZipGemmConfig(16, 2, 1, 4, True, 1, False, 4),
                                 ZipGemmConfig(8, 4, 1, 4, True, 1, False, 2),
                                 ZipGemmConfig(16, 2, 1, 2, True, 2, False, 4)])
def test_staged_activations_have_no_race(cfg):
    """The row groups of a K slice share staged activations through named barriers (one row
    group: __syncwarp), and the last CTA's extra row groups take part in them. A missing or
    misplaced barrier would show as results that change from run to run, or wrong ones.
    (compute-sanitizer's racecheck cannot judge these kernels: it reports hazards on a race-free
    probe with the same barriers too, benchmarks/racecheck_probe.py.)"""
    w, ct = make(4096 + 40, 4104, seed=11)  # a partial last CTA; a ragged last strip
    x = activations(cfg.tokens - 3, 4104)
    first = gemm(x, ct, config=cfg, fused=True)
    assert_close(first, reference(x, w))
    for _ in range(30):
        assert torch.equal(bits_of(gemm(x, ct, config=cfg, fused=True)), bits_of(first))


def test_cuda_graph_capture():
    w, ct = make(2048, 2048)
    x = activations(8, 2048)
    out = torch.empty(8, 2048, device="cuda", dtype=torch.bfloat16)
    for fused in (True, False):
        gemm(x, ct, out=out, fused=fused)  # build, load and allocate outside the capture
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            gemm(x, ct, out=out, fused=fused)
        out.fill_(float("nan"))
        x.copy_(activations(8, 2048, seed=5))
        graph.replay()
        torch.cuda.synchronize()
        assert_close(out, reference(x, w))


def test_bad_arguments():
    w, ct = make(64, 64)
    x = activations(4, 64)
    cases = [
        (dict(x=x.float()), "bfloat16"),
        (dict(x=activations(4, 65)), "last dimension"),
        (dict(x=x.cpu()), "same CUDA device"),
        (dict(bias=torch.zeros(63, device="cuda", dtype=torch.bfloat16)), "bias"),
        (dict(out=torch.empty(4, 63, device="cuda", dtype=torch.bfloat16)), "out must be"),
        (dict(w=w), "CompressedTensor"),
    ]
    for kwargs, match in cases:
        args = dict(x=x, w=ct) | kwargs
        with pytest.raises(zipgen.InputError, match=match):
            gemm(**args)


def test_misaligned_and_strided_inputs():
    w, ct = make(256, 512)
    for fused in (True, False):
        base = activations(1, 5 * 512 + 1).view(-1)
        x = base[1:].view(5, 512)  # contiguous but 2 bytes off any 16-byte boundary
        assert x.data_ptr() % 16
        assert_close(gemm(x, ct, fused=fused), reference(x, w))
        xt = activations(512, 5).t()  # a transposed (non-contiguous) view
        assert_close(gemm(xt, ct, fused=fused), reference(xt, w))
    # a compressed stream that is a view 1 byte into a buffer: refused, not misread
    entries = ct.fallback_entries
    shifted = torch.empty(entries.numel() + 1, dtype=torch.uint8, device="cuda")[1:]
    shifted.copy_(entries)
    moved = dataclasses.replace(ct, fallback_entries=shifted)
    for fused in (True, False):
        with pytest.raises(zipgen.InputError, match="fallback_entries must be 4-byte aligned"):
            gemm(activations(1, 512), moved, fused=fused)
