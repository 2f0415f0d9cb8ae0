"""Time from a get_kernel request to a launch-ready kernel when its cubin comes from a prebuilt
bundle, with no NVRTC call in that process; beside it the same from the cubin cache and from a
fresh NVRTC compile. Median over the bundle's kernels for this GPU's arch.

    python benchmarks/bundle_load.py [--bundle DIR] [--json out.json]

Without --bundle, one is built first (zipgen.bundle.build_bundle, for this GPU's arch). Each
source is timed in a fresh child process (nothing loaded or cached in memory before), with the
CUDA context already made so only lookup + module load are timed:
  nvrtc:  empty cubin cache, no bundle: every kernel is compiled now (and so cached);
  cache:  that cubin cache; ZIPGEN_DISABLE_JIT=1 and the NVRTC compile function raises;
  bundle: ZIPGEN_BUNDLE_DIR=DIR, an empty cubin cache, ZIPGEN_DISABLE_JIT=1, NVRTC raises.
Every child checks where each kernel came from, then launches each one on a small problem and
checks the result (bit-exact decode; the GEMM against an FP32 reference).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SOURCES = ("nvrtc", "cache", "bundle")  # run in this order: the nvrtc child fills the cache
COLUMNS = ("bundle", "cache", "nvrtc")


def forbid_nvrtc(calls: list, forbid: bool) -> None:
    """Count NVRTC compiles in this process; with `forbid`, make any compile raise."""
    import zipgen.compile as compile_pkg
    import zipgen.compile.cache as cache_module
    import zipgen.compile.nvrtc as nvrtc_module

    real = nvrtc_module.compile_cubin

    def compile_cubin(*args, **kwargs):
        calls.append(kwargs.get("source_name", "?"))
        if forbid:
            raise AssertionError("NVRTC was called in a process that must not compile")
        return real(*args, **kwargs)

    for module in (compile_pkg, cache_module, nvrtc_module):
        module.compile_cubin = compile_cubin


def smoke(op: str, cfg, device) -> None:
    """Launch the kernel on a small problem and check its result."""
    import torch

    import zipgen
    from zipgen.runtime import decompress_cuda, gemm

    g = torch.Generator(device=device).manual_seed(0)
    w = (torch.randn(192, 512, device=device, generator=g) * 0.02).to(torch.bfloat16)
    ct = zipgen.compress(w)
    if op == "decode":
        out = decompress_cuda(ct, config=cfg)
        assert torch.equal(out.view(torch.int16), w.view(torch.int16)), "decode is not bit-exact"
        return
    x = torch.randn(cfg.tokens + 3, 512, device=device, generator=g).to(torch.bfloat16)
    y = gemm(x, ct, config=cfg, fused=True).float()
    ref = x.float() @ w.float().t()
    rel = float((y - ref).norm() / ref.norm())
    assert rel < 5e-3, f"{op} {cfg.describe()}: relative error {rel:.2e}"


def child(source: str, bundle: Path) -> dict:
    """Time get_kernel for every kernel of the bundle's arch in this (fresh) process."""
    import torch

    import zipgen.runtime.kernels as kernels
    from zipgen.bundle import read_manifest
    from zipgen.bundle.verify import entry_config

    calls = []
    forbid_nvrtc(calls, forbid=source != "nvrtc")
    origins = {}
    resolve = kernels.resolve_kernel

    def recording(op, arch, config):
        found = resolve(op, arch, config)
        origins[found.kernel_name] = found.origin
        return found

    kernels.resolve_kernel = recording
    device = torch.device("cuda", 0)
    torch.zeros(1, device=device)  # the context, before any timing
    kernels._make_current(0)
    arch = kernels.device_arch(device)
    entries = [e for e in read_manifest(bundle).kernels if e.arch == arch]
    times = {}
    for e in entries:
        cfg = entry_config(e)
        start = time.perf_counter()
        kernels.get_kernel(e.op, cfg, device)
        times[e.kernel_name] = 1000 * (time.perf_counter() - start)
    for e in entries:
        origin = origins[e.kernel_name]
        assert origin.split()[0] == source, f"{e.kernel_name} came from {origin}, not {source}"
        smoke(e.op, entry_config(e), device)
    if source == "nvrtc":
        assert len(calls) == len(entries), f"{len(calls)} compiles for {len(entries)} kernels"
    else:
        assert not calls, f"NVRTC was called {len(calls)} times"
    return {"source": source, "arch": arch, "times_ms": times, "nvrtc_calls": len(calls)}


def run_child(source: str, bundle: Path, env: dict) -> dict:
    cmd = [sys.executable, __file__, "--child", source, "--bundle", str(bundle)]
    done = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=600)
    if done.returncode:
        sys.exit(f"the {source} child failed:\n{done.stdout}\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, help="a bundle built for this GPU's arch (default: build one)")
    ap.add_argument("--json", help="write the raw results here")
    ap.add_argument("--child", choices=SOURCES, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.bundle)))
        return

    import torch
    if not torch.cuda.is_available():
        sys.exit("bundle_load.py needs a CUDA GPU (run it on the GPU machine)")
    from _timing import header

    from zipgen.bundle import build_bundle
    from zipgen.runtime import device_arch

    print(header("zipgen bundle load benchmark (benchmarks/bundle_load.py)"))
    arch = device_arch(torch.device("cuda", 0))
    with tempfile.TemporaryDirectory(prefix="zipgen-bundle-load-") as tmp:
        tmp = Path(tmp)
        bundle = args.bundle
        if bundle is None:
            os.environ["ZIPGEN_CACHE_DIR"] = str(tmp / "build-cache")
            start = time.perf_counter()
            bundle = build_bundle([arch], out=tmp / "bundle").path
            print(f"# built {bundle} for {arch} in {time.perf_counter() - start:.1f} s")
        no_bundle = {"ZIPGEN_BUNDLE_DIR": "", "ZIPGEN_DISABLE_JIT": ""}
        envs = {"nvrtc": {**no_bundle, "ZIPGEN_CACHE_DIR": str(tmp / "jit-cache")},
                "cache": {**no_bundle, "ZIPGEN_CACHE_DIR": str(tmp / "jit-cache"),
                          "ZIPGEN_DISABLE_JIT": "1"},
                "bundle": {"ZIPGEN_BUNDLE_DIR": str(bundle), "ZIPGEN_DISABLE_JIT": "1",
                           "ZIPGEN_CACHE_DIR": str(tmp / "empty-cache")}}
        results = {s: run_child(s, bundle, envs[s]) for s in SOURCES}
    times = {s: r["times_ms"] for s, r in results.items()}
    print(f"# arch {arch}; each column a fresh process; ms from get_kernel's request to a "
          f"launch-ready kernel; the bundle and cache processes made no NVRTC call")
    print("| kernel | bundle ms | cache ms | NVRTC ms |")
    print("|---|---|---|---|")
    for name in times["bundle"]:
        print(f"| {name} | {times['bundle'][name]:.2f} | {times['cache'][name]:.2f} | "
              f"{times['nvrtc'][name]:.0f} |")
    summary = {}
    for s in SOURCES:
        ms = list(times[s].values())
        summary[s] = {"median_ms": statistics.median(ms), "first_ms": ms[0],
                      "median_after_first_ms": statistics.median(ms[1:] or ms), "kernels": len(ms)}
    print("| **median** | " + " | ".join(f"{summary[s]['median_ms']:.2f}" for s in COLUMNS) + " |")
    print("| first request (one-time set-up included) | "
          + " | ".join(f"{summary[s]['first_ms']:.2f}" for s in COLUMNS) + " |")
    print(f"# bundle: median {summary['bundle']['median_ms']:.2f} ms over "
          f"{summary['bundle']['kernels']} kernels ({summary['bundle']['median_after_first_ms']:.2f} "
          f"ms after the first), NVRTC calls: {results['bundle']['nvrtc_calls']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"arch": arch, "times_ms": times, "summary": summary}, f, indent=1)


if __name__ == "__main__":
    main()
