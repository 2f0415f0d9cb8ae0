"""The fused GEMM on format-version-2 weights (zipgen.runtime.gemm_v2) against an FP32
reference (GPU only)."""
from __future__ import annotations

import pytest
import torch

from zipgen.codegen import ZipGemmConfig
from zipgen.format.codec_v2 import compress_v2, decompress_v2
from zipgen.runtime.gemm_v2 import gemm_v2

from conftest import bits_of, from_bits, requires_gpu
from test_gpu_gemm import activations, assert_close, make, poisoned, reference

pytestmark = [pytest.mark.gpu, requires_gpu]

CONFIGS = [ZipGemmConfig(8, 1, 1, 1, False), ZipGemmConfig(4, 1, 2, 2, False, 2),
           ZipGemmConfig(8, 2, 1, 2, True), ZipGemmConfig(4, 4, 2, 4, True),
           ZipGemmConfig(8, 2, 1, 4, True, 2), ZipGemmConfig(16, 1, 3, 1, True)]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.describe().replace(" ", ","))
@pytest.mark.parametrize("m", [1, 16, 33])
def test_configs_on_a_ragged_matrix(cfg, m):
    w, _ = make(300, 1608, seed=m)  # a partial last CTA; K % 64 = 8
    ct = compress_v2(w)
    assert torch.equal(bits_of(decompress_v2(ct)), bits_of(w))
    x = activations(m, 1608)
    out = poisoned(m, 300)
    gemm_v2(x, ct, out=out, config=cfg)
    assert_close(out, reference(x, w))


@pytest.mark.parametrize("cfg", [None, ZipGemmConfig(8, 2, 1, 2, True)])
def test_fallback_heavy_strips_take_several_rounds(cfg):
    """Exponents spread over 60 binades: most elements are fallbacks, ~600 entries per strip,
    so the warp patches in ~20 rounds, all but the first from global memory."""
    g = torch.Generator(device="cuda").manual_seed(9)
    shape = (256, 2048)
    exp = torch.randint(90, 150, shape, device="cuda", dtype=torch.int32, generator=g)
    rest = torch.randint(0, 256, shape, device="cuda", dtype=torch.int32, generator=g)
    w = from_bits(((rest & 0x80) << 8) | (exp << 7) | (rest & 0x7F))
    ct = compress_v2(w)
    assert ct.num_fallbacks > 32 * (ct.offsets.numel() - 1)
    for m in (1, 16):
        x = activations(m, 2048)
        assert_close(gemm_v2(x, ct, config=cfg), reference(x, w))


def test_llama_shape_and_bias():
    w, _ = make(4096, 4096)
    ct = compress_v2(w)
    bias = (torch.randn(4096, device="cuda") * 0.1).to(torch.bfloat16)
    for m in (1, 8, 32):
        x = activations(m, 4096, seed=m)
        assert_close(gemm_v2(x, ct, bias), reference(x, w, bias))
