"""zipgen.integrations.hf on the CPU: tiny Llama / Qwen2 / Mistral models saved with
save_pretrained, compressed with `zipgen compress`, loaded with from_pretrained. On the CPU the
compressed layers decode then call F.linear, so logits must equal the BF16 model's exactly."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from zipgen.checkpoint import compress_checkpoint  # noqa: E402
from zipgen.cli.main import main  # noqa: E402
from zipgen.errors import FormatError, InputError  # noqa: E402
from zipgen.integrations import hf, hf_bench  # noqa: E402
from zipgen.nn import ZipLinear  # noqa: E402

from conftest import assert_bit_exact  # noqa: E402

TINY = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=1000)


def save_tiny(folder: Path, config_cls, model_cls, seed=0, **overrides) -> Path:
    """A tiny model with N(0, 0.02) BF16 weights (never zeros), saved like a hub folder."""
    torch.manual_seed(seed)
    model = model_cls(config_cls(**{**TINY, **overrides})).to(torch.bfloat16)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    model.save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """(source folder, compressed folder) of the tiny Llama of the issue (untied lm_head)."""
    root = tmp_path_factory.mktemp("llama")
    src = save_tiny(root / "src", transformers.LlamaConfig, transformers.LlamaForCausalLM)
    compress_checkpoint(src, root / "zg", progress=False)
    return src, root / "zg"


def reference(src):
    return transformers.AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16).eval()


def ids(batch=2, length=12, seed=3):
    return torch.randint(0, TINY["vocab_size"], (batch, length),
                         generator=torch.Generator().manual_seed(seed))


def test_every_linear_is_compressed_and_decodes_bit_exactly(llama):
    src, dst = llama
    model = hf.from_pretrained(dst, device="cpu")
    zips = {n: m for n, m in model.named_modules() if isinstance(m, ZipLinear)}
    assert len(zips) == 2 * 7 + 1  # q k v o gate up down per layer + lm_head
    assert "lm_head" in zips and not model.training
    from safetensors.torch import load_file
    original = load_file(src / "model.safetensors")
    for name, zl in zips.items():
        assert_bit_exact(zl.decompressed_weight(), original[name + ".weight"])
    for name, t in model.state_dict().items():  # raw tensors too
        if name in original:
            assert torch.equal(t.view(torch.uint8), original[name].view(torch.uint8)), name


def test_logits_and_greedy_tokens_equal_the_bf16_model(llama):
    src, dst = llama
    ref, model = reference(src), hf.from_pretrained(dst, device="cpu")
    x = ids()
    with torch.no_grad():
        assert torch.equal(model(x).logits, ref(x).logits)
    mask = torch.ones_like(x)
    kwargs = dict(max_new_tokens=6, do_sample=False, attention_mask=mask)
    assert torch.equal(model.generate(x, **kwargs), ref.generate(x, **kwargs))


def test_weight_memory_shrinks(llama):
    src, dst = llama
    ref, model = reference(src), hf.from_pretrained(dst, device="cpu")
    before, after = hf.weight_memory(ref), hf.weight_memory(model)
    assert before.compressed == 0 and before.total == before.raw
    assert after.ratio <= 0.75  # the linear layers: ~70 % of BF16 for Gaussian weights
    assert after.total_as_bf16 == before.total
    assert after.total < 0.8 * before.total  # embeddings and norms stay raw
    assert "% of BF16" in str(after)


def test_compressed_embeddings_load_as_zipembedding(llama, tmp_path):
    """`zipgen compress --compress-embeddings`: the table stays compressed in memory too."""
    from zipgen.checkpoint import Policy
    from zipgen.nn import ZipEmbedding

    src, plain = llama
    compress_checkpoint(src, tmp_path / "zg", Policy(exclude=()), progress=False)
    model = hf.from_pretrained(tmp_path / "zg", device="cpu")
    assert isinstance(model.model.embed_tokens, ZipEmbedding)
    x = ids()
    with torch.no_grad():
        assert torch.equal(model(x).logits, reference(src)(x).logits)
    with_table = hf.weight_memory(model)
    without = hf.weight_memory(hf.from_pretrained(plain, device="cpu"))
    assert with_table.total_as_bf16 == without.total_as_bf16
    table = 2 * TINY["vocab_size"] * TINY["hidden_size"]
    assert without.total - with_table.total > 0.25 * table  # the table at ~70 %, not 100 %


def test_tied_embeddings_stay_tied(tmp_path):
    src = save_tiny(tmp_path / "src", transformers.LlamaConfig, transformers.LlamaForCausalLM,
                    tie_word_embeddings=True)
    compress_checkpoint(src, tmp_path / "zg", progress=False)
    model = hf.from_pretrained(tmp_path / "zg", device="cpu")
    assert not isinstance(model.lm_head, ZipLinear)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    with torch.no_grad():
        assert torch.equal(model(ids()).logits, reference(src)(ids()).logits)


@pytest.mark.parametrize("arch", ["Qwen2", "Mistral"])
def test_other_llama_style_models_load_without_per_model_code(tmp_path, arch):
    config_cls = getattr(transformers, f"{arch}Config")
    model_cls = getattr(transformers, f"{arch}ForCausalLM")
    src = save_tiny(tmp_path / "src", config_cls, model_cls)
    compress_checkpoint(src, tmp_path / "zg", progress=False)
    model = hf.from_pretrained(tmp_path / "zg", device="cpu")
    assert type(model) is model_cls
    zips = [m for m in model.modules() if isinstance(m, ZipLinear)]
    assert len(zips) == 15
    if arch == "Qwen2":  # q/k/v carry biases
        assert sum(m.bias is not None for m in zips) == 6
    with torch.no_grad():
        assert torch.equal(model(ids()).logits, reference(src)(ids()).logits)


def test_state_dict_round_trip_of_the_whole_model(llama):
    _, dst = llama
    model = hf.from_pretrained(dst, device="cpu")
    again = hf.from_pretrained(dst, device="cpu")
    for m in again.modules():  # scramble, then restore from the state dict
        if isinstance(m, ZipLinear):
            m.base = 0
    again.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(again(ids()).logits, model(ids()).logits)


def test_loader_errors(llama, tmp_path):
    src, dst = llama
    with pytest.raises(FormatError, match="zipgen.json"):
        hf.from_pretrained(src, device="cpu")  # an uncompressed folder
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in dst.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    config = json.loads((broken / "config.json").read_text())
    config["intermediate_size"] = 768
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match="wrong config.json"):
        hf.from_pretrained(broken, device="cpu")
    with pytest.raises(InputError, match="BF16"):
        hf.from_pretrained(dst, device="cpu", dtype=torch.float16)
    (broken / "config.json").unlink()
    with pytest.raises(InputError, match="no config.json"):
        hf.from_pretrained(broken, device="cpu")


def test_bench_harness_matches_generate(llama):
    _, dst = llama
    model = hf.from_pretrained(dst, device="cpu")
    runs = hf_bench.benchmark(model, "zipgen", batches=(1, 3), prompt_len=8, new_tokens=5,
                              mode="eager", repeats=1)
    assert [r.batch for r in runs] == [1, 3] and runs[1].tokens.shape == (3, 5)
    prompt = hf_bench.prompts(model.config.vocab_size, 3, 8)
    out = model.generate(prompt, max_new_tokens=5, do_sample=False,
                         attention_mask=torch.ones_like(prompt))
    assert torch.equal(runs[1].tokens, out[:, 8:])
    assert hf_bench.agreement(runs[1].tokens, runs[1].tokens) == (1.0, 5.0)
    flipped = runs[1].tokens.clone()
    flipped[0, 2] += 1
    assert hf_bench.agreement(runs[1].tokens, flipped) == pytest.approx((14 / 15, (2 + 5 + 5) / 3))
    with pytest.raises(ValueError, match="needs a CUDA model"):
        hf_bench.benchmark(model, "x", mode="graph")


def test_teacher_forcing_feeds_the_given_tokens(llama):
    """With forced tokens the decoder feeds them and records the model's argmax after each
    prefix: the same as one full forward pass over the prompt and the forced tokens."""
    _, dst = llama
    model = hf.from_pretrained(dst, device="cpu")
    prompt = hf_bench.prompts(model.config.vocab_size, 2, 8)
    forced = torch.randint(0, model.config.vocab_size, (2, 5),
                           generator=torch.Generator().manual_seed(5))
    dec = hf_bench.Decoder(model, 2, 8, 5, "eager", forced=forced)
    dec.capture(prompt)
    predicted, _, _ = dec.run(prompt)
    with torch.no_grad():
        logits = model(input_ids=torch.cat([prompt, forced], 1)).logits
    assert torch.equal(predicted, logits[:, 7:12].argmax(-1))
    assert not torch.equal(predicted, forced)  # random tokens are not the model's own choices
    with pytest.raises(InputError, match="forced tokens"):
        hf_bench.Decoder(model, 2, 8, 4, "eager", forced=forced)


def test_decode_step_has_no_host_sync(llama):
    """What a CUDA graph cannot capture: a step that reads a device value on the host. Seen on
    the CPU as the aten ops behind .item() / bool() / nonzero (zipgen's ops are opaque here;
    their CUDA kernels skip validation for this reason)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    aten = torch.ops.aten
    syncing = {aten._local_scalar_dense.default, aten.nonzero.default, aten.is_nonzero.default,
               aten.equal.default}

    class Watch(TorchDispatchMode):
        seen: list = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in syncing:
                self.seen.append(str(func))
            return func(*args, **(kwargs or {}))

    _, dst = llama
    model = hf.from_pretrained(dst, device="cpu")
    dec = hf_bench.Decoder(model, 2, 8, 4, "eager")
    prompt = hf_bench.prompts(model.config.vocab_size, 2, 8)
    dec.capture(prompt)
    dec.prefill(prompt)
    with Watch() as watch:
        dec.step()
    assert watch.seen == []


def test_bench_model_cli_on_the_cpu(llama, tmp_path, capsys):
    _, dst = llama
    out = tmp_path / "bench.json"
    assert main(["bench-model", str(dst), "--device", "cpu", "--mode", "eager", "--batches",
                 "1,2", "--prompt", "8", "--new-tokens", "4", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "greedy agree" in text and "forced agree" in text and "100.0%" in text
    assert "15 Linear layers compressed" in text
    rows = json.loads(out.read_text())["rows"]
    assert [r["agreement"] for r in rows] == [1.0, 1.0]
    assert [r["teacher_forced_agreement"] for r in rows] == [1.0, 1.0]
    assert rows[0]["compressed"]["weight_bytes"] < rows[0]["baseline"]["weight_bytes"]
    assert all(r[side]["repeats_agree"] for r in rows for side in ("baseline", "compressed"))


def test_bench_model_saves_its_tokens(llama, tmp_path):
    """--tokens-out: every generated token (both models, the teacher-forced argmax), so two
    runs can be compared bit for bit; the same seeds give the same tokens."""
    _, dst = llama
    files = [tmp_path / "a.pt", tmp_path / "b.pt"]
    for f in files:
        assert main(["bench-model", str(dst), "--device", "cpu", "--mode", "eager", "--batches",
                     "1,2", "--prompt", "8", "--new-tokens", "4", "--tokens-out", str(f),
                     "--attn", "sdpa-math"]) == 0
    a, b = (torch.load(f) for f in files)
    assert set(a) == {"bf16", "zipgen", "forced"} and set(a["bf16"]) == {1, 2}
    assert a["zipgen"][2].shape == (2, 4)
    for name in a:
        for batch in a[name]:
            assert torch.equal(a[name][batch], b[name][batch])
    assert torch.equal(a["bf16"][2], a["zipgen"][2])  # the decode path on the CPU: exact
    assert not list(tmp_path.glob("*.tmp"))


def test_attention_choices():
    """hf_bench.attention: PyTorch's choice, or SDPA's math backend only (deterministic)."""
    import torch.nn.functional as F

    q = torch.randn(1, 2, 4, 8)
    with hf_bench.attention("sdpa-math"):
        math = F.scaled_dot_product_attention(q, q, q)
    with hf_bench.attention("sdpa"):
        default = F.scaled_dot_product_attention(q, q, q)
    torch.testing.assert_close(math, default)
    with pytest.raises(InputError, match="attention must be one of"):
        hf_bench.attention("flash")


def test_fused_siblings_load_and_bench(llama, tmp_path, capsys):
    """from_pretrained(fuse_siblings=True) stacks q / k / v and gate / up of the compressed
    folder losslessly; the fused model predicts like the unfused one; bench-model
    --fuse-siblings runs both models fused (the decode path: 100 % agreement)."""
    from zipgen.nn import GatedMLP, SiblingSlice

    _, dst = llama
    plain, fused = hf.from_pretrained(dst, device="cpu"), hf.from_pretrained(
        dst, device="cpu", fuse_siblings=True)
    attn = fused.model.layers[0].self_attn
    assert isinstance(attn.q_proj, SiblingSlice)
    mlp = fused.model.layers[0].mlp  # gate / up stacked, SiLU x up in the GEMM's epilogue
    assert isinstance(mlp, GatedMLP) and isinstance(mlp.gate_up, ZipLinear)
    stacked = attn.fused_q_proj_k_proj_v_proj
    assert isinstance(stacked, ZipLinear)
    parts = [getattr(plain.model.layers[0].self_attn, n).decompressed_weight()
             for n in ("q_proj", "k_proj", "v_proj")]
    assert_bit_exact(stacked.decompressed_weight(), torch.cat(parts))
    x = ids()
    with torch.no_grad():
        torch.testing.assert_close(fused(x).logits, plain(x).logits, rtol=2e-2, atol=2e-2)
    assert hf.weight_memory(fused).total < hf.weight_memory(plain).total * 1.01
    out = tmp_path / "bench.json"
    assert main(["bench-model", str(dst), "--device", "cpu", "--mode", "eager", "--batches", "1",
                 "--prompt", "8", "--new-tokens", "4", "--fuse-siblings", "--json",
                 str(out)]) == 0
    text = capsys.readouterr().out
    assert "9 Linear layers compressed" in text  # per layer qkv, o, gate_up, down; lm_head
    assert [r["agreement"] for r in json.loads(out.read_text())["rows"]] == [1.0]


def _e2e_module():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "e2e.py"
    spec = importlib.util.spec_from_file_location("e2e_bench", path)
    e2e = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(e2e)
    return e2e


def test_e2e_in_several_processes(monkeypatch, capsys, tmp_path):
    """--processes N: the comparison once per process (here the child command runs in this
    process, on the shrunk model), each with its own --json and --tokens-out, then medians."""
    e2e = _e2e_module()
    monkeypatch.setattr(e2e, "LLAMA_31_8B", {**e2e.LLAMA_31_8B, **TINY, "head_dim": 64})
    monkeypatch.setitem(e2e.CONFIGS, "8b", e2e.LLAMA_31_8B)
    children = []

    def run_child(cmd, check):
        assert check and cmd[1] == e2e.__file__
        children.append(cmd[2:])
        e2e.main(cmd[2:])

    monkeypatch.setattr(e2e.subprocess, "run", run_child)
    out, tokens = tmp_path / "e2e.json", tmp_path / "tokens.pt"
    e2e.main(["--layers", "1", "--device", "cpu", "--mode", "eager", "--batches", "1,2",
              "--prompt", "4", "--new-tokens", "3", "--processes", "3", f"--json={out}",
              "--tokens-out", str(tokens)])
    assert len(children) == 3
    for i, argv in enumerate(children):
        assert "--processes" not in argv and argv.count("--json") == 1
        assert argv[argv.index("--tokens-out") + 1] == f"{tokens}.{i}"
        assert (tmp_path / f"tokens.pt.{i}").exists()
    text = capsys.readouterr().out
    assert "# 3 processes" in text and "speedup median (range)" in text
    saved = json.loads(out.read_text())
    assert len(saved["processes"]) == 3
    assert [s["batch"] for s in saved["summary"]] == [1, 2]
    assert all(s["processes"] == 3 for s in saved["summary"])
    with pytest.raises(SystemExit, match="compressed-only"):
        e2e.main(["--compressed-only", "--processes", "2", "--device", "cpu"])


def test_summarize_takes_medians_per_batch():
    def row(batch, bf16, zipgen):
        return {"baseline": {"batch": batch, "tokens_per_s": bf16},
                "compressed": {"batch": batch, "tokens_per_s": zipgen}}

    text, summary = hf_bench.summarize([[row(1, 100, 120), row(8, 800, 800)],
                                        [row(1, 110, 121), row(8, 790, 800)],
                                        [row(1, 90, 119), row(8, 800, 840)]])
    one, eight = summary
    assert one["batch"] == 1 and one["processes"] == 3
    assert one["bf16_tokens_per_s"] == 100 and one["zipgen_tokens_per_s"] == 120
    assert one["speedup"] == pytest.approx(1.2)  # the median of 1.2, 1.1, 1.322
    assert one["speedup_range"] == pytest.approx([1.1, 119 / 90])
    assert eight["speedup"] == pytest.approx(800 / 790)
    assert "1.200 (1.100–1.322)" in text
    with pytest.raises(InputError):
        hf_bench.summarize([])


def test_e2e_benchmark_script_on_a_shrunk_model(monkeypatch, capsys, tmp_path):
    """benchmarks/e2e.py's whole flow on the CPU, with the 8B config shrunk to the tiny one."""
    e2e = _e2e_module()
    monkeypatch.setattr(e2e, "LLAMA_31_8B", {**e2e.LLAMA_31_8B, **TINY, "head_dim": 64})
    monkeypatch.setitem(e2e.CONFIGS, "8b", e2e.LLAMA_31_8B)
    model = e2e.build_model(1, device="cpu")
    assert model.model.embed_tokens.weight.std().item() == pytest.approx(0.010, rel=0.1)
    assert model.model.layers[0].self_attn.k_proj.weight.std().item() == pytest.approx(0.030, rel=0.1)
    assert torch.equal(model.model.norm.weight, torch.ones(256, dtype=torch.bfloat16))
    out = tmp_path / "e2e.json"
    e2e.main(["--layers", "1", "--device", "cpu", "--mode", "eager", "--batches", "1,2",
              "--prompt", "4", "--new-tokens", "3", "--json", str(out)])
    text = capsys.readouterr().out
    assert "synthetic" in text and "8 Linear layers compressed" in text and "100.0%" in text
    assert [r["agreement"] for r in json.loads(out.read_text())["rows"]] == [1.0, 1.0]
    # q / k / v and gate / up stacked in both models: 5 compressed layers instead of 8
    e2e.main(["--layers", "1", "--device", "cpu", "--mode", "eager", "--batches", "1",
              "--prompt", "4", "--new-tokens", "3", "--fuse-siblings", "--json", str(out)])
    text = capsys.readouterr().out
    assert "5 Linear layers fused into 2 (both models)" in text
    assert "5 Linear layers compressed" in text
    assert [r["agreement"] for r in json.loads(out.read_text())["rows"]] == [1.0]
    # built compressed layer by layer (the 70B showcase path): the same weights, bit for bit
    monkeypatch.setitem(e2e.CONFIGS, "70b", {**e2e.LLAMA_31_70B, **TINY, "head_dim": 64})
    built, summary = e2e.build_model(1, device="cpu", base=e2e.CONFIGS["70b"],
                                     compress_as_built=True, embeddings=True)
    plain = e2e.build_model(1, device="cpu", base=e2e.CONFIGS["70b"])
    assert "9 layers (8 Linear, 1 embedding) compressed" in summary
    x = ids()
    with torch.no_grad():
        assert torch.equal(built(x).logits, plain(x).logits)
    e2e.main(["--model", "70b", "--layers", "1", "--device", "cpu", "--mode", "eager",
              "--batches", "1", "--prompt", "4", "--new-tokens", "3", "--compressed-only",
              "--json", str(out)])
    text = capsys.readouterr().out
    assert "no BF16 baseline" in text and "70B architecture" in text
    assert json.loads(out.read_text())["rows"][0]["batch"] == 1
    # built compressed, then its compressed siblings stacked
    e2e.main(["--model", "70b", "--layers", "1", "--device", "cpu", "--mode", "eager",
              "--batches", "1", "--prompt", "4", "--new-tokens", "3", "--compressed-only",
              "--fuse-siblings"])
    assert "# siblings: 5 Linear layers fused into 2" in capsys.readouterr().out
    # the same with the embedding table compressed too: still the BF16 model's tokens
    e2e.main(["--layers", "1", "--device", "cpu", "--mode", "eager", "--batches", "2",
              "--prompt", "4", "--new-tokens", "3", "--compress-embeddings", "--json", str(out)])
    text = capsys.readouterr().out
    assert "9 layers (8 Linear, 1 embedding) compressed" in text
    assert [r["agreement"] for r in json.loads(out.read_text())["rows"]] == [1.0]
