"""zipgen.format.rows.decode_rows: rows of a compressed matrix decoded with gathers only (the
embedding lookup), bit for bit against the original rows, with and without the key index: every
pattern, specials, windows at both ends, odd shapes, no fallbacks at all, any index layout; and no
host synchronisation."""
from __future__ import annotations

import pytest
import torch

import zipgen
from zipgen.errors import InputError
from zipgen.format.rows import check_indices, decode_rows, entry_keys

from conftest import ALL_PATTERNS, bits_of, from_bits
from test_codec_exact import SPECIALS, _tensor_with_exponents


def check(w: torch.Tensor, rows: torch.Tensor) -> None:
    """Both ways of finding the entries: the sorted key index and the per-strip binary search."""
    ct = zipgen.compress(w)
    for keys in (entry_keys(ct), None):
        got = decode_rows(ct, rows, keys)
        assert got.dtype == torch.bfloat16 and got.shape == (*rows.shape, w.shape[1])
        assert torch.equal(bits_of(got), bits_of(w)[rows.to(torch.int64)])


def gaussian(n, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, k, generator=g) * 0.02).to(torch.bfloat16)


@pytest.mark.parametrize("shape", [(256, 256), (100, 655), (17, 64), (1, 1), (300, 130)])
def test_every_pattern_every_row(shape):
    n = shape[0] * shape[1]
    g = torch.Generator().manual_seed(n)
    w = from_bits(ALL_PATTERNS[torch.randperm(65536, generator=g)][:n].view(shape))
    check(w, torch.randperm(shape[0], generator=g))


def fallback_heavy_lookup() -> tuple[torch.Tensor, torch.Tensor]:
    """(weights, row ids): Gaussian weights with 20000 elements set to other patterns, and
    600 ids (more than one pass of 256 rows; repeats)."""
    w = gaussian(700, 384, seed=1)
    flat = bits_of(w).reshape(-1).clone()
    g = torch.Generator().manual_seed(2)
    flat[torch.randperm(flat.numel(), generator=g)[:20000]] = ALL_PATTERNS[:20000]
    return from_bits(flat.view(700, 384)), torch.randint(0, 700, (600,), generator=g)


def special_lookup(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights, row ids): a 17 x 70 matrix of one SPECIALS family, every row in reverse."""
    values = torch.tensor(SPECIALS[name], dtype=torch.int32).to(torch.int16)
    w = from_bits(values.repeat(17 * 70 // len(values) + 1)[:17 * 70].view(17, 70))
    return w, torch.arange(17).flip(0)


def test_fallbacks_among_realistic_weights_and_long_lookups():
    check(*fallback_heavy_lookup())


@pytest.mark.parametrize("name", sorted(SPECIALS))
def test_special_values(name):
    check(*special_lookup(name))


@pytest.mark.parametrize("lo,hi", [(0, 6), (249, 255), (0, 255)])
def test_windows_at_both_ends(lo, hi):
    w = _tensor_with_exponents(lo, hi)
    check(w, torch.arange(w.shape[0]))


def test_a_matrix_without_fallbacks():
    w = _tensor_with_exponents(120, 126)
    ct = zipgen.compress(w)
    assert ct.fallback_offsets[-1] == 0
    check(w, torch.tensor([5, 0, 95, 5]))


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.int16])
def test_index_dtypes_and_shapes(dtype):
    w = gaussian(50, 100)
    check(w, torch.tensor([[3, 49, 0], [7, 7, 1]], dtype=dtype))
    check(w, torch.tensor(9, dtype=dtype))  # a scalar index gives one row
    check(w, torch.empty(0, dtype=dtype))


def test_bad_indices():
    ct = zipgen.compress(gaussian(16, 64))
    with pytest.raises(InputError, match="integer"):
        decode_rows(ct, torch.tensor([1.0]))
    with pytest.raises(InputError, match="CompressedTensor"):
        decode_rows(gaussian(16, 64), torch.tensor([1]))
    with pytest.raises(InputError, match="meta"):
        decode_rows(ct, torch.tensor([1], device="meta"))


def test_no_host_synchronisation():
    """What CUDA graph capture forbids (reading a device value on the host), seen on the CPU as
    the aten ops behind .item() / bool() / nonzero()."""
    from torch.utils._python_dispatch import TorchDispatchMode

    aten = torch.ops.aten
    syncing = {aten._local_scalar_dense.default, aten.nonzero.default, aten.is_nonzero.default,
               aten.equal.default}
    seen = []

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in syncing:
                seen.append(str(func))
            return func(*args, **(kwargs or {}))

    ct = zipgen.compress(gaussian(300, 200))
    keys = entry_keys(ct)  # built before: it reads the record count
    ids = torch.tensor([4, 299, 17])
    with Watch():
        decode_rows(ct, ids)
        decode_rows(ct, ids, keys)
    assert seen == []


def test_check_indices_takes_integer_tensors_on_the_device_only():
    cpu = torch.device("cpu")
    for dtype in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        check_indices(torch.zeros(3, dtype=dtype), cpu)
    for bad in (torch.zeros(3), torch.zeros(3, dtype=torch.bool), [0, 1]):
        with pytest.raises(InputError, match="integer tensor"):
            check_indices(bad, cpu)
    with pytest.raises(InputError, match="are on meta, the compressed matrix on cpu"):
        check_indices(torch.zeros(3, dtype=torch.int64, device="meta"), cpu)
