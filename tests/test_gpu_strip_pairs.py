"""ZipGEMM with K strips in pairs (ZipGemmConfig.strip_pairs; paired_kernel.cuh): one patch pass
for two adjacent strips, whose records come from one prefetched window in one or two rounds, or
from global memory past 55; activations direct or staged per warp (stage_x,
paired_activations.cuh). Checked against an FP32 reference, and bit for bit where the product
is exact (GPU only)."""
from __future__ import annotations

import pytest
import torch

from zipgen.codegen import ZipGemmConfig, arch_traits
from zipgen.runtime import gemm

from conftest import requires_gpu
from test_gpu_gemm import (activations, assert_close, check_bias_and_determinism, check_fused,
                           check_graph_replays, check_selected_columns, fallback_heavy, make,
                           reference)

pytestmark = [pytest.mark.gpu, requires_gpu]


def paired(warps, token_tiles, depth, row_groups, stage_x=False):
    return ZipGemmConfig(warps, token_tiles, depth, row_groups, stage_x, strip_pairs=True)


# warps 2-16, 1-4 row groups, load depth 1-4 (ring slots per loop body: 2, 6, 4, 10 strips),
# 1-4 token tiles; the M = 1 winners' shapes (8 / 16 warps, depth 1, one token tile) first
CONFIGS = [paired(w, t, d, rg) for w, t, d, rg in
           [(8, 1, 1, 2), (16, 1, 1, 1), (8, 1, 1, 1), (4, 1, 2, 1), (16, 1, 3, 4), (2, 1, 4, 1),
            (8, 2, 1, 2), (4, 4, 2, 4), (16, 1, 2, 2)]]
# activations staged per warp: 1, 2 and 4 token tiles (1-4 copies per lane and token row pair)
STAGED = [paired(w, t, d, rg, True) for w, t, d, rg in
          [(8, 1, 1, 1), (16, 1, 1, 4), (4, 1, 1, 2), (8, 2, 1, 2), (4, 4, 2, 1), (2, 1, 4, 1)]]


def _name(cfg):
    return cfg.kernel_name(arch_traits("sm_80"))


def unit_records(ct, n, k):
    """Fallback records per unit (strips 2u, 2u + 1 of a row, both of 64 full columns)."""
    per_row = -(-k // 64)
    units = (per_row - (k % 64 != 0)) // 2
    offsets = ct.fallback_offsets.to(torch.int64).cpu()
    rows = -(-n // 16)
    first = (torch.arange(rows)[:, None] * per_row + 2 * torch.arange(units)[None, :]).reshape(-1)
    return offsets[first + 2] - offsets[first]


@pytest.mark.parametrize("cfg", CONFIGS + STAGED, ids=_name)
@pytest.mark.parametrize("m", [1, 5, 17])
def test_configs_on_a_ragged_matrix(cfg, m):
    """N = 300 (strip rows past N in the last CTA), K = 1608: 25 full strips and a ragged one, so
    12 units and two strips left over, the last ragged; outputs poisoned first."""
    check_fused(cfg, m, seed=m)


@pytest.mark.parametrize("k", [64, 72, 128, 136, 1536, 1600])
@pytest.mark.parametrize("cfg", [CONFIGS[0], CONFIGS[1], CONFIGS[4], STAGED[0], STAGED[1]],
                         ids=_name)
def test_units_and_leftover_strips(cfg, k):
    """No unit (1 or 2 strips, one ragged), one unit (and a ragged strip), whole units only, whole
    units and one full strip left over; more K slices than units for the 16-warp kernels."""
    w, ct = make(200, k, seed=k)
    for m in (1, 9):
        x = activations(m, k, seed=m)
        out = torch.full((m, 200), float("nan"), device="cuda", dtype=torch.bfloat16)
        gemm(x, ct, out=out, config=cfg, fused=True)
        assert_close(out, reference(x, w))


@pytest.mark.parametrize("cfg", [CONFIGS[0], CONFIGS[1], CONFIGS[6], STAGED[0], STAGED[3]],
                         ids=_name)
def test_selected_columns_are_the_weights_bit_for_bit(cfg):
    """Token t picks one column c_t of W (x one-hot): y[t] = W[:, c_t] exactly, for columns in
    every K strip and every position of a strip. The weights' units have 1-55 records (one or
    two rounds from the prefetched words), so a record patched into the wrong strip of its
    unit, or not at all, shows."""
    n, k = 512, 4096
    w, ct = make(n, k, seed=7)
    records = unit_records(ct, n, k)
    assert (records > 32).any() and (records <= 32).any(), records.float().mean()
    m = 8 * cfg.token_tiles * 3  # three CTAs along M
    check_selected_columns(cfg, w, ct, (torch.arange(m, device="cuda") * 61) % k)


@pytest.mark.parametrize("cfg", [CONFIGS[0], CONFIGS[5], STAGED[2]], ids=_name)
def test_fallback_heavy_weights(cfg):
    """A quarter of the weights outside the window: ~500 records per unit, past the prefetched
    55, from global memory in further rounds."""
    w, ct = fallback_heavy(256, 2048)
    assert (unit_records(ct, 256, 2048) > 55).all()
    for m in (1, 40):
        x = activations(m, 2048)
        assert_close(gemm(x, ct, config=cfg, fused=True), reference(x, w))
    # one-hot activations: exact, whichever round patched the element
    check_selected_columns(cfg, w, ct, torch.arange(0, 2048, 97, device="cuda"))


@pytest.mark.parametrize("cfg, m", [(CONFIGS[1], 1), (STAGED[0], 8), (STAGED[3], 16)],
                         ids=lambda v: _name(v) if isinstance(v, ZipGemmConfig) else f"m{v}")
def test_llama_shape_bias_and_determinism(cfg, m):
    check_bias_and_determinism(cfg, m)  # each warp in K order, the slices in a fixed order


@pytest.mark.parametrize("cfg, m", [(CONFIGS[0], 1), (CONFIGS[1], 1), (STAGED[0], 8)],
                         ids=lambda v: _name(v) if isinstance(v, ZipGemmConfig) else f"m{v}")
def test_cuda_graph_replays_with_new_inputs(cfg, m):
    check_graph_replays(cfg, m, (1, 2))
