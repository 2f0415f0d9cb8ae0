"""Gated MLPs with the activation in the GEMM's epilogue on the GPU (ZipGemmConfig.silu_mul,
zipgen.runtime.gemm_silu_mul, zipgen.nn.fuse_gated_mlps): the epilogue's output must equal
PyTorch's F.silu(gate) * up on the same kernel's plain output, bit for bit, specials included
(GPU only)."""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zipgen.codegen import ZipGemmConfig
from zipgen.errors import InputError
from zipgen.nn import GatedMLP, compress_model, fuse_gated_mlps, fuse_siblings
from zipgen.runtime import gemm, gemm_silu_mul
from zipgen.runtime.gemm import launch_fused

from conftest import bits_of, requires_gpu
from test_gpu_gemm import activations, make, poisoned

pytestmark = [pytest.mark.gpu, requires_gpu]

CONFIGS = [ZipGemmConfig(w, t, d, rg, sx, strip_pairs=True) for w, t, d, rg, sx in
           [(4, 1, 1, 2, False), (16, 1, 1, 4, False), (8, 2, 1, 2, False), (8, 1, 2, 4, False),
            (2, 1, 1, 2, False), (8, 1, 1, 2, True), (4, 2, 1, 4, True)]]


def _name(cfg):
    return (f"w{cfg.warps_per_cta}_t{cfg.token_tiles}_d{cfg.depth}_rg{cfg.row_groups}"
            + ("_sx" if cfg.stage_x else ""))


def silu_mul_of_plain(cfg, x, ct):
    """The plain kernel's [M, N] output, then PyTorch's silu(gate) * up."""
    both = gemm(x, ct, config=cfg, fused=True)
    half = both.shape[-1] // 2
    return F.silu(both[:, :half]) * both[:, half:]


def epilogue(cfg, x, ct):
    y = poisoned(x.shape[0], ct.shape[0] // 2)
    launch_fused(dataclasses.replace(cfg, silu_mul=True), ct, x, None, y)
    return y


@pytest.mark.parametrize("cfg", CONFIGS, ids=_name)
@pytest.mark.parametrize("n, k", [(608, 1608), (8192, 4096), (2 * 1040, 2048)])
@pytest.mark.parametrize("m", [1, 5, 16])
def test_epilogue_equals_silu_mul_of_the_plain_kernel(cfg, n, k, m):
    """Halves of 19, 256 and 65 strip rows (a partial last CTA at 4 row groups), a ragged K,
    one or two CTA rows of tokens; the outputs poisoned first."""
    _, ct = make(n, k, seed=n + k)
    x = activations(m, k, seed=m)
    assert torch.equal(bits_of(epilogue(cfg, x, ct)), bits_of(silu_mul_of_plain(cfg, x, ct)))


def test_specials_saturation_infinities_and_nan():
    """Sums far past SiLU's saturation both ways, infinities and NaN (inf - inf) in the gate and
    the up halves: the epilogue rounds and propagates them as PyTorch does."""
    cfg = CONFIGS[0]
    _, ct = make(1024, 512, sigma=0.5)
    x = activations(1, 512)
    for scale, poison in ((1.0, None), (300.0, None), (1e36, None), (1.0, float("inf")),
                          (1.0, float("nan"))):
        xs = (x.float() * scale).to(torch.bfloat16)
        if poison is not None:
            xs[0, 7] = poison
        assert torch.equal(bits_of(epilogue(cfg, xs, ct)), bits_of(silu_mul_of_plain(cfg, xs, ct)))


@pytest.mark.parametrize("m", [1, 2, 32, 300])
def test_public_function_on_the_8b_gate_up(m):
    """The 8B stacked gate / up: M = 1 takes the epilogue (the tuned paired winner has 2 row
    groups), larger M the GEMM and PyTorch's product; both equal the plain GEMM + F.silu."""
    _, ct = make(28672, 4096)
    x = activations(m, 4096)
    both = gemm(x, ct)
    expected = F.silu(both[:, :14336]) * both[:, 14336:]
    out = poisoned(m, 14336)
    assert gemm_silu_mul(x, ct, out=out) is out
    assert torch.equal(bits_of(out), bits_of(expected))
    assert torch.equal(bits_of(gemm_silu_mul(x.view(m, 1, 4096), ct)),
                       bits_of(expected.view(m, 1, 14336)))


def test_graph_capture_and_errors():
    _, ct = make(2048, 1024)
    x = activations(1, 1024)
    out = poisoned(1, 1024)
    gemm_silu_mul(x, ct, out=out)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        gemm_silu_mul(x, ct, out=out)
    for seed in (3, 4):
        x.copy_(activations(1, 1024, seed=seed))
        out.fill_(float("nan"))
        graph.replay()
        both = gemm(x, ct)
        assert torch.equal(bits_of(out), bits_of(F.silu(both[:, :1024]) * both[:, 1024:]))
    _, odd = make(99, 1024)
    with pytest.raises(InputError, match="even number of rows"):
        gemm_silu_mul(x, odd)
    with pytest.raises(InputError, match="out must be a contiguous BF16 tensor of shape"):
        gemm_silu_mul(x, ct, out=poisoned(1, 2048))


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)

        def linear(k, n):
            lin = nn.Linear(k, n, bias=False, dtype=torch.bfloat16)
            with torch.no_grad():
                lin.weight.copy_(torch.randn(n, k, generator=g) * 0.02)
            return lin

        self.gate_proj, self.up_proj, self.down_proj = linear(1024, 2048), linear(1024, 2048), \
            linear(2048, 1024)
        self.act_fn = nn.SiLU()

    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


@pytest.mark.parametrize("mode", ["eager", "compile"])
def test_fused_mlp_keeps_the_bits_at_one_token(mode):
    """A Llama-style MLP, stacked, compressed and fused: at M = 1 (the epilogue) its output
    equals the unfused compressed MLP's bit for bit, eagerly and compiled (fullgraph)."""
    block = nn.Sequential(_Block()).cuda()
    x = activations(1, 1024).view(1, 1, 1024)
    fuse_siblings(block, x)
    compress_model(block)
    expected = block(x)
    assert fuse_gated_mlps(block, x) == ["0"] and isinstance(block[0], GatedMLP)
    got = block(x) if mode == "eager" else torch.compile(block, fullgraph=True)(x)
    assert torch.equal(bits_of(got), bits_of(expected))
