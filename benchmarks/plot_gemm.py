"""Plot speedup over cuBLAS against M, one line per layer, from benchmarks/gemm.py --json.

    python benchmarks/plot_gemm.py RESULTS.json OUT.png [--title "..."]
"""
import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("results")
    ap.add_argument("out")
    ap.add_argument("--title", default="ZipGEMM vs cuBLAS (F.linear on BF16)")
    args = ap.parse_args()
    rows = json.load(open(args.results))["rows"]
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    for layer in dict.fromkeys(r["layer"] for r in rows):
        cells = sorted((r["m"], r["speedup"]) for r in rows if r["layer"] == layer)
        ax.plot([m for m, _ in cells], [s for _, s in cells], marker="o", label=layer)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.axhline(1.42, color="grey", linewidth=0.8, linestyle="--", label="byte-ratio limit (1.42x)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("M (tokens)")
    ax.set_ylabel("speedup over cuBLAS (higher is better)")
    ax.set_title(args.title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(args.out)


if __name__ == "__main__":
    main()
