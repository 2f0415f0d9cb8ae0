"""zipgen.nn and the transformers loader on a GPU: ZipLinear through the custom op (fused
ZipGEMM and decode + cuBLAS), torch.compile, CUDA graphs, a tiny Llama end to end, and smoke runs
of `zipgen bench-model` and benchmarks/e2e.py."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from zipgen.nn import DECODE, FUSED, ZipEmbedding, ZipLinear

from conftest import requires_gpu
from test_nn import activations, bf16_embedding, bf16_linear

pytestmark = [pytest.mark.gpu, requires_gpu]
ROOT = Path(__file__).resolve().parents[1]


def cuda_linear(k, n, bias=True, seed=0):
    return bf16_linear(k, n, bias, seed).cuda()


def assert_close(y, ref, rel=5e-3):
    """BF16 outputs of FP32-accumulated products in another summation order."""
    assert y.dtype == ref.dtype and y.shape == ref.shape and torch.isfinite(y).all()
    err = float((y.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-30))
    assert err < rel, f"relative error {err:.3g}"


@pytest.mark.parametrize("m", [1, 5, 16, 17, 64])
@pytest.mark.parametrize("bias", [True, False])
def test_ziplinear_on_cuda(m, bias):
    lin = cuda_linear(512, 256, bias)
    zl = ZipLinear.from_linear(lin)  # compressed on the GPU
    assert zl.sign_mantissa.is_cuda
    x = activations(m, 512).cuda()
    with torch.no_grad():
        ref = lin(x)
        zl.fused = DECODE  # decode + cuBLAS: the calls F.linear makes
        assert torch.equal(zl(x), ref)
        zl.fused = FUSED
        assert_close(zl(x), ref)


def test_module_cuda_and_state_dict():
    lin = bf16_linear(256, 128)
    zl = ZipLinear.from_linear(lin).cuda()
    assert zl.planes.is_cuda and zl.bias.is_cuda
    x = activations(3, 256)
    assert_close(zl(x.cuda()).cpu(), lin(x).detach())
    fresh = ZipLinear(256, 128, device="cuda")
    fresh.load_state_dict(zl.state_dict())
    assert torch.equal(fresh.decompressed_weight().cpu(), lin.weight.detach())


def test_opcheck_on_cuda():
    zl = ZipLinear.from_linear(cuda_linear(256, 128))
    x = activations(4, 256).cuda()
    torch.library.opcheck(torch.ops.zipgen.gemm.default,
                          (x, *zl.streams(), 128, 256, zl.base, zl.bias, DECODE))
    torch.library.opcheck(torch.ops.zipgen.decompress.default, (*zl.streams(), 128, 256, zl.base))


def test_torch_compile_fullgraph_on_cuda():
    torch._dynamo.reset()
    lin = cuda_linear(512, 256)
    zl = ZipLinear.from_linear(lin)
    x = activations(8, 512).cuda()
    compiled = torch.compile(zl, fullgraph=True)
    with torch.no_grad():
        assert torch.equal(compiled(x), zl(x))


@pytest.mark.parametrize("fused", [FUSED, DECODE])
def test_cuda_graph_capture_of_a_forward(fused):
    zl = ZipLinear.from_linear(cuda_linear(512, 256))
    zl.fused = fused
    static_x = activations(4, 512).cuda()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.no_grad():
        zl(static_x)  # warm-up: kernels built, scratch allocated
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.no_grad():
        static_y = zl(static_x)
    x = activations(4, 512, seed=7).cuda()
    static_x.copy_(x)
    graph.replay()
    torch.cuda.synchronize()
    with torch.no_grad():
        assert torch.equal(static_y, zl(x))


# --- a tiny Llama end to end ---------------------------------------------------------------

@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    pytest.importorskip("transformers")
    from test_hf import save_tiny
    import transformers

    from zipgen.checkpoint import compress_checkpoint

    root = tmp_path_factory.mktemp("llama-gpu")
    src = save_tiny(root / "src", transformers.LlamaConfig, transformers.LlamaForCausalLM)
    compress_checkpoint(src, root / "zg", progress=False)
    return src, root / "zg"


def load_both(llama):
    import transformers

    from zipgen.integrations import hf

    src, dst = llama
    ref = transformers.AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16)
    return ref.cuda().eval(), hf.from_pretrained(dst, device="cuda")


def tokens(batch, length, seed=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 1000, (batch, length), generator=g).cuda()


def test_llama_logits_on_cuda(llama):
    from zipgen.integrations.hf_bench import attention, set_gemm_path

    ref, model = load_both(llama)
    # the default SDPA (cuDNN) is not deterministic on an H200: equal logits need the math one
    with torch.no_grad(), attention("sdpa-math"):
        for shape in [(1, 12), (2, 12)]:  # 12 tokens: fused under auto; 24: decode + cuBLAS
            x = tokens(*shape)
            expected = ref(x).logits
            set_gemm_path(model, "auto")
            assert_close(model(x).logits, expected, rel=3e-2)
            set_gemm_path(model, "fused")
            assert_close(model(x).logits, expected, rel=3e-2)
            set_gemm_path(model, "decode")
            assert torch.equal(model(x).logits, expected)
    x = tokens(2, 8)
    kwargs = dict(max_new_tokens=6, do_sample=False, attention_mask=torch.ones_like(x))
    with attention("sdpa-math"):
        assert torch.equal(model.generate(x, **kwargs), ref.generate(x, **kwargs))


def test_llama_weight_memory_on_cuda(llama):
    from zipgen.integrations import hf

    torch.cuda.synchronize()
    start = torch.cuda.memory_allocated()
    ref, model = load_both(llama)
    both = torch.cuda.memory_allocated() - start
    zip_bytes = hf.weight_memory(model).total
    assert zip_bytes == pytest.approx(both - hf.weight_memory(ref).total, rel=0.05)
    assert hf.weight_memory(model).ratio < 0.75


@pytest.mark.parametrize("mode", ["graph", "compile"])
def test_decode_step_in_cuda_graphs_matches_eager(llama, mode):
    from zipgen.integrations import hf_bench

    torch._dynamo.reset()
    _, model = load_both(llama)
    kw = dict(batches=(1, 4), prompt_len=8, new_tokens=8, repeats=1)
    with hf_bench.attention("sdpa-math"):  # the default SDPA (cuDNN) is not deterministic
        eager = hf_bench.benchmark(model, "eager", mode="eager", **kw)
        graphed = hf_bench.benchmark(model, mode, mode=mode, **kw)
    for e, g in zip(eager, graphed):
        assert torch.equal(e.tokens, g.tokens)
        assert g.peak_bytes > 0 and g.tokens_per_s > 0


def test_bench_model_cli_on_cuda(llama, tmp_path, capsys):
    from zipgen.cli.main import main

    _, dst = llama
    out = tmp_path / "bench.json"
    assert main(["bench-model", str(dst), "--batches", "1,4", "--prompt", "8", "--new-tokens",
                 "8", "--path", "decode", "--attn", "sdpa-math", "--json", str(out)]) == 0
    assert "greedy agree" in capsys.readouterr().out
    rows = json.loads(out.read_text())["rows"]
    assert [r["agreement"] for r in rows] == [1.0, 1.0]  # decode + cuBLAS equals F.linear
    assert [r["teacher_forced_agreement"] for r in rows] == [1.0, 1.0]


@pytest.mark.slow
def test_e2e_script_smoke():
    """benchmarks/e2e.py with one 8B-shaped layer (embedding and lm_head at full size)."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "e2e.py"), "--layers", "1", "--batches",
           "1,2", "--prompt", "16", "--new-tokens", "8", "--path", "decode", "--attn", "sdpa-math"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "greedy agree" in run.stdout and "100.0%" in run.stdout, run.stdout


def test_e2e_script_with_fused_siblings():
    """--fuse-siblings on the GPU: the stacked q / k / v and gate / up of both models, the
    compressed one on the decode path (equal to F.linear: 100 % agreement), in CUDA graphs."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "e2e.py"), "--layers", "1", "--batches",
           "1,2", "--prompt", "16", "--new-tokens", "8", "--path", "decode", "--fuse-siblings",
           "--attn", "sdpa-math"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "5 Linear layers fused into 2" in run.stdout and "100.0%" in run.stdout, run.stdout


def test_fused_siblings_in_cuda_graphs_match_eager(llama):
    """The siblings share one GEMM per call, and a graph captured after a warm-up with the
    same static input buffers must still record that GEMM: graph decode == eager decode, on
    both GEMM paths, with the fused model compressed after fusing."""
    from zipgen.integrations import hf_bench
    from zipgen.nn import compress_model, fuse_siblings

    ref, _ = load_both(llama)
    assert fuse_siblings(ref, tokens(1, 2)).summary() == "10 Linear layers fused into 4"
    compress_model(ref)
    kw = dict(batches=(1, 4), prompt_len=8, new_tokens=8, repeats=1)
    for path in ("fused", "decode"):
        hf_bench.set_gemm_path(ref, path)
        with hf_bench.attention("sdpa-math"):  # deterministic attention: tokens comparable
            eager = hf_bench.benchmark(ref, "eager", mode="eager", **kw)
            graphed = hf_bench.benchmark(ref, "graph", mode="graph", **kw)
        for e, g in zip(eager, graphed):
            assert torch.equal(e.tokens, g.tokens), path


@pytest.mark.slow
def test_e2e_script_compressed_only_70b_layer():
    """benchmarks/e2e.py --model 70b --compressed-only with one 70B-shaped layer and compressed
    embeddings, in CUDA graphs: the path of the 70B-on-one-GPU showcase."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "e2e.py"), "--model", "70b", "--layers", "1",
           "--batches", "1,2", "--prompt", "16", "--new-tokens", "8", "--compressed-only",
           "--compress-embeddings"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "no BF16 baseline" in run.stdout and "1 embedding" in run.stdout, run.stdout


def test_zipembedding_on_cuda_in_a_cuda_graph():
    """Rows decoded on the GPU equal the table's, also when the lookup is replayed from a CUDA
    graph with new ids (no host synchronisation in decode_rows)."""
    emb = bf16_embedding(5000, 512).cuda()
    ze = ZipEmbedding.from_embedding(emb)
    assert ze.sign_mantissa.is_cuda
    ids = torch.randint(0, 5000, (4, 33), device="cuda")
    assert torch.equal(ze(ids).view(torch.int16), emb(ids).view(torch.int16))
    static = ids.clone()
    ze(static)  # warm-up outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = ze(static)
    for seed in range(3):
        static.copy_(torch.randint(0, 5000, static.shape, device="cuda",
                                   generator=torch.Generator("cuda").manual_seed(seed)))
        graph.replay()
        assert torch.equal(out.view(torch.int16), emb(static).view(torch.int16))
