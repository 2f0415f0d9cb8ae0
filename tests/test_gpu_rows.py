"""The GPU row decoder (zipgen.runtime.decode_rows_cuda, templates/rows.cu.j2): chosen rows of a
compressed matrix, bit for bit against the original rows: every BF16 pattern (fallback-heavy
strips, > 32 and up to 1024 records), specials, exponent windows at both ends, odd shapes (K odd,
K not a multiple of 64, N not a multiple of 16), long rows (several CTAs per row), every warp
count, index dtypes and layouts, a trained table; ZipEmbedding through it eagerly, in a CUDA
graph and under torch.compile; errors."""
from __future__ import annotations

import pytest
import torch

import zipgen
from zipgen.codegen import RowsConfig
from zipgen.errors import InputError
from zipgen.nn import ZipEmbedding
from zipgen.runtime import decode_rows_cuda

from conftest import ALL_PATTERNS, bits_of, from_bits, requires_gpu
from test_codec_exact import SPECIALS, _tensor_with_exponents
from test_nn import bf16_embedding
from test_rows import fallback_heavy_lookup, special_lookup

pytestmark = [pytest.mark.gpu, requires_gpu]


def check(w: torch.Tensor, rows: torch.Tensor, config: RowsConfig | None = None) -> None:
    ct = zipgen.compress(w.cuda())
    # the output comes from torch's caching allocator: leave poison (NaN bits) in the block it
    # will most likely reuse, so that an element the kernel skips cannot pass by chance
    poison = torch.full((rows.numel() * w.shape[1],), 0x7FC1, dtype=torch.int16, device="cuda")
    del poison
    got = decode_rows_cuda(ct, rows.cuda(), config)
    assert got.dtype == torch.bfloat16 and got.shape == (*rows.shape, w.shape[1]) and got.is_cuda
    want = bits_of(w)[rows.to(torch.int64)]
    assert torch.equal(bits_of(got).cpu(), want)


def shuffled_patterns(shape, seed):
    n = shape[0] * shape[1]
    g = torch.Generator().manual_seed(seed)
    reps = -(-n // 65536)
    flat = ALL_PATTERNS.repeat(reps)[torch.randperm(65536 * reps, generator=g)][:n]
    return from_bits(flat.view(shape)), g


@pytest.mark.parametrize("shape", [(256, 256), (100, 655), (17, 64), (1, 1), (300, 130),
                                   (33, 4101), (40, 28672)])
def test_every_pattern_every_row(shape):
    """All 65536 patterns shuffled: most elements are fallbacks, so strips carry hundreds of
    records; K odd (655, 4101), ragged (130), long rows (28672: 7 CTAs of 256 threads each)."""
    w, g = shuffled_patterns(shape, sum(shape))
    check(w, torch.randperm(shape[0], generator=g))


@pytest.mark.parametrize("warps", [1, 2, 4, 8, 16])
def test_every_warp_count(warps):
    w, g = shuffled_patterns((48, 1000), warps)
    check(w, torch.randint(0, 48, (70,), generator=g), RowsConfig(warps))


def test_realistic_weights_with_fallbacks_and_long_lookups():
    check(*fallback_heavy_lookup())


@pytest.mark.parametrize("name", sorted(SPECIALS))
def test_special_values(name):
    check(*special_lookup(name))


@pytest.mark.parametrize("lo,hi", [(0, 6), (249, 255), (0, 255)])
def test_windows_at_both_ends(lo, hi):
    w = _tensor_with_exponents(lo, hi)
    check(w, torch.arange(w.shape[0]))


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.int16, torch.uint8])
def test_index_dtypes_and_layouts(dtype):
    w, g = shuffled_patterns((200, 192), 5)
    ids = torch.randint(0, 200, (6, 9), generator=g).to(dtype)
    check(w, ids)  # 2-D, repeats
    check(w, ids.t())  # not contiguous
    check(w, ids[:0])  # empty
    check(w, ids[0, 0])  # 0-D


def test_trained_table(minilm_bf16):
    table = minilm_bf16["embeddings.word_embeddings.weight"]  # 30522 x 384
    g = torch.Generator().manual_seed(0)
    check(table, torch.randint(0, table.shape[0], (4096,), generator=g))
    check(table, torch.arange(table.shape[0] - 40, table.shape[0]))  # the last, partial strip row


def test_zipembedding_uses_the_kernel_under_torch_compile():
    emb = bf16_embedding(5000, 512).cuda()
    ze = ZipEmbedding.from_embedding(emb)
    ids = torch.randint(0, 5000, (3, 17), device="cuda")
    torch._dynamo.reset()
    compiled = torch.compile(ze, fullgraph=True)
    assert torch.equal(compiled(ids).view(torch.int16), emb(ids).view(torch.int16))
    assert ze.index_bytes == 0  # on the GPU no lookup index is built


def test_errors():
    w = bf16_embedding(64, 64).weight.detach()
    ct = zipgen.compress(w.cuda())
    with pytest.raises(InputError, match="integer"):
        decode_rows_cuda(ct, torch.zeros(3, device="cuda"))
    with pytest.raises(InputError, match="are on cpu"):
        decode_rows_cuda(ct, torch.zeros(3, dtype=torch.int64))
    with pytest.raises(InputError, match="CUDA device"):
        decode_rows_cuda(zipgen.compress(w), torch.zeros(3, dtype=torch.int64))
