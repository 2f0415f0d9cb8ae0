"""ZipGEMM's wgmma variant (ZipGemmConfig.wgmma, sm_90a) against an FP32 reference (GPU only,
and only on an sm_90 GPU: H100 / H200)."""
from __future__ import annotations

import pytest
import torch

from zipgen.codegen import ZipGemmConfig, arch_traits
from zipgen.runtime import gemm

from conftest import requires_gpu
from test_gpu_gemm import (activations, assert_close, check_bias_and_determinism, check_fused,
                           fallback_heavy, make, poisoned, reference)

pytestmark = [pytest.mark.gpu, requires_gpu]


def _other_gpu() -> bool:
    """A GPU that is not sm_90 (without a GPU, requires_gpu gives the skip reason)."""
    return torch.cuda.is_available() and torch.cuda.get_device_capability() != (9, 0)


hopper_only = pytest.mark.skipif(_other_gpu(), reason="wgmma runs on sm_90 GPUs only "
                                 "(H100 / H200); this GPU is another arch")

# warps (multiples of the 4-warp warpgroup), token tiles, depth; row_groups = 4, staged
CONFIGS = [ZipGemmConfig(w, t, d, 4, True, 1, True)
           for w, t, d in [(4, 1, 1), (4, 2, 2), (4, 4, 1), (4, 8, 1), (8, 2, 1), (8, 4, 2),
                           (16, 1, 1), (16, 4, 1), (4, 16, 1), (8, 16, 2)]]


@hopper_only
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.kernel_name(arch_traits("sm_90a")))
@pytest.mark.parametrize("m", [1, 8, 17, 33, 64])
def test_configs_on_a_ragged_matrix(cfg, m):
    """A partial last CTA (N = 300: the warpgroup's last row groups past N) and a ragged last
    strip (K % 64 = 8), outputs poisoned first."""
    check_fused(cfg, m, seed=m)


@hopper_only
@pytest.mark.parametrize("cfg", CONFIGS[-2:], ids=["w4t16", "w8t16d2"])
@pytest.mark.parametrize("m", [128, 200])
def test_128_tokens_per_cta(cfg, m):
    """m64n128k16: 64 accumulators per thread; M = 200 needs two CTAs along M, the second
    partial."""
    w, ct = make(512, 4096, seed=m)
    x = activations(m, 4096, seed=m)
    out = poisoned(m, 512)
    gemm(x, ct, out=out, config=cfg, fused=True)
    assert_close(out, reference(x, w))


@hopper_only
@pytest.mark.parametrize("cfg", [CONFIGS[2], CONFIGS[5]], ids=["w4t4", "w8t4d2"])
def test_llama_shape_bias_and_determinism(cfg):
    check_bias_and_determinism(cfg, 32)


@hopper_only
def test_fallback_heavy_weights():
    """A quarter of the weights outside the window: several patch rounds per strip before
    the warpgroup multiplies."""
    w, ct = fallback_heavy(256, 2048)
    for m in (1, 16, 40):
        x = activations(m, 2048)
        assert_close(gemm(x, ct, config=CONFIGS[3], fused=True), reference(x, w))


@hopper_only
def test_cuda_graph_capture():
    w, ct = make(1024, 2048)
    x = activations(16, 2048)
    out = poisoned(16, 1024)
    gemm(x, ct, out=out, config=CONFIGS[1], fused=True)  # loads the kernel outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        gemm(x, ct, out=out, config=CONFIGS[1], fused=True)
    out.fill_(float("nan"))
    graph.replay()
    assert_close(out, reference(x, w))
