"""`zipgen bench-model MODEL_DIR`: end-to-end decoding of a compressed Hugging Face model folder
against its own BF16 weights (the harness of benchmarks/e2e.py, zipgen.integrations.hf_bench).

The folder is loaded with zipgen.integrations.hf.from_pretrained; the BF16 baseline is the same
model with every compressed layer decoded (bit-exact), benchmarked first; then those layers are
compressed again in place (the codec is deterministic: the same bits as the folder) and the
compressed model is benchmarked. Prompts are random token ids (no tokenizer needed).
"""
from __future__ import annotations

import json
from pathlib import Path


def add_parsers(sub) -> None:
    p = sub.add_parser("bench-model", help="decode speed and memory of a compressed HF model "
                                           "folder vs its BF16 weights (GPU)")
    p.add_argument("model_dir", type=Path, help="a folder written by `zipgen compress` from a "
                                                "Hugging Face model folder")
    p.add_argument("--batches", default="1,8,32", help="comma-separated batch sizes")
    p.add_argument("--prompt", type=int, default=128, help="prompt tokens (default 128)")
    p.add_argument("--new-tokens", type=int, default=256, help="generated tokens (default 256)")
    p.add_argument("--mode", choices=["graph", "compile", "eager"], default="graph",
                   help="graph: one decode step captured in a CUDA graph (default); compile: "
                        "torch.compile(mode='reduce-overhead'); eager: no graphs (CPU too)")
    p.add_argument("--path", choices=["auto", "fused", "decode"], default="auto",
                   help="GEMM path of the compressed layers (default auto)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--attn", choices=["sdpa", "sdpa-math"], default="sdpa",
                   help="sdpa: PyTorch's choice of attention kernel (default; on an H200 not "
                        "deterministic run to run); sdpa-math: its math backend only "
                        "(deterministic, slower: for agreement measurements)")
    p.add_argument("--no-baseline", action="store_true", help="benchmark the compressed model only")
    p.add_argument("--fuse-siblings", action="store_true",
                   help="stack q/k/v and gate/up into one layer each, in both models "
                        "(zipgen.nn.fuse_siblings); gated MLPs then take SiLU x up in the "
                        "compressed gate/up GEMM (zipgen.nn.fuse_gated_mlps)")
    p.add_argument("--json", type=Path, help="write the rows to this file")
    p.add_argument("--tokens-out", type=Path,
                   help="torch.save every generated token here, to compare two runs bit for bit")
    p.set_defaults(func=cmd_bench_model)


def cmd_bench_model(args) -> int:
    import torch

    from ..integrations import hf_bench

    batches = [int(b) for b in args.batches.split(",")]
    device = torch.device(args.device)
    print(f"# zipgen bench-model {args.model_dir}")
    print(hf_bench.describe(device))
    with hf_bench.attention(args.attn):
        return _bench(args, batches, device)


def _bench(args, batches, device) -> int:
    from ..integrations import hf, hf_bench
    from ..nn import ZipLinear, compress_model, decompress_model

    model = hf.from_pretrained(args.model_dir, device=device, fuse_siblings=args.fuse_siblings)
    if args.no_baseline:
        hf_bench.set_gemm_path(model, args.path)
        print(f"# zipgen: {hf.weight_memory(model)}")
        runs = hf_bench.benchmark(model, "zipgen", batches, args.prompt, args.new_tokens, args.mode)
        print("\n".join(f"batch {r.batch}: {r.tokens_per_s:.1f} tok/s, {r.ms_per_step:.3f} "
                        f"ms/step, peak {r.peak_bytes / 1e9:.2f} GB" for r in runs))
        rows = [r.as_dict() for r in runs]
    else:
        names = [f"{n}.weight" for n, m in model.named_modules() if isinstance(m, ZipLinear)]
        decompress_model(model)  # the baseline: the same weights (fused or not), decoded
        text, rows = hf_bench.compare(
            model, lambda m: compress_model(m, include=names, exclude=()).summary(),
            batches=batches, prompt_len=args.prompt, new_tokens=args.new_tokens,
            mode=args.mode, path=args.path, log=lambda s: print(s, flush=True),
            tokens_out=args.tokens_out)
        print(text)
    if args.json:
        args.json.write_text(json.dumps({"model": str(args.model_dir), "rows": rows}, indent=1))
    return 0
