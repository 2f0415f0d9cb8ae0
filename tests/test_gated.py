"""Gated MLPs with the activation in the GEMM (ZipGemmConfig.silu_mul, paired_kernel.cuh's
store_silu_mul, zipgen.runtime.gemm_silu_mul, torch.ops.zipgen.gemm_silu_mul,
zipgen.nn.fuse_gated_mlps): what can be checked without a GPU. The GPU's bits are checked in
test_gpu_gated.py."""
from __future__ import annotations

import dataclasses
import re
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import zipgen
from zipgen.codegen import ARCHES, ZipGemmConfig, arch_traits, render
from zipgen.codegen.build import include_dir
from zipgen.compile.nvrtc import compile_cubin
from zipgen.errors import InputError
from zipgen.nn import (GatedMLP, compress_model, decompress_model, fuse_gated_mlps,
                       fuse_siblings)
from zipgen.nn.ops import gemm_silu_mul_op
from zipgen.runtime.gated import fuses_silu_mul
from zipgen.tune.space import enumerate_space

GATE_UP = ZipGemmConfig(4, 1, 1, 2, strip_pairs=True)  # the 8B gate / up's M = 1 winner


def test_config_validity_name_and_render():
    cfg = dataclasses.replace(GATE_UP, silu_mul=True)
    assert not cfg.problems(arch_traits("sm_90"))
    assert cfg.kernel_name(arch_traits("sm_90")).endswith("_w4_d1_p2_silu")
    assert "zipgemm_pairs<4, 2, 1, 1, true>(args, smem)" in render("zipgemm", "sm_90", cfg).source
    plain = render("zipgemm", "sm_90", GATE_UP).source
    assert "zipgemm_pairs<4, 2, 1, 1>(args, smem)" in plain and "silu" not in plain.split("\n", 5)[-1]
    for bad in (ZipGemmConfig(4, 1, 1, 1, strip_pairs=True, silu_mul=True),  # one row group
                ZipGemmConfig(8, 1, 1, 2, silu_mul=True),  # not paired
                dataclasses.replace(GATE_UP, silu_mul=1)):
        assert any("silu_mul" in p for p in bad.problems(arch_traits("sm_90"))), bad


@pytest.mark.parametrize("arch", sorted(a for a in ARCHES if a != "sm_90a"))
@pytest.mark.parametrize("fields", [(4, 1, 1, 2), (16, 1, 1, 4), (8, 2, 1, 2)])
def test_silu_mul_kernels_compile_without_spills(arch, fields):
    """The epilogue keeps the paired kernel's 64-register cap at depth 1 and one token tile."""
    cfg = ZipGemmConfig(*fields, strip_pairs=True, silu_mul=True)
    rendered = render("zipgemm", arch, cfg)
    log = compile_cubin(rendered.source, rendered.arch, options=("-Xptxas=-v",),
                        include_dirs=(include_dir(),)).log
    assert " 0 bytes spill stores" in log and " 0 bytes stack frame" in log, log[-2000:]
    if cfg.min_ctas:
        assert int(re.search(r"Used (\d+) registers", log).group(1)) <= 64, log[-2000:]


def test_which_configs_fuse():
    assert fuses_silu_mul(GATE_UP, 28672) and fuses_silu_mul(ZipGemmConfig(16, 1, 1, 4,
                                                                             strip_pairs=True), 64)
    assert not fuses_silu_mul(ZipGemmConfig(8, 1, 1, 1, strip_pairs=True), 28672)
    assert not fuses_silu_mul(ZipGemmConfig(8, 2, 1, 2, True), 28672)  # staged, M > 1
    assert not fuses_silu_mul(GATE_UP, 28672 + 16)  # a half of 14344 rows: a partial strip row
    assert not any(c.silu_mul for c in enumerate_space("zipgemm", "sm_90", 1).valid)


def _stacked(n=96, k=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = (torch.randn(n, k, generator=g) * 0.05).to(torch.bfloat16)
    return w, zipgen.compress(w)


def test_op_on_the_cpu_is_silu_times_up_of_the_linear():
    w, ct = _stacked()
    x = torch.randn(2, 3, 64).to(torch.bfloat16)
    y = gemm_silu_mul_op(x, *ct.streams().values(), 96, 64, ct.base, -1)
    both = F.linear(x, w)
    assert torch.equal(y, F.silu(both[..., :48]) * both[..., 48:])
    with pytest.raises(InputError, match="even number of rows"):
        gemm_silu_mul_op(x, *ct.streams().values(), 95, 64, ct.base, -1)
    with pytest.raises(InputError, match="does not end in in_features"):
        gemm_silu_mul_op(x[..., :32], *ct.streams().values(), 96, 64, ct.base, -1)


class _MLP(nn.Module):
    def __init__(self, act=None, bias=False):
        super().__init__()
        self.gate_proj = nn.Linear(64, 96, bias=bias, dtype=torch.bfloat16)
        self.up_proj = nn.Linear(64, 96, bias=bias, dtype=torch.bfloat16)
        self.down_proj = nn.Linear(96, 64, bias=False, dtype=torch.bfloat16)
        self.act_fn = act or nn.SiLU()

    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class _Net(nn.Module):
    """A SiLU MLP, a GELU one and one with biases (only the first is a gated SiLU MLP without
    bias), then one whose forward multiplies the other way round (the same bits)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.silu, self.gelu, self.biased = _MLP(), _MLP(nn.GELU()), _MLP(bias=True)

    def forward(self, x):
        return self.biased(self.gelu(self.silu(x)))


def test_fuse_gated_mlps_replaces_only_silu_mlps_and_keeps_the_bits():
    net = _Net()
    x = torch.randn(2, 3, 64).to(torch.bfloat16)
    assert fuse_siblings(net, x).summary() == "6 Linear layers fused into 3"
    compress_model(net)
    expected, one = net(x), net(x[:1, :1])
    assert fuse_gated_mlps(net, x) == ["silu"]
    assert isinstance(net.silu, GatedMLP) and isinstance(net.gelu, _MLP)
    assert torch.equal(net(x), expected)
    assert torch.equal(net(x[:1, :1]), one)  # one token: the gemm_silu_mul op
    assert torch.equal(torch.compile(net, backend="aot_eager", fullgraph=True)(x), expected)
    assert "silu.gate_up.sign_mantissa" in net.state_dict()
    decompress_model(net)  # the BF16 model again: PyTorch takes the product, the same bits
    assert isinstance(net.silu.gate_up, nn.Linear) and torch.equal(net(x), expected)


def test_uncompressed_or_unfused_mlps_are_left_alone():
    net = _Net()
    x = torch.randn(1, 64).to(torch.bfloat16)
    assert fuse_gated_mlps(net, x) == []  # siblings not stacked
    fuse_siblings(net, x)
    assert fuse_gated_mlps(net, x) == []  # stacked, but nn.Linear (BF16): cuBLAS has no epilogue


def test_a_missing_epilogue_kernel_falls_back_once_with_a_warning(monkeypatch):
    """With compiling disabled and a bundle without the variant, gemm_silu_mul runs the GEMM and
    PyTorch's product (the same bits), warns once and does not look the kernel up again. The
    device is faked: the runtime's checks and kernels are patched, the GEMM is F.linear."""
    import importlib

    from zipgen.errors import MissingKernelError
    gated = importlib.import_module("zipgen.runtime.gated")
    gemm_module = importlib.import_module("zipgen.runtime.gemm")
    w, ct = _stacked(n=96, k=64)
    lookups = []

    def missing(op, cfg, device):
        lookups.append(cfg)
        raise MissingKernelError(f"no {cfg.kernel_name(arch_traits('sm_90'))}")

    monkeypatch.setattr(gated, "check_gemm_inputs", lambda *a: None)
    monkeypatch.setattr(gated, "use_fused", lambda *a: True)
    monkeypatch.setattr(gated.dispatch, "choose", lambda *a: GATE_UP)
    monkeypatch.setattr(gemm_module, "get_kernel", missing)
    monkeypatch.setattr(gated, "gemm", lambda x, w_, fused=None: F.linear(x, w))
    monkeypatch.setattr(gated, "_missing", set())
    x = torch.randn(1, 64).to(torch.bfloat16)
    both = F.linear(x, w)
    expected = F.silu(both[:, :48]) * both[:, 48:]
    with pytest.warns(UserWarning, match="no kernel for the gated-MLP epilogue"):
        assert torch.equal(gated.gemm_silu_mul(x, ct), expected)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not again
        assert torch.equal(gated.gemm_silu_mul(x, ct), expected)
    assert lookups == [dataclasses.replace(GATE_UP, silu_mul=True)]
