"""ZipGEMM's warp-specialised variant (ZipGemmConfig.specialized, sm_90a): decoding warps feed
one multiplying warpgroup through shared-memory stages. Checked against an FP32 reference, and
bit for bit where the product is exact (GPU only, and only on an sm_90 GPU)."""
from __future__ import annotations

import pytest
import torch

from zipgen.codegen import ZipGemmConfig, arch_traits
from zipgen.runtime import gemm

from conftest import requires_gpu
from test_gpu_gemm import (activations, assert_close, check_bias_and_determinism, check_fused,
                           check_graph_replays, check_selected_columns, fallback_heavy, make,
                           reference)
from test_gpu_wgmma import hopper_only

pytestmark = [pytest.mark.gpu, requires_gpu]


def specialized(warps, token_tiles, depth, splits=1):
    return ZipGemmConfig(warps, token_tiles, depth, 4, True, 1, True, 1, splits, specialized=True)


# 1 to 4 decoding warpgroups (3 to 6 stages), 8 to 128 tokens per CTA (the multiplying
# warpgroup issues strips in pairs, but one by one at 128 tokens with 16 warps), load depth
# 1-3, split-K 1-4
CONFIGS = [specialized(w, t, d, z) for w, t, d, z in
           [(8, 1, 1, 1), (16, 2, 2, 1), (8, 4, 2, 1), (16, 4, 1, 1), (16, 8, 1, 1), (8, 8, 3, 1),
            (16, 16, 2, 1), (8, 16, 1, 1), (16, 1, 1, 2), (16, 4, 1, 3), (8, 8, 2, 4),
            (16, 16, 1, 2), (8, 16, 2, 3), (20, 2, 1, 1), (20, 8, 2, 2), (12, 16, 1, 1),
            (12, 4, 1, 3)]]


def _name(cfg):
    return cfg.kernel_name(arch_traits("sm_90a"))


@hopper_only
@pytest.mark.parametrize("cfg", CONFIGS, ids=_name)
@pytest.mark.parametrize("m", [1, 17, 64, 130])
def test_configs_on_a_ragged_matrix(cfg, m):
    """A partial last CTA along N (N = 300: strip rows past N) and along M, a ragged last strip
    (K % 64 = 8), outputs poisoned first."""
    check_fused(cfg, m, seed=m)


@hopper_only
@pytest.mark.parametrize("cfg", [CONFIGS[1], CONFIGS[6], CONFIGS[9]],
                         ids=["w16t16", "w16t128", "w16t32k3"])
def test_selected_columns_are_the_weights_bit_for_bit(cfg):
    """Token t picks one column c_t of W (x one-hot): y[t] = W[:, c_t] exactly, for columns in
    every K strip and every position of a strip, so any decode or patch error shows."""
    n, k = 512, 4096
    w, ct = make(n, k, seed=7)
    m = 8 * cfg.token_tiles * 3  # three CTAs along M
    check_selected_columns(cfg, w, ct, (torch.arange(m, device="cuda") * 61) % k)


@hopper_only
@pytest.mark.parametrize("k", [72, 136])
@pytest.mark.parametrize("cfg", [CONFIGS[4], CONFIGS[9]], ids=["w16t64", "w16t32k3"])
def test_fewer_strips_than_decoding_groups(k, cfg):
    """K = 72 / 136: 2 / 3 K strips for 3 decoding warpgroups (and 3 CTAs splitting K): some
    have nothing to decode and leave at once, without counting on any stage; a CTA with no
    strip at all still counts itself in, with a zero partial tile."""
    w, ct = make(200, k, seed=k)
    x = activations(20, k, seed=k)
    assert_close(gemm(x, ct, config=cfg, fused=True), reference(x, w))


@hopper_only
@pytest.mark.parametrize("cfg", [CONFIGS[6], CONFIGS[11]], ids=["w16t128", "w16t128k2"])
def test_llama_shape_bias_and_determinism(cfg):
    check_bias_and_determinism(cfg, 128)  # K order, then split order


@hopper_only
def test_fallback_heavy_weights():
    """A quarter of the weights outside the window: the producers' patch rounds."""
    w, ct = fallback_heavy(256, 2048)
    for m in (1, 40, 128):
        x = activations(m, 2048)
        assert_close(gemm(x, ct, config=CONFIGS[4], fused=True), reference(x, w))


@hopper_only
@pytest.mark.parametrize("cfg", [CONFIGS[5], CONFIGS[10]], ids=["w8t64d3", "w8t64k4"])
def test_cuda_graph_replays_with_new_inputs(cfg):
    """Split-K's counters go back to 0 at the end of each launch, so a captured launch
    replays."""
    check_graph_replays(cfg, 64, (1, 2))
