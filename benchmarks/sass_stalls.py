"""Where a kernel's warps stall, per SASS instruction: a summary of Nsight Compute's source page.

    ncu --clock-control none -k regex:zipgemm --section WarpStateStats --section SourceCounters \\
        -o report python benchmarks/profile_gemm.py N K M W T D RG SX RS WG
    ncu -i report.ncu-rep --page source --csv --print-source sass > kernel-sass.csv
    python benchmarks/sass_stalls.py kernel-sass.csv [more.csv ...] [--top 20]

Prints, per file: the warp-stall samples by reason and by opcode, and the instructions with the
most samples with their three largest reasons. A stall is charged to the instruction that could
not issue: a long-scoreboard stall sits on the first use of a global load's result (or on an
instruction that waits for all of them, such as a fence), a short-scoreboard stall on the first
use of a shared-memory load's.
"""
from __future__ import annotations

import argparse
import collections
import csv

SAMPLES = "Warp Stall Sampling (All Samples)"


def read(path: str) -> list[dict]:
    """The instruction rows of one kernel's source page (the first row names the kernel)."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    header = rows[1]
    return [dict(zip(header, r)) for r in rows[2:] if len(r) == len(header)]


def reasons_of(rows: list[dict]) -> list[str]:
    return [c for c in rows[0] if c.startswith("stall_") and not c.endswith("(Not Issued)")]


def opcode(source: str) -> str:
    words = source.split()
    if words and words[0].startswith("@"):  # a predicate guard
        words = words[1:]
    return words[0].split(".")[0] if words else "?"


def summarise(path: str, top: int) -> str:
    rows = read(path)
    reasons = reasons_of(rows)
    total = sum(int(r[SAMPLES] or 0) for r in rows) or 1
    by_reason = collections.Counter({k[6:]: sum(int(r[k] or 0) for r in rows) for k in reasons})
    by_opcode = collections.Counter()
    for r in rows:
        by_opcode[opcode(r["Source"])] += int(r[SAMPLES] or 0)
    lines = [f"## {path}: {len(rows)} instructions, {total} stall samples",
             "by reason: " + ", ".join(f"{k} {100 * v / total:.1f} %"
                                       for k, v in by_reason.most_common(10)),
             "by opcode: " + ", ".join(f"{k} {100 * v / total:.1f} %"
                                       for k, v in by_opcode.most_common(12)),
             "", "| share | address | instruction | largest reasons (samples) |", "|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: -int(r[SAMPLES] or 0))[:top]:
        largest = sorted(((int(r[k] or 0), k[6:]) for k in reasons), reverse=True)[:3]
        lines.append(f"| {100 * int(r[SAMPLES]) / total:.1f} % | {r['Address'][-5:]} | "
                     f"`{r['Source'].strip()[:64]}` | "
                     + ", ".join(f"{name} {n}" for n, name in largest if n) + " |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("csv", nargs="+", help="ncu --page source --csv --print-source sass output")
    ap.add_argument("--top", type=int, default=20, help="instructions listed per kernel")
    args = ap.parse_args()
    print("\n\n".join(summarise(path, args.top) for path in args.csv))


if __name__ == "__main__":
    main()
