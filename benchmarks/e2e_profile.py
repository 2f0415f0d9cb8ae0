"""Where a decode step's time goes: the kernels of the BF16 and the compressed model's decode
step, from the PyTorch profiler (CUPTI: kernels replayed from CUDA graphs included), by kind.

    python benchmarks/e2e_profile.py [--layers N] [--batches 1,8,32] [--mode graph|compile]
                                     [--steps 64] [--compress-embeddings] [--fuse-siblings]
                                     [--top 12] [--json out.json]

Same model and harness as benchmarks/e2e.py (Llama-3.1-8B architecture, synthetic weights,
static KV cache, the step captured in a CUDA graph or compiled with reduce-overhead). Per model
and batch size, over --steps profiled decode steps after the prompt:
* ms per step: wall time of the same steps timed without the profiler (CUDA events);
* per kind of kernel (zipgen's, cuBLAS / cuBLASLt GEMMs, attention, the rest), GPU time per
  step and launches per step;
* busy: the union of all kernels' intervals per step; idle = step - busy is the time the GPU
  runs nothing (launch gaps between dependent kernels);
* the --top kernels by time (--json: all of them).
"""
from __future__ import annotations

import argparse
import collections
import json
import re

import torch

from e2e import CONFIGS, build_model
from zipgen.integrations import hf, hf_bench
from zipgen.nn import compress_model

# kind of a kernel by its name, first match wins
KINDS = [("zipgen", re.compile(r"^(zipgemm|zipgen)_")),
         ("Triton", re.compile(r"^triton_")),  # inductor's; they may name a "gemm" they follow
         ("cuBLAS GEMM", re.compile(r"gemm|nvjet|xmma|cutlass|cublas", re.I)),
         ("attention", re.compile(r"flash|fmha|attention|sdpa|cudnn", re.I)),
         ("other", re.compile(""))]


def kind_of(name: str) -> str:
    return next(kind for kind, pattern in KINDS if pattern.search(name))


def kernels(prof) -> list[tuple[str, float, float]]:
    """(name, start µs, end µs) of every GPU kernel the profiler saw."""
    out = []
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA and e.time_range.elapsed_us() > 0:
            if e.name.startswith(("Memcpy", "Memset")):
                continue
            out.append((e.name, e.time_range.start, e.time_range.end))
    return out


def busy_us(spans: list[tuple[float, float]]) -> float:
    """Length of the union of the intervals."""
    total, end = 0.0, float("-inf")
    for a, b in sorted(spans):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def step_ms(dec, steps: int) -> float:
    """Wall time of `steps` decode steps in a row, per step (CUDA events)."""
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(steps):
        dec.advance()
    stop.record()
    torch.cuda.synchronize()
    return start.elapsed_time(stop) / steps


def profile(model, label: str, batch: int, prompt_len: int, steps: int, mode: str) -> dict:
    prompt = hf_bench.prompts(model.config.vocab_size, batch, prompt_len).to(model.device)
    dec = hf_bench.Decoder(model, batch, prompt_len, 2 * steps + 2, mode)
    dec.capture(prompt)
    dec.prefill(prompt)
    wall = step_ms(dec, steps)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            dec.advance()
        torch.cuda.synchronize()
    found = kernels(prof)
    if not found:
        raise SystemExit("the profiler saw no GPU kernels (CUPTI unavailable?)")
    by_kind, by_name = collections.defaultdict(lambda: [0.0, 0]), collections.defaultdict(lambda: [0.0, 0])
    for name, a, b in found:
        for table, key in ((by_kind, kind_of(name)), (by_name, name)):
            table[key][0] += (b - a) / steps / 1000
            table[key][1] += 1
    busy = busy_us([(a, b) for _, a, b in found]) / steps / 1000
    return {"model": label, "batch": batch, "step_ms": wall, "busy_ms": busy,
            "kinds": {k: {"ms": v[0], "launches": v[1] / steps} for k, v in by_kind.items()},
            "kernels": [{"name": n, "ms": v[0], "launches": v[1] / steps}
                        for n, v in sorted(by_name.items(), key=lambda kv: -kv[1][0])]}


def table(rows: list[dict], top: int) -> str:
    kinds = [k for k, _ in KINDS]
    head = ("| model | batch | ms per step | GPU busy | idle | "
            + " | ".join(f"{k} ms (launches)" for k in kinds) + " |")
    lines = [head, "|" + "---|" * (5 + len(kinds))]
    for r in rows:
        cells = [f"{r['kinds'][k]['ms']:.3f} ({r['kinds'][k]['launches']:.0f})"
                 if k in r["kinds"] else "-" for k in kinds]
        lines.append(f"| {r['model']} | {r['batch']} | {r['step_ms']:.3f} | {r['busy_ms']:.3f} | "
                     f"{r['step_ms'] - r['busy_ms']:.3f} | " + " | ".join(cells) + " |")
    for r in rows:
        lines.append(f"\n# top kernels, {r['model']}, batch {r['batch']} (ms per step, launches)")
        for t in r["kernels"][:top]:
            lines.append(f"#   {t['ms']:.4f} ms  {t['launches']:5.1f}  {t['name'][:150]}")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, help="decoder layers (default: the 8B's 32)")
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--steps", type=int, default=64, help="decode steps profiled (and timed)")
    ap.add_argument("--mode", choices=["graph", "compile"], default="graph")
    ap.add_argument("--compress-embeddings", action="store_true")
    ap.add_argument("--fuse-siblings", action="store_true")
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]

    model = build_model(args.layers or CONFIGS["8b"]["num_hidden_layers"])
    print(f"# decode-step profile, Llama-3.1-8B architecture, {model.config.num_hidden_layers} "
          f"layers, mode {args.mode}, {args.steps} steps after a {args.prompt}-token prompt "
          f"(benchmarks/e2e_profile.py)")
    print(hf_bench.describe(model.device))
    if args.fuse_siblings:
        print(f"# siblings: {hf.fuse_projections(model).summary()} (both models)")
    rows = [profile(model, "bf16", b, args.prompt, args.steps, args.mode)
            for b in batches]
    print(f"# compressed: {compress_model(model, embeddings=args.compress_embeddings).summary()}")
    torch.cuda.empty_cache()
    rows += [profile(model, "zipgen", b, args.prompt, args.steps, args.mode)
             for b in batches]
    print(table(rows, args.top))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
