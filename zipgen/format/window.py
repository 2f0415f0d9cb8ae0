"""Choosing the exponent window (FORMAT.md §2) and measuring how well it fits."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .layout import WINDOW


def exponent_histogram(bits: torch.Tensor) -> torch.Tensor:
    """Counts of the 256 BF16 exponents of a tensor of raw 16-bit patterns (int16 view)."""
    exponents = (bits >> 7).to(torch.uint8)  # truncating to a byte drops the sign
    return torch.bincount(exponents.reshape(-1), minlength=256)


@dataclass(frozen=True)
class Window:
    """The eight consecutive exponents [lo, lo + 7] that the codes 0..7 stand for."""

    lo: int
    coverage: float  # share of elements whose exponent lies in the window

    @property
    def base(self) -> int:
        """Exponent = base + code (FORMAT.md §2): the window's first exponent."""
        return self.lo


def best_window(hist: torch.Tensor) -> Window:
    """The window holding the most elements; ties go to the lowest exponent."""
    hist = hist.to(torch.int64).cpu()
    total = int(hist.sum())
    sums = torch.cumsum(torch.cat([hist.new_zeros(1), hist]), 0)
    in_window = sums[WINDOW:] - sums[:-WINDOW]  # in_window[lo] for lo in 0..248
    lo = int(torch.argmax(in_window))  # argmax returns the first maximum
    return Window(lo=lo, coverage=float(in_window[lo]) / total if total else 1.0)


def exponent_entropy(hist: torch.Tensor) -> float:
    """Shannon entropy of the exponent histogram in bits; 8 + this bounds any code that keeps
    sign and mantissa raw."""
    p = hist.to(torch.float64)
    p = p[p > 0] / p.sum()
    return float(-(p * torch.log2(p)).sum()) if p.numel() else 0.0
