"""The generated GPU decoder, bit for bit against the original weights (GPU machine only)."""
from __future__ import annotations

import itertools

import pytest
import torch

import zipgen
from zipgen.codegen import ARCHES, DecodeConfig
from zipgen.runtime import decompress_cuda

from conftest import ALL_PATTERNS, assert_bit_exact, bits_of, from_bits, requires_gpu

pytestmark = [pytest.mark.gpu, requires_gpu]

POISON = -1  # 0xFFFF, a NaN pattern: an element the kernel never wrote stays visible


def decode_poisoned(ct, config=None):
    out = torch.full(ct.shape, POISON, dtype=torch.int16, device=ct.device).view(torch.bfloat16)
    result = decompress_cuda(ct, out=out, config=config)
    assert result.data_ptr() == out.data_ptr()
    torch.cuda.synchronize()
    return result


def check(w: torch.Tensor, config=None):
    w = w.cuda()
    ct = zipgen.compress(w.cpu()).cuda()
    assert_bit_exact(decode_poisoned(ct, config), w)


def test_all_65536_patterns():
    for shape in [(256, 256), (1, 65536), (65536, 1), (100, 655)]:
        n = shape[0] * shape[1]
        check(from_bits(ALL_PATTERNS[torch.randperm(65536)][:n].view(shape)))


def test_patterns_among_normal_weights():
    w = (torch.randn(1024, 2048) * 0.02).to(torch.bfloat16)
    flat = bits_of(w).view(-1).clone()
    flat[torch.randperm(flat.numel())[:65536]] = ALL_PATTERNS
    check(from_bits(flat.view(1024, 2048)))


@pytest.mark.parametrize("shape", [(1, 1), (1, 64), (16, 64), (63, 65), (4097, 130), (15, 7),
                                   (17, 1000), (33, 4104), (4096, 4096), (1000, 3001)])
def test_shapes(shape):
    check((torch.randn(shape) * 0.03).to(torch.bfloat16))


@pytest.mark.parametrize("lo,hi", [(0, 6), (249, 255), (0, 255)])
def test_edge_windows(lo, hi):
    shape = (200, 320)
    exp = torch.randint(lo, hi + 1, shape, dtype=torch.int32)
    rest = torch.randint(0, 256, shape, dtype=torch.int32)
    check(from_bits(((rest & 0x80) << 8) | (exp << 7) | (rest & 0x7F)))


@pytest.mark.parametrize("warps,strips", list(itertools.product((1, 2, 4, 8, 16), (1, 2, 4, 8))))
def test_every_config(warps, strips):
    w = (torch.randn(777, 1234) * 0.02).to(torch.bfloat16)
    flat = bits_of(w).view(-1).clone()
    flat[torch.randperm(flat.numel())[:5000]] = ALL_PATTERNS[torch.randperm(65536)[:5000]]
    check(from_bits(flat.view(777, 1234)), DecodeConfig(warps, strips))


def test_real_minilm_weights(minilm_bf16):
    for name, w in minilm_bf16.items():
        check(w)


def test_gpu_codec_matches_cpu_codec():
    """The torch codec on the GPU writes the same streams as on the CPU."""
    w = (torch.randn(1500, 2100) * 0.02).to(torch.bfloat16)
    a, b = zipgen.compress(w), zipgen.compress(w.cuda())
    assert a.base == b.base
    for name, t in a.streams().items():
        assert torch.equal(t, b.streams()[name].cpu()), name
    assert_bit_exact(zipgen.decompress(b), w)  # the kernel, through the public API
    from zipgen.format import decompress_reference
    assert_bit_exact(decompress_reference(b), w)  # the torch reference on the GPU


def test_one_gigabyte_matrix():
    w = (torch.randn(32768, 16384, device="cuda") * 0.02).to(torch.bfloat16)  # 1 GiB of BF16
    ct = zipgen.compress(w)  # on the GPU
    out = decode_poisoned(ct)
    assert torch.equal(bits_of(out), bits_of(w))


def test_cuda_graph_capture():
    w = (torch.randn(512, 768) * 0.02).to(torch.bfloat16).cuda()
    ct = zipgen.compress(w)
    out = torch.empty_like(w)
    decompress_cuda(ct, out=out)  # warm-up: build and load outside the capture
    out.fill_(0)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        decompress_cuda(ct, out=out)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(bits_of(out), bits_of(w))


def test_bad_out_argument():
    ct = zipgen.compress((torch.randn(64, 64) * 0.02).to(torch.bfloat16)).cuda()
    for bad in [torch.empty(64, 64, device="cuda"), torch.empty(64, 65, dtype=torch.bfloat16,
                                                                 device="cuda"),
                torch.empty(64, 64, dtype=torch.bfloat16)]:
        with pytest.raises(zipgen.InputError, match="out must be"):
            decompress_cuda(ct, out=bad)


def test_cpu_tensor_refused():
    ct = zipgen.compress((torch.randn(64, 64) * 0.02).to(torch.bfloat16))
    with pytest.raises(zipgen.InputError, match="CUDA device"):
        decompress_cuda(ct)


def test_arch_detection_matches_the_device():
    from zipgen.runtime import device_arch
    major, minor = torch.cuda.get_device_capability()
    arch = device_arch(torch.device("cuda"))
    assert ARCHES[arch].capability[0] == major
