"""CompressedTensor: properties, bad input, corrupt streams."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import zipgen
from zipgen import FormatError, InputError

from conftest import assert_bit_exact


@pytest.fixture
def weights():
    g = torch.Generator().manual_seed(3)
    return (torch.randn(100, 300, generator=g) * 0.02).to(torch.bfloat16)


def test_properties(weights):
    ct = zipgen.compress(weights)
    assert ct.shape == (100, 300) and ct.numel == 30000
    assert ct.format_version == zipgen.FORMAT_VERSION == 3
    streams = ct.streams()
    assert set(streams) == {"sign_mantissa", "planes", "fallback_entries", "fallback_offsets"}
    assert ct.nbytes == sum(t.numel() * t.element_size() for t in streams.values())
    assert ct.bits_per_weight == pytest.approx(8 * ct.nbytes / 30000)
    assert ct.ratio == pytest.approx(ct.nbytes / 60000)
    assert 0.9 < ct.coverage < 1.0
    assert "CompressedTensor" in repr(ct)


def test_to_device_roundtrip(weights):
    ct = zipgen.compress(weights)
    moved = ct.to("cpu")
    assert moved.device.type == "cpu"
    assert_bit_exact(zipgen.decompress(moved), weights)


@pytest.mark.parametrize("bad,match", [
    (torch.zeros(4, 4, dtype=torch.float32), "not torch.bfloat16"),
    (torch.zeros(4, 4, dtype=torch.float16), "not torch.bfloat16"),
    (torch.zeros(4, dtype=torch.bfloat16), "2-D"),
    (torch.zeros(2, 3, 4, dtype=torch.bfloat16), "2-D"),
    (torch.zeros(0, 4, dtype=torch.bfloat16), "empty"),
    ([[1.0]], "torch.Tensor"),
])
def test_bad_input(bad, match):
    with pytest.raises(InputError, match=match):
        zipgen.compress(bad, name="layer.weight")


def test_error_names_the_tensor():
    with pytest.raises(InputError, match="my.layer"):
        zipgen.compress(torch.zeros(4, 4), name="my.layer")


def test_decompress_rejects_non_compressed():
    with pytest.raises(InputError):
        zipgen.decompress(torch.zeros(4, 4, dtype=torch.bfloat16))


def test_unknown_version(weights):
    ct = zipgen.compress(weights)
    with pytest.raises(FormatError, match="version 2 is not supported .*reads version 3"):
        replace(ct, format_version=2)


@pytest.mark.parametrize("field,value,match", [
    ("sign_mantissa", torch.zeros(10, dtype=torch.uint8), "shape"),
    ("planes", torch.zeros(1, 3, 32, dtype=torch.int64), "dtype"),
    ("fallback_entries", torch.zeros(15, dtype=torch.uint8), "entry stream of 15 bytes"),
    ("fallback_entries", torch.zeros(2, 16, dtype=torch.uint8), "1-D"),
    ("fallback_offsets", torch.zeros(3, dtype=torch.int32), "shape"),
])
def test_malformed_streams(weights, field, value, match):
    ct = zipgen.compress(weights)
    with pytest.raises(FormatError, match=match):
        replace(ct, **{field: value})


def test_bad_base(weights):
    with pytest.raises(FormatError, match="base"):
        replace(zipgen.compress(weights), base=249)


def test_corrupt_offsets_detected(weights):
    ct = zipgen.compress(weights)
    offsets = ct.fallback_offsets.clone()
    offsets[1] += 1
    offsets[2] -= 1  # same total, wrong split: only the plane counts can tell
    with pytest.raises(FormatError, match="corrupt"):
        zipgen.decompress(replace(ct, fallback_offsets=offsets))


def test_corrupt_planes_detected(weights):
    """Planes that give a fallback a non-zero code contradict its entry. (Code 0 is a valid
    exponent too, so other plane damage is for the checkpoint's checksums to find.)"""
    ct = zipgen.compress(weights)
    first = int(ct.fallback_entries[0]) | (int(ct.fallback_entries[1]) & 3) << 8  # position
    strip = int(torch.nonzero(ct.fallback_offsets[1:] > 0)[0])
    planes = ct.planes.clone()
    planes[strip, :, first >> 5] = -1  # every element of that lane gets code 7
    with pytest.raises(FormatError, match="corrupt"):
        zipgen.decompress(replace(ct, planes=planes))


def test_trusted_wraps_streams_without_validating(weights):
    """CompressedTensor.trusted (the custom op's path, which must not sync with the host)
    builds the same tensor as the validating constructor."""
    ct = zipgen.compress(weights)
    same = zipgen.CompressedTensor.trusted(ct.shape, ct.base, **ct.streams())
    assert same.shape == ct.shape and same.base == ct.base
    assert same.format_version == ct.format_version
    for name, t in ct.streams().items():
        assert getattr(same, name) is t
    assert_bit_exact(zipgen.decompress(same), weights)
    from zipgen.nn.ops import unchecked
    op_view = unchecked(*ct.shape, ct.base, *ct.streams().values())
    assert_bit_exact(zipgen.decompress(op_view), weights)
