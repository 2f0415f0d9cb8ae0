"""Split-K across CTAs (ZipGemmConfig.k_splits): the k_splits CTAs of an output tile share
each row's K, write FP32 partial tiles, and the tile's last CTA sums them in split order.
Checked against an FP32 reference (GPU only; the wgmma cases on sm_90 only)."""
from __future__ import annotations

import pytest
import torch

from zipgen.codegen import ZipGemmConfig, arch_traits
from zipgen.nn import DECODE, FUSED, ZipLinear
from zipgen.runtime import gemm, workspace_bytes
from zipgen.tune import dispatch

from conftest import requires_gpu
from test_gpu_gemm import (activations, assert_close, check_bias_and_determinism, check_fused,
                           check_graph_replays, make, poisoned, reference)
from test_gpu_wgmma import hopper_only
from test_nn import bf16_linear

pytestmark = [pytest.mark.gpu, requires_gpu]

# wgmma (where the tuner searches split-K): warps, token tiles, depth, k_splits
WGMMA = [ZipGemmConfig(w, t, d, 4, True, 1, True, 1, s)
         for w, t, d, s in [(4, 1, 1, 2), (4, 4, 1, 3), (4, 16, 1, 4), (8, 2, 2, 2), (8, 4, 1, 4),
                            (16, 1, 1, 3), (16, 4, 1, 2), (16, 8, 1, 4), (16, 16, 2, 2),
                            (4, 2, 1, 6), (4, 4, 2, 8), (8, 4, 1, 5), (16, 2, 1, 7)]]
# the mma.sync paths run it too (direct, staged, two strip rows, grouped strips)
MMA_SYNC = [ZipGemmConfig(8, 1, 2, 1, False, 1, False, 1, 2),
            ZipGemmConfig(16, 2, 1, 4, True, 1, False, 1, 3),
            ZipGemmConfig(8, 4, 1, 2, True, 2, False, 1, 4),
            ZipGemmConfig(16, 2, 1, 2, True, 1, False, 2, 2)]


def _name(cfg):
    return cfg.kernel_name(arch_traits("sm_90a" if cfg.wgmma else "sm_90"))


@hopper_only
@pytest.mark.parametrize("cfg", WGMMA, ids=_name)
@pytest.mark.parametrize("m", [1, 17, 64])
def test_wgmma_split_k(cfg, m):
    check_fused(cfg, m, seed=m)


@pytest.mark.parametrize("cfg", MMA_SYNC, ids=_name)
@pytest.mark.parametrize("m", [1, 17])
def test_mma_sync_split_k(cfg, m):
    check_fused(cfg, m, seed=m)


@hopper_only
@pytest.mark.parametrize("k", [72, 136, 1096])
def test_more_k_slices_than_strips(k):
    """16 warps x 4 splits = 16 K slices of a row with 2, 3 or 18 strips: most CTAs of a tile
    have nothing to multiply and still count themselves in, with zero partial tiles."""
    check_fused(ZipGemmConfig(16, 2, 1, 4, True, 1, True, 1, 4), 20, n=200, k=k, seed=k)


@hopper_only
def test_llama_shape_bias_and_determinism():
    # the split order is fixed: identical bits run to run, whoever finishes last
    check_bias_and_determinism(WGMMA[6], 32, n=6144)


@hopper_only
def test_cuda_graph_replays_with_new_inputs():
    """The counters go back to 0 at the end of each launch, so a captured launch replays."""
    check_graph_replays(WGMMA[3], 16, (1, 2, 3))


@hopper_only
def test_two_streams_at_once():
    """Each stream has its own workspace and counters: launches running concurrently on two
    streams do not count each other's tiles."""
    cfg = WGMMA[6]
    w, ct = make(2048, 4096)
    xs = [activations(32, 4096, seed=s) for s in (1, 2)]
    outs = [poisoned(32, 2048) for _ in xs]
    streams = [torch.cuda.Stream() for _ in xs]
    torch.cuda.synchronize()
    for _ in range(10):
        for x, out, stream in zip(xs, outs, streams):
            with torch.cuda.stream(stream):
                gemm(x, ct, out=out, config=cfg, fused=True)
    torch.cuda.synchronize()
    for x, out in zip(xs, outs):
        assert_close(out, reference(x, w))


def _split_k_everywhere(monkeypatch, cfg):
    """The runtime picks `cfg` for every fused call (the tuned winners of a test shape have no
    split-K)."""
    choose = dispatch.choose
    monkeypatch.setattr(dispatch, "choose", lambda op, device, n, k, m, default:
                        cfg if op == "zipgemm" else choose(op, device, n, k, m, default))


@pytest.mark.parametrize("path", [FUSED, DECODE])
def test_reduce_overhead_compile_keeps_the_runtime_buffers_out_of_its_pool(monkeypatch, path):
    """torch.compile(mode="reduce-overhead") warms up with every allocation routed to its
    CUDA-graph pool and fails the step when a tensor made there outlives it. The split-K
    workspace and the decode scratch are first made during that warm-up (a fresh stream, a
    fresh shape), so they must come from elsewhere (zipgen.runtime.workspace)."""
    torch._dynamo.reset()
    _split_k_everywhere(monkeypatch, MMA_SYNC[1])
    lin = bf16_linear(2056, 1048, bias=True, seed=5).cuda()  # a shape no other test uses
    zl = ZipLinear.from_linear(lin)
    zl.fused = path
    compiled = torch.compile(zl, mode="reduce-overhead")
    with torch.no_grad():
        for seed in range(4):  # warm-up, recording, then replays with new inputs
            x = activations(16, 2056, seed=seed)
            y = compiled(x)
            if path == DECODE:
                assert torch.equal(y, lin(x))
            else:
                assert_close(y, reference(x, lin.weight.detach(), lin.bias.detach()))
    torch._dynamo.reset()


def test_runtime_buffers_come_from_the_driver():
    """Outside a capture the workspace is driver memory: workspace_bytes counts it and torch's
    allocator does not (a fresh stream gets its own workspace)."""
    cfg = MMA_SYNC[2]
    w, ct = make(512, 1024)
    x = activations(32, 1024)
    out = poisoned(32, 512)
    gemm(x, ct, out=out, config=cfg, fused=True)  # kernel loaded, default stream's workspace
    stream = torch.cuda.Stream()
    torch.cuda.synchronize()
    driver, allocated = workspace_bytes(), torch.cuda.memory_allocated()
    with torch.cuda.stream(stream):
        gemm(x, ct, out=out, config=cfg, fused=True)
    torch.cuda.synchronize()
    floats, tiles = cfg.split_k_sizes(512, 32)
    assert workspace_bytes() - driver >= 4 * (floats + tiles)
    assert torch.cuda.memory_allocated() == allocated
    assert_close(out, reference(x, w))
