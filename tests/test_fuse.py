"""zipgen.nn.fuse_siblings: sibling projections stacked into one Linear, found by their shared
input, not by their names (CPU)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

from zipgen.errors import InputError  # noqa: E402
from zipgen.nn import SiblingSlice, ZipLinear, compress_model, find_siblings, fuse_siblings  # noqa: E402

TINY = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=1000)


def tiny_llama(dtype=torch.bfloat16, seed=0, **overrides):
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(**{**TINY, **overrides})
    model = transformers.LlamaForCausalLM(config).to(dtype).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)  # never zeros
    return model


def ids(batch=2, length=12, seed=3):
    return torch.randint(0, TINY["vocab_size"], (batch, length),
                         generator=torch.Generator().manual_seed(seed))


def test_siblings_are_found_by_their_shared_input():
    model = tiny_llama()
    found = dict(find_siblings(model, ids(1, 2)))
    for layer in range(TINY["num_hidden_layers"]):
        assert found[f"model.layers.{layer}.self_attn"] == ("q_proj", "k_proj", "v_proj")
        assert found[f"model.layers.{layer}.mlp"] == ("gate_proj", "up_proj")
    assert len(found) == 2 * TINY["num_hidden_layers"]  # o_proj, down_proj, lm_head: alone


def test_fused_model_computes_the_same_logits():
    model = tiny_llama(torch.float32)
    x = ids()
    with torch.no_grad():
        before = model(x).logits
    report = fuse_siblings(model, ids(1, 2))
    assert report.summary() == "10 Linear layers fused into 4"
    attn = model.model.layers[0].self_attn
    assert isinstance(attn.q_proj, SiblingSlice) and type(attn.fused_q_proj_k_proj_v_proj) is nn.Linear
    assert attn.fused_q_proj_k_proj_v_proj.out_features == 256 + 2 * 128
    with torch.no_grad():
        after = model(x).logits
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
    assert torch.equal(after.argmax(-1), before.argmax(-1))
    # the stacked weights are the siblings' own, in order; no parameter is left twice
    assert sum(p.numel() for p in model.parameters()) == sum(
        p.numel() for p in tiny_llama(torch.float32).parameters())


def test_fused_then_compressed_equals_fused_bf16_exactly():
    """compress_model compresses each stacked weight as one layer; on the CPU a ZipLinear
    decodes its exact weight and calls F.linear, so the logits are the fused BF16 model's."""
    model = tiny_llama()
    fuse_siblings(model, ids(1, 2))
    x = ids()
    with torch.no_grad():
        reference = model(x).logits
    report = compress_model(model)
    assert len(report.layers) == 2 * (1 + 1 + 1 + 1) + 1  # per layer qkv, o, gate_up, down; lm_head
    attn = model.model.layers[1].self_attn
    assert isinstance(attn.fused_q_proj_k_proj_v_proj, ZipLinear)
    with torch.no_grad():
        assert torch.equal(model(x).logits, reference)  # the slices follow the replaced Linear


class _Counting(nn.Module):
    def __init__(self, linear):
        super().__init__()
        self.linear, self.calls = linear, 0

    def forward(self, x):
        self.calls += 1
        return self.linear(x)


def _qkv():
    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k, self.v = nn.Linear(8, 4), nn.Linear(8, 2), nn.Linear(8, 2)

        def forward(self, x):
            return torch.cat([self.q(x), self.k(x), self.v(x)], -1)

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = Attention()

        def forward(self, x):
            return self.attn(x)

    torch.manual_seed(0)
    return Model()


def test_each_call_computes_once_and_a_replayed_input_computes_again():
    """Siblings share one GEMM per call; a second call with the very same tensor (a static
    buffer, as in CUDA graph capture after a warm-up) must compute again, not reuse."""
    model = _qkv()
    x = torch.randn(3, 8)
    expected = model(x)
    fuse_siblings(model, x)
    counting = _Counting(model.attn.fused_q_k_v)
    model.attn.fused_q_k_v = counting
    torch.testing.assert_close(model(x), expected)
    assert counting.calls == 1
    torch.testing.assert_close(model(x), expected)
    assert counting.calls == 2
    # a sibling called twice with one input recomputes; another input computes afresh
    model.attn.k(x)
    assert counting.calls == 3
    # an input rewritten in place between two siblings' calls is not served stale
    z = torch.randn(3, 8)
    model.attn.q(z)
    assert counting.calls == 4
    z.mul_(2)
    torch.testing.assert_close(model.attn.k(z), model.attn.fused_q_k_v.linear(z)[..., 4:6])
    assert counting.calls == 5  # k computed afresh
    y = torch.randn(3, 8)
    assert torch.equal(model.attn.q(y), model.attn.fused_q_k_v.linear(y)[..., :4])


def test_linears_that_cannot_stack_or_are_reused_stay_alone():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(8, 4), nn.Linear(8, 4, bias=False)  # bias differs
            self.c, self.d = nn.Linear(8, 4), nn.Linear(8, 4)

        def forward(self, x):
            return self.a(x) + self.b(x) + self.c(x) + self.d(x) + self.d(2 * x)  # d: 2 inputs

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.odd = Odd()

        def forward(self, x):
            return self.odd(x)

    model = Model()
    x = torch.randn(2, 8)
    assert dict(find_siblings(model, x)) == {"odd": ("a", "b", "c")}  # d read two inputs
    expected = model(x)
    assert fuse_siblings(model, x).groups == [("odd", ("a", "c"))]  # b has no bias
    assert type(model.odd.b) is nn.Linear and type(model.odd.d) is nn.Linear
    assert isinstance(model.odd.a, SiblingSlice) and isinstance(model.odd.c, SiblingSlice)
    torch.testing.assert_close(model(x), expected)


def test_a_name_taken_by_an_earlier_fusion_is_refused():
    model = _qkv()
    x = torch.randn(3, 8)
    model.attn.add_module("fused_q_k_v", nn.Linear(8, 8))
    with pytest.raises(InputError, match="fused twice"):
        fuse_siblings(model, x)
    model = _qkv()
    fuse_siblings(model, x)
    assert fuse_siblings(model, x).groups == []  # the slices are no Linear layers any more


def test_torch_compile_traces_the_shared_output():
    model = tiny_llama(torch.float32)
    fuse_siblings(model, ids(1, 2))
    x = ids()
    with torch.no_grad():
        eager = model(x).logits
        compiled = torch.compile(model, backend="eager", fullgraph=True)(x).logits
    torch.testing.assert_close(compiled, eager)


def test_compressed_siblings_are_stacked_losslessly():
    """ZipLinear siblings (a model compressed first): decoded, stacked, compressed again."""
    model = tiny_llama()
    compress_model(model)
    x = ids()
    with torch.no_grad():
        before = model(x).logits
    mlp = model.model.layers[0].mlp
    gate, up = mlp.gate_proj.decompressed_weight(), mlp.up_proj.decompressed_weight()
    assert fuse_siblings(model, ids(1, 2)).summary() == "10 Linear layers fused into 4"
    assert isinstance(mlp.fused_gate_proj_up_proj, ZipLinear)
    stacked = mlp.fused_gate_proj_up_proj.decompressed_weight()
    assert torch.equal(stacked.view(torch.int16), torch.cat([gate, up]).view(torch.int16))
    with torch.no_grad():
        after = model(x).logits
    torch.testing.assert_close(after, before, rtol=2e-2, atol=2e-2)
