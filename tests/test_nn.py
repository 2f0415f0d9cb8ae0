"""zipgen.nn on the CPU: ZipLinear against nn.Linear (bit-exact: the CPU op decodes, then
F.linear), the custom ops (opcheck, torch.compile, autograd), state dicts, errors, and the
model-wide replacement helpers."""
from __future__ import annotations

import io

import pytest
import torch
from torch import nn

import zipgen
from zipgen.checkpoint import DEFAULT_EXCLUDE
from zipgen.errors import FormatError, InputError
from zipgen.nn import (ZipEmbedding, ZipLinear, compress_model, decompress_model, empty_weights,
                       load_compressed)

from conftest import assert_bit_exact


def bf16_linear(k, n, bias=True, seed=0, sigma=0.02):
    """A BF16 nn.Linear with N(0, sigma) weights (never zeros: realistic exponents)."""
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(k, n, bias=bias, dtype=torch.bfloat16)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(n, k, generator=g) * sigma)
        if bias:
            lin.bias.copy_(torch.randn(n, generator=g) * sigma)
    return lin


def activations(*shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(torch.bfloat16)


@pytest.mark.parametrize("k,n", [(256, 192), (64, 64), (100, 70), (300, 17)])
@pytest.mark.parametrize("bias", [True, False])
def test_forward_equals_nn_linear_bit_for_bit(k, n, bias):
    lin = bf16_linear(k, n, bias)
    zl = ZipLinear.from_linear(lin)
    assert (zl.in_features, zl.out_features) == (k, n)
    assert_bit_exact(zl.decompressed_weight(), lin.weight.detach())
    for shape in [(k,), (1, k), (7, k), (2, 3, k), (0, k)]:
        x = activations(*shape)
        with torch.no_grad():
            assert torch.equal(zl(x), lin(x)), shape


def test_repr_and_size():
    zl = ZipLinear.from_linear(bf16_linear(512, 256))
    text = repr(zl)
    assert "in_features=512" in text and "out_features=256" in text and "bias=True" in text
    bits = float(text.split("bits_per_weight=")[1].rstrip(")"))
    assert 10.5 < bits < 12.0  # ~11.3 bits for Gaussian weights
    assert zl.nbytes == zl.compressed().nbytes


def test_from_compressed_shares_the_streams():
    lin = bf16_linear(128, 64)
    ct = zipgen.compress(lin.weight.detach())
    zl = ZipLinear.from_compressed(ct, lin.bias.detach())
    assert zl.sign_mantissa is ct.sign_mantissa and zl.base == ct.base
    x = activations(4, 128)
    assert torch.equal(zl(x), lin(x).detach())


def test_state_dict_round_trip_into_a_skeleton(tmp_path):
    lin = bf16_linear(192, 128)
    zl = ZipLinear.from_linear(lin)
    sd = zl.state_dict()
    assert set(sd) == {"bias", "sign_mantissa", "planes", "fallback_entries",
                       "fallback_offsets", "_extra_state"}
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    loaded = torch.load(buf)
    fresh = ZipLinear(192, 128)  # fallback stream sized 0: load_state_dict takes the incoming size
    fresh.load_state_dict(loaded)
    assert fresh.base == zl.base
    x = activations(3, 192)
    assert torch.equal(fresh(x), zl(x))
    with torch.device("meta"):
        skeleton = ZipLinear(192, 128)
    skeleton.load_state_dict(loaded, assign=True)
    assert torch.equal(skeleton(x), zl(x))
    from safetensors.torch import load_file, save_file  # the extra state is a tensor: savable
    save_file(sd, str(tmp_path / "zl.safetensors"))
    again = ZipLinear(192, 128)
    again.load_state_dict(load_file(str(tmp_path / "zl.safetensors")))
    assert torch.equal(again(x), zl(x))


def test_state_dict_of_another_shape_is_refused():
    sd = ZipLinear.from_linear(bf16_linear(192, 128)).state_dict()
    with pytest.raises((InputError, RuntimeError), match="128 x 192|size mismatch"):
        ZipLinear(128, 192).load_state_dict(sd)


def test_corrupt_state_dict_fails_at_load():
    sd = ZipLinear.from_linear(bf16_linear(192, 128)).state_dict()
    sd["fallback_offsets"] = sd["fallback_offsets"].clone()
    sd["fallback_offsets"][-1] += 1000
    with pytest.raises(FormatError):
        ZipLinear(192, 128).load_state_dict(sd)


def test_errors():
    lin = bf16_linear(128, 64)
    zl = ZipLinear.from_linear(lin)
    with pytest.raises(InputError, match="not torch.bfloat16"):
        zl(torch.randn(2, 128))
    with pytest.raises(InputError, match="in_features = 128"):
        zl(activations(2, 127))
    with pytest.raises(InputError, match="BF16 layers only"):
        ZipLinear.from_linear(nn.Linear(128, 64))
    with pytest.raises(InputError, match="nn.Linear"):
        ZipLinear.from_linear(nn.Conv1d(4, 4, 1))
    with pytest.raises(InputError, match="CompressedTensor"):
        ZipLinear.from_compressed(lin.weight)
    with pytest.raises(InputError, match="bias"):
        ZipLinear.from_compressed(zl.compressed(), torch.zeros(65, dtype=torch.bfloat16))
    with pytest.raises(InputError, match="needs 64 x 100"):
        ZipLinear(100, 64).set_compressed(zl.compressed())
    with pytest.raises(InputError, match="BF16 only"):
        ZipLinear(128, 64, dtype=torch.float32)


def test_module_moves_and_casts_like_a_module():
    zl = ZipLinear.from_linear(bf16_linear(128, 64))
    x = activations(2, 128)
    y = zl(x)
    moved = zl.to("cpu").to(torch.bfloat16)
    assert moved.planes.dtype == torch.int32 and moved.sign_mantissa.dtype == torch.uint8
    assert torch.equal(moved(x), y)
    assert zl.to("meta").sign_mantissa.device.type == "meta"


def _op_args(zl, x):
    return (x, *zl.streams(), zl.out_features, zl.in_features, zl.base, zl.bias, zl.fused)


def test_opcheck():
    zl = ZipLinear.from_linear(bf16_linear(128, 64))
    for x in (activations(5, 128), activations(2, 3, 128).requires_grad_()):
        torch.library.opcheck(torch.ops.zipgen.gemm.default, _op_args(zl, x))
    torch.library.opcheck(torch.ops.zipgen.decompress.default,
                          (*zl.streams(), zl.out_features, zl.in_features, zl.base))


def test_decode_rows_op_opcheck_compile_and_errors():
    emb = bf16_embedding(300, 96)
    ze = ZipEmbedding.from_embedding(emb)
    ids = torch.tensor([[0, 299, 5], [7, 7, 1]])
    keys = ze._entry_keys(ze.compressed_unchecked())
    for index, k in ((ids, keys), (ids.to(torch.int32), None), (ids[:0], keys)):
        torch.library.opcheck(torch.ops.zipgen.decode_rows.default,
                              (index, *ze.streams(), 300, 96, ze.base, k))
    torch._dynamo.reset()
    compiled = torch.compile(ze, fullgraph=True)  # the op is opaque: no graph break
    assert torch.equal(compiled(ids).view(torch.int16), emb(ids).detach().view(torch.int16))
    with pytest.raises(InputError, match="integer"):
        ze(ids.float())
    with pytest.raises(InputError, match="tensor"):
        ze([0, 1])


def test_torch_compile_uses_the_fake_kernel():
    torch._dynamo.reset()
    lin = bf16_linear(256, 128)
    zl = ZipLinear.from_linear(lin)
    x = activations(4, 256)
    compiled = torch.compile(zl, fullgraph=False)
    assert torch.equal(compiled(x), lin(x).detach())
    graph_breaks = torch._dynamo.utils.counters["graph_break"]
    assert not graph_breaks, dict(graph_breaks)


def test_backward_matches_nn_linear():
    lin = bf16_linear(128, 64)
    zl = ZipLinear.from_linear(lin)
    zl.bias.requires_grad_(True)
    x1, x2 = activations(3, 128).requires_grad_(), activations(3, 128).requires_grad_()
    (lin(x1) ** 2).sum().backward()
    (zl(x2) ** 2).sum().backward()
    assert torch.equal(x1.grad, x2.grad)
    assert torch.allclose(zl.bias.grad.float(), lin.bias.grad.float(), rtol=1e-2, atol=1e-2)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(100, 128, dtype=torch.bfloat16)
        self.up = bf16_linear(128, 256, seed=1)
        self.down = bf16_linear(256, 128, bias=False, seed=2)
        self.small = bf16_linear(128, 32, seed=3)  # < 64 on a side
        self.fp32 = nn.Linear(128, 128)
        self.head = nn.Linear(128, 100, bias=False, dtype=torch.bfloat16)
        self.head.weight = self.embed.weight  # tied

    def forward(self, ids):
        h = self.embed(ids)
        h = self.down(torch.relu(self.up(h))) + self.small(h).sum(-1, keepdim=True)
        return self.head(h + self.fp32(h.float()).to(torch.bfloat16))


def test_compress_model_replaces_what_it_should():
    model = Tiny()
    ids = torch.randint(0, 100, (2, 5))
    with torch.no_grad():
        before = model(ids)
    report = compress_model(model)
    assert [r.name for r in report.layers] == ["up", "down"]
    assert isinstance(model.up, ZipLinear) and isinstance(model.down, ZipLinear)
    assert set(report.skipped) == {"small", "fp32", "head"}
    assert report.skipped["head"] == "weight is shared with embed.weight (tied)"
    assert "BF16" in report.skipped["fp32"]
    assert 0.6 < report.ratio < 0.75 and "2 Linear layers compressed" in report.summary()
    with torch.no_grad():
        assert torch.equal(model(ids), before)
    assert decompress_model(model) == 2
    assert type(model.up) is nn.Linear
    with torch.no_grad():
        assert torch.equal(model(ids), before)


def test_compress_model_globs():
    model = Tiny()
    report = compress_model(model, exclude=("down.*",))
    assert [r.name for r in report.layers] == ["up"]
    assert "globs" in report.skipped["down"]


def test_empty_weights_builds_on_meta_but_keeps_buffers():
    class WithBuffer(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4096, 4096)
            self.register_buffer("table", torch.arange(4.0), persistent=False)

    with empty_weights():
        m = WithBuffer()
    assert m.lin.weight.device.type == "meta" and m.lin.weight.requires_grad
    assert torch.equal(m.table, torch.arange(4.0))
    assert nn.Linear(4, 4).weight.device.type == "cpu"  # patched only inside the block


def test_load_compressed_into_a_plain_model(tmp_path):
    from safetensors.torch import save_file

    from zipgen.checkpoint import DEFAULT_EXCLUDE, Policy, compress_checkpoint

    model = Tiny()
    model.head.weight = nn.Parameter(model.embed.weight.detach().clone())  # untie: saved twice
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(sd, str(tmp_path / "model.safetensors"))
    compress_checkpoint(tmp_path / "model.safetensors", tmp_path / "zg",
                        Policy(exclude=DEFAULT_EXCLUDE + ("fp32.*",)), progress=False)
    with empty_weights():
        fresh = Tiny()
    fresh.head.weight = nn.Parameter(torch.empty_like(fresh.embed.weight))
    report = load_compressed(fresh, tmp_path / "zg")
    assert sorted(report.compressed) == ["down", "head", "up"]
    assert "fp32.weight" in report.raw and not report.missing
    ids = torch.randint(0, 100, (2, 5))
    with torch.no_grad():
        assert torch.equal(fresh(ids), model(ids))

    class Other(Tiny):
        def __init__(self):
            super().__init__()
            self.extra = nn.Linear(4, 4)
    with empty_weights():
        other = Other()
    with pytest.raises(FormatError, match="missing.*extra"):
        load_compressed(other, tmp_path / "zg")
    with empty_weights():
        other = Other()
    assert load_compressed(other, tmp_path / "zg", strict=False).missing == ["extra.weight",
                                                                             "extra.bias"]


# --- ZipEmbedding ----------------------------------------------------------------------------


def bf16_embedding(num, dim, seed=0, padding_idx=None):
    g = torch.Generator().manual_seed(seed)
    emb = nn.Embedding(num, dim, padding_idx=padding_idx, dtype=torch.bfloat16)
    with torch.no_grad():
        emb.weight.copy_(torch.randn(num, dim, generator=g) * 0.02)
    return emb


@pytest.mark.parametrize("num,dim", [(1000, 128), (37, 70), (64, 64)])
def test_embedding_lookup_equals_nn_embedding_bit_for_bit(num, dim):
    emb = bf16_embedding(num, dim, padding_idx=0)
    ze = ZipEmbedding.from_embedding(emb)
    assert (ze.num_embeddings, ze.embedding_dim, ze.padding_idx) == (num, dim, 0)
    assert_bit_exact(ze.decompressed_weight(), emb.weight.detach())
    g = torch.Generator().manual_seed(5)
    for shape in [(7,), (2, 9), (0,), ()]:
        ids = torch.randint(0, num, shape, generator=g)
        with torch.no_grad():
            assert_bit_exact(ze(ids), emb(ids))
    assert "bits_per_weight" in repr(ze)
    if (num, dim) == (1000, 128):  # tiny odd tables pay for their padding
        assert ze.nbytes < 0.75 * 2 * num * dim


def test_embedding_state_dict_round_trip_and_errors():
    ze = ZipEmbedding.from_embedding(bf16_embedding(300, 96))
    fresh = ZipEmbedding(300, 96)
    fresh.load_state_dict(ze.state_dict())
    ids = torch.tensor([[0, 299, 5]])
    assert torch.equal(fresh(ids).view(torch.int16), ze(ids).view(torch.int16))
    with pytest.raises(InputError, match="300 x 96"):
        ZipEmbedding(200, 96).load_state_dict(ze.state_dict())
    # the lookup index follows the streams: loading another table into a used module rebuilds it
    other = ZipEmbedding.from_embedding(bf16_embedding(300, 96, seed=7))
    assert fresh.index_bytes > 0 and fresh.nbytes > sum(t.numel() for t in fresh.streams())
    fresh.load_state_dict(other.state_dict())
    assert torch.equal(fresh(ids).view(torch.int16), other(ids).view(torch.int16))
    with pytest.raises(InputError, match="BF16"):
        ZipEmbedding.from_embedding(nn.Embedding(100, 64))
    with pytest.raises(InputError, match="max_norm"):
        ZipEmbedding.from_embedding(nn.Embedding(100, 64, max_norm=1.0, dtype=torch.bfloat16))
    with pytest.raises(InputError, match="BF16"):
        ZipEmbedding(10, 10, dtype=torch.float32)


class Untied(Tiny):
    def __init__(self):
        super().__init__()
        self.head.weight = nn.Parameter(self.embed.weight.detach().clone())


def test_compress_model_with_embeddings():
    model = Tiny()
    report = compress_model(model, embeddings=True)
    assert "embed" in report.skipped and "tied" in report.skipped["embed"]  # tied to head
    model, ids = Untied(), torch.randint(0, 100, (2, 5))
    with torch.no_grad():
        before = model(ids)
    report = compress_model(model, embeddings=True)
    assert [r.name for r in report.layers] == ["embed", "up", "down", "head"]
    assert "4 layers (3 Linear, 1 embedding) compressed" in report.summary()
    assert isinstance(model.embed, ZipEmbedding) and isinstance(model.head, ZipLinear)
    with torch.no_grad():
        assert torch.equal(model(ids), before)
    assert decompress_model(model) == 4
    assert type(model.embed) is nn.Embedding and not model.embed.weight.requires_grad
    with torch.no_grad():
        assert torch.equal(model(ids), before)
    assert [r.name for r in compress_model(Untied()).layers] == ["up", "down", "head"]
    report = compress_model(Untied(), exclude=DEFAULT_EXCLUDE + ("embed.*",), embeddings=True)
    assert "globs" in report.skipped["embed"]  # the caller's own globs still apply to tables


def test_load_compressed_keeps_compressed_embeddings_compressed(tmp_path):
    from safetensors.torch import save_file

    from zipgen.checkpoint import Policy, compress_checkpoint

    model = Untied()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(tmp_path / "model.safetensors"))
    compress_checkpoint(tmp_path / "model.safetensors", tmp_path / "zg",
                        Policy(exclude=("fp32.*",)), progress=False)  # embeddings included
    with empty_weights():
        fresh = Untied()
    report = load_compressed(fresh, tmp_path / "zg")
    assert sorted(report.compressed) == ["down", "embed", "head", "up"] and not report.decoded
    assert isinstance(fresh.embed, ZipEmbedding)
    ids = torch.randint(0, 100, (2, 5))
    with torch.no_grad():
        assert torch.equal(fresh(ids), model(ids))
