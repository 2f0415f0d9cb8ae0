"""Compare the token files of two runs (benchmarks/e2e.py or `zipgen bench-model`
--tokens-out): per model and batch size, equal or not, and where the first difference is.

    python benchmarks/compare_tokens.py RUN_A.pt RUN_B.pt

Same seeds and the same kernels give the same tokens; a difference means a kernel whose result
depends on more than its inputs (scheduling, atomics, an algorithm chosen per process).
"""
from __future__ import annotations

import sys

import torch


def first_difference(a: torch.Tensor, b: torch.Tensor) -> tuple[int, int] | None:
    """(sequence, position) of the earliest differing token, or None."""
    diff = (a != b).nonzero()
    if diff.numel() == 0:
        return None
    seq, pos = min(diff.tolist(), key=lambda sp: (sp[1], sp[0]))
    return seq, pos


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    a, b = (torch.load(path) for path in argv)
    same = True
    for name in sorted(set(a) | set(b)):
        for batch in sorted(set(a.get(name, {})) | set(b.get(name, {}))):
            ta, tb = a.get(name, {}).get(batch), b.get(name, {}).get(batch)
            if ta is None or tb is None or ta.shape != tb.shape:
                print(f"{name} batch {batch}: only in one run, or shapes differ")
                same = False
                continue
            where = first_difference(ta, tb)
            if where is None:
                print(f"{name} batch {batch}: identical ({ta.numel()} tokens)")
            else:
                same = False
                print(f"{name} batch {batch}: {int((ta != tb).sum())} of {ta.numel()} tokens "
                      f"differ, the first at sequence {where[0]} position {where[1]}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
