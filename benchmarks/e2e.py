"""End-to-end decoding: a Llama-3.1-8B-architecture model in BF16 against the same model with
its Linear layers compressed (zipgen.nn.compress_model), one harness for both.

    python benchmarks/e2e.py [--model 8b|70b] [--layers N] [--batches 1,8,32] [--prompt 128]
                             [--new-tokens 256] [--mode graph|compile|eager]
                             [--path auto|fused|decode] [--compress-embeddings]
                             [--fuse-siblings] [--fuse-gated-mlp] [--compressed-only]
                             [--json out.json]
                             [--attn sdpa|sdpa-math|eager] [--tokens-out tokens.pt]
                             [--processes N]

--processes N runs the whole comparison in N fresh processes, one after another, and adds a
table of the medians and ranges: one process's BF16 baseline can be several percent off (cuBLAS
chooses its kernels per process; BENCHMARKS.md, thirteenth session).

--fuse-siblings stacks the projections that read one input (q / k / v, gate / up;
zipgen.nn.fuse_siblings) into one Linear each, in the BF16 model before its run, so both models
run the same fused shapes; with --compressed-only it stacks the compressed layers (decoded,
stacked, compressed again: lossless).

--fuse-gated-mlp (with --fuse-siblings) moves each compressed MLP's SiLU-and-product into its
stacked gate / up GEMM (zipgen.nn.fuse_gated_mlps; the compressed model only: cuBLAS has no such
epilogue, and the BF16 model keeps PyTorch's elementwise kernel).

--compressed-only builds the model compressed layer by layer (each matrix drawn in BF16 on the
device, compressed, released), so a model whose BF16 weights do not fit the GPU (the 70B
architecture on one H200 with its KV cache, or on an H100) runs; there is no BF16 baseline then.

The model is built from the 8B configuration written below (no hub access) with SYNTHETIC
weights: each matrix N(0, sigma) in BF16 with sigma from SIGMA (magnitudes like those of trained
Llama-class checkpoints, not measured from the real one; sigma only moves the 8-exponent window,
so the compression ratio of Gaussian weights barely depends on it), RMSNorm weights 1. With
random weights the greedy tokens are meaningless and their logits nearly tied, so the fused
kernel's different summation order can flip an argmax early; `--path decode` (decode + cuBLAS,
equal to F.linear) must agree 100 % when attention is deterministic (`--attn sdpa-math`:
PyTorch's default attention on an H200, cuDNN's, is not, so two runs of the BF16 model itself
differ after a few dozen tokens; benchmarks/determinism.py).

Per batch size: random prompt of --prompt tokens, prefill into a static KV cache, then
--new-tokens greedy tokens with one decode step replayed from a CUDA graph (--mode graph) or
torch.compile(mode="reduce-overhead") (--mode compile). Reported: decode tokens/s (batch x
steps / decode time), ms per decode step, weight memory, peak allocated memory, greedy
agreement (share of equal tokens, mean index of the first difference) and teacher-forced
agreement (the compressed model fed the BF16 model's tokens through the same decode steps: the
share of positions where both pick the same token after the same prefix). `--layers 2` gives a
quick run with the 8B layer shapes.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time

import torch

from zipgen.integrations import hf, hf_bench
from zipgen.nn import compress_model, empty_weights

# Llama-3.1-8B (meta-llama/Llama-3.1-8B config.json)
LLAMA_31_8B = dict(
    hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=8, head_dim=128, vocab_size=128256, max_position_embeddings=131072,
    rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=128000, eos_token_id=128001,
    rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                     "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192})

# Llama-3.1-70B (meta-llama/Llama-3.1-70B config.json): the same but these
LLAMA_31_70B = dict(LLAMA_31_8B, hidden_size=8192, intermediate_size=28672,
                    num_hidden_layers=80, num_attention_heads=64)
CONFIGS = {"8b": LLAMA_31_8B, "70b": LLAMA_31_70B}

# Standard deviation of the synthetic weights by name fragment (first match wins).
SIGMA = [("embed_tokens", 0.010), ("lm_head", 0.012), ("q_proj", 0.020), ("k_proj", 0.030),
         ("v_proj", 0.008), ("o_proj", 0.010), ("gate_proj", 0.018), ("up_proj", 0.014),
         ("down_proj", 0.014)]


def build_model(layers: int, seed: int = 0, device: str = "cuda", base: dict | None = None,
                compress_as_built: bool = False, embeddings: bool = False,
                attn: str = "sdpa"):
    """The architecture of `base` (default: Llama-3.1-8B) with `layers` decoder layers and
    synthetic BF16 weights on `device`, drawn straight there (no CPU init, no throwaway copy).
    compress_as_built: compress each matrix as soon as it is drawn (zipgen.nn.compress_model on
    its module; embeddings too if asked), so the BF16 model never exists whole; returns
    (model, summary) then, else the model. attn: transformers' attention implementation."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**{**(base or LLAMA_31_8B), "num_hidden_layers": layers})
    with empty_weights():
        model = LlamaForCausalLM._from_config(config, dtype=torch.bfloat16,
                                              attn_implementation=attn)
    g = torch.Generator(device=device).manual_seed(seed)
    reports = []
    for name, p in list(model.named_parameters()):
        sigma = next((s for key, s in SIGMA if key in name), None)
        if sigma is None:  # RMSNorm weights
            value = torch.ones(p.shape, dtype=torch.bfloat16, device=device)
        else:
            value = (torch.randn(p.shape, generator=g, device=device) * sigma).to(torch.bfloat16)
        module_name, _, leaf = name.rpartition(".")
        module = model.get_submodule(module_name)
        module._parameters[leaf] = torch.nn.Parameter(value, requires_grad=False)
        if compress_as_built and leaf == "weight" and value.dim() == 2:
            reports.append(compress_model(model, embeddings=embeddings, only=[module_name]))
            del value
    model = model.to(device).eval()  # buffers (rotary inv_freq) were built on the CPU
    if not compress_as_built:
        return model
    merged = reports[0]
    for r in reports[1:]:
        merged.layers += r.layers
        merged.skipped.update(r.skipped)
    return model, merged.summary()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=sorted(CONFIGS), default="8b")
    ap.add_argument("--layers", type=int, help="decoder layers (default: the model's, 32 / 80)")
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--mode", choices=hf_bench.MODES, default="graph")
    ap.add_argument("--path", choices=list(hf_bench.PATHS), default="auto",
                    help="GEMM path of the compressed layers (auto: zipgen.runtime.gemm's choice)")
    ap.add_argument("--compress-embeddings", action="store_true",
                    help="also compress the input embedding table (zipgen.nn.ZipEmbedding)")
    ap.add_argument("--fuse-siblings", action="store_true",
                    help="stack q/k/v and gate/up into one Linear each, in both models")
    ap.add_argument("--fuse-gated-mlp", action="store_true",
                    help="with --fuse-siblings: SiLU x up in the compressed gate/up GEMM")
    ap.add_argument("--compressed-only", action="store_true",
                    help="build the model compressed layer by layer; no BF16 baseline")
    ap.add_argument("--device", default="cuda", help="cpu only for a smoke test (--mode eager)")
    ap.add_argument("--attn", choices=[*hf_bench.ATTENTION, "eager"], default="sdpa",
                    help="attention: PyTorch's SDPA with its default backend (cuDNN on an H200: "
                         "not deterministic run to run, benchmarks/determinism.py), SDPA's "
                         "math backend (deterministic), or transformers' eager attention "
                         "(deterministic; not capturable in a CUDA graph)")
    ap.add_argument("--json")
    ap.add_argument("--tokens-out", help="torch.save every generated token here (to compare "
                    "two runs bit for bit: the seeds are fixed, so the tokens should match)")
    ap.add_argument("--processes", type=int, default=1,
                    help="run the comparison in this many fresh processes and report medians")
    args = ap.parse_args(argv)
    if args.processes > 1:
        return in_processes(args, sys.argv[1:] if argv is None else list(argv))
    run(args)


def in_processes(args, argv: list[str]) -> None:
    """The comparison `args` describes, once per fresh process (this script with the same
    arguments, each with its own --json and --tokens-out), then the medians."""
    if args.compressed_only:
        raise SystemExit("--processes compares two models; it does not go with --compressed-only")
    child = _without(argv, "--processes", "--json", "--tokens-out")
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.processes):
            extra = ["--json", f"{tmp}/{i}.json"]
            if args.tokens_out:
                extra += ["--tokens-out", f"{args.tokens_out}.{i}"]
            print(f"# process {i + 1} of {args.processes}", flush=True)
            subprocess.run([sys.executable, __file__, *child, *extra], check=True)
            with open(f"{tmp}/{i}.json") as f:
                runs.append(json.load(f)["rows"])
    text, summary = hf_bench.summarize(runs)
    print(f"\n# {args.processes} processes\n{text}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "sigma": dict(SIGMA), "processes": runs,
                       "summary": summary}, f, indent=1)


def _without(argv: list[str], *options: str) -> list[str]:
    """argv less the given options and their values (as "--opt value" or "--opt=value")."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in options:
            skip = True
        elif not a.startswith(tuple(f"{o}=" for o in options)):
            out.append(a)
    return out


def run(args):
    # transformers' attention implementation; for SDPA, the backends it may use
    attn, sdpa = ("eager", "sdpa") if args.attn == "eager" else ("sdpa", args.attn)
    with hf_bench.attention(sdpa):
        _run(args, attn)


def _run(args, attn: str):
    batches = [int(b) for b in args.batches.split(",")]
    base = CONFIGS[args.model]
    layers = args.layers or base["num_hidden_layers"]

    print(f"# End-to-end decode, Llama-3.1-{args.model.upper()} architecture, {layers} layers, "
          f"synthetic N(0, sigma) BF16 weights (sigma: {dict(SIGMA)}), benchmarks/e2e.py")
    print(hf_bench.describe(torch.device(args.device)))
    started = time.perf_counter()
    if args.compressed_only:
        model, summary = build_model(layers, device=args.device, base=base,
                                     compress_as_built=True, embeddings=args.compress_embeddings,
                                     attn=attn)
        print(f"# built and compressed in {time.perf_counter() - started:.1f} s: {summary}")
        if args.fuse_siblings:
            print(f"# siblings: {hf.fuse_projections(model).summary()}", flush=True)
        if args.fuse_gated_mlp:
            print(f"# gated MLPs fused: {len(hf.fuse_gated(model))}", flush=True)
        hf_bench.set_gemm_path(model, args.path)
        print(f"# zipgen ({args.path} GEMM path): {hf_bench.weight_memory(model)}; no BF16 "
              f"baseline (--compressed-only)", flush=True)
        runs = hf_bench.benchmark(model, "zipgen", batches, args.prompt, args.new_tokens,
                                  args.mode)
        text, rows = hf_bench.runs_table(runs)
    else:
        model = build_model(layers, device=args.device, base=base, attn=attn)
        print(f"# built in {time.perf_counter() - started:.1f} s; prompt {args.prompt}, "
              f"{args.new_tokens} new tokens, mode {args.mode}", flush=True)
        if args.fuse_siblings:
            print(f"# siblings: {hf.fuse_projections(model).summary()} (both models)",
                  flush=True)

        def to_compressed(m):
            summary = compress_model(m, embeddings=args.compress_embeddings).summary()
            if args.fuse_gated_mlp:
                summary += f"; {len(hf.fuse_gated(m))} gated MLPs fused"
            return summary

        text, rows = hf_bench.compare(
            model, to_compressed,
            batches=batches, prompt_len=args.prompt,
            new_tokens=args.new_tokens, mode=args.mode, path=args.path,
            log=lambda s: print(s, flush=True), tokens_out=args.tokens_out)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "sigma": dict(SIGMA), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
