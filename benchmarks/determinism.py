"""Which module of a decoder makes generation differ from run to run: the same synthetic
Llama-3.1-8B-architecture model (benchmarks/e2e.py's build_model), the same prompt and forced
tokens, run twice through prefill and teacher-forced decode steps with a hook on every module;
the first module call whose output differs bit for bit between the two runs is reported, for
the BF16 model and for its compressed twin (zipgen.nn.compress_model).

    python benchmarks/determinism.py [--layers 4] [--batch 8] [--prompt 128] [--steps 16]
        [--attn sdpa,sdpa:math,sdpa:efficient_attention,sdpa:cudnn_attention,eager]
        [--paths bf16,fused,decode]

--attn: transformers' attention implementation; sdpa:BACKEND restricts PyTorch's SDPA to one
backend (torch.nn.attention.sdpa_kernel).

Eager steps, no CUDA graphs: a graph replays the same kernels, so a difference here is one
there too.
"""
from __future__ import annotations

import argparse
import contextlib

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from zipgen.integrations import hf_bench
from zipgen.nn import ZipLinear, compress_model

from e2e import build_model


def run_once(model, prompt, forced):
    """Every module call's first output tensor, in call order: [(name, tensor on the CPU)]."""
    records = []

    def hook(name):
        def record(module, inputs, output):
            out = output[0] if isinstance(output, (tuple, list)) else output
            if hasattr(out, "logits"):
                out = out.logits
            if isinstance(out, torch.Tensor):
                records.append((name, out.detach().to("cpu", copy=True)))
        return record

    handles = [m.register_forward_hook(hook(n or "model")) for n, m in model.named_modules()]
    try:
        dec = hf_bench.Decoder(model, prompt.shape[0], prompt.shape[1], forced.shape[1],
                                "eager", forced=forced)
        dec.prefill(prompt)
        for _ in range(forced.shape[1] - 1):
            dec.step()
        torch.cuda.synchronize()
    finally:
        for h in handles:
            h.remove()
    return records


def first_difference(a, b) -> str:
    for i, ((name, x), (name2, y)) in enumerate(zip(a, b, strict=True)):
        assert name == name2, (name, name2)
        if x.shape != y.shape or not torch.equal(x.view(-1).view(torch.uint8),
                                                 y.view(-1).view(torch.uint8)):
            diff = (x.float() - y.float()).abs().max().item() if x.shape == y.shape else "shape"
            return f"call {i} of {len(a)}: {name} (max |diff| {diff})"
    return f"none: all {len(a)} module outputs equal bit for bit"


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--attn", default="sdpa,sdpa:math,sdpa:efficient_attention,"
                                      "sdpa:cudnn_attention,eager")
    ap.add_argument("--paths", default="bf16,fused,decode")
    args = ap.parse_args()
    model = build_model(args.layers)
    prompt = hf_bench.prompts(model.config.vocab_size, args.batch, args.prompt).cuda()
    forced = torch.randint(0, model.config.vocab_size, (args.batch, args.steps),
                           generator=torch.Generator().manual_seed(1))
    print(f"# determinism: Llama-3.1-8B architecture, {args.layers} layers, batch {args.batch}, "
          f"prompt {args.prompt}, {args.steps} forced steps; {torch.cuda.get_device_name()}, "
          f"torch {torch.__version__}")
    print("| path | attention | first differing module call between two runs |")
    print("|---|---|---|")
    for path in args.paths.split(","):
        if path != "bf16" and not any(isinstance(m, ZipLinear) for m in model.modules()):
            compress_model(model)
        if path != "bf16":
            hf_bench.set_gemm_path(model, path)
        for attn in args.attn.split(","):
            impl, _, backend = attn.partition(":")
            if hasattr(model, "set_attn_implementation"):
                model.set_attn_implementation(impl)
            else:  # older transformers
                model.config._attn_implementation = impl
            only = (sdpa_kernel([getattr(SDPBackend, backend.upper())]) if backend
                    else contextlib.nullcontext())
            try:
                with only:
                    a = run_once(model, prompt, forced)
                    b = run_once(model, prompt, forced)
            except RuntimeError as e:  # the backend does not take these inputs
                print(f"| {path} | {attn} | not run: {str(e).splitlines()[0][:120]} |", flush=True)
                continue
            print(f"| {path} | {attn} | {first_difference(a, b)} |", flush=True)
            del a, b


if __name__ == "__main__":
    main()
