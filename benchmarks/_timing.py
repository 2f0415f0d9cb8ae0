"""Shared GPU timing helpers for the benchmarks: CUDA-graph replays, CUDA events, medians and
weights rotated past the L2 cache (from zipgen.tune.timing, which the tuner uses too), plus the
copy-bandwidth ceiling and the card's description."""
from __future__ import annotations

import datetime
import subprocess
import sys

import torch

from zipgen.tune.timing import graph_time_us, graph_times_us, rotation_count, warm_up_gpu

__all__ = ["copy_bandwidth_tbs", "describe_machine", "graph_time_us", "graph_times_us", "header",
           "rotation_count", "warm_up_gpu"]


def describe_machine() -> str:
    props = torch.cuda.get_device_properties(0)
    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
        driver = driver.splitlines()[0] if driver else "?"  # one line per GPU
    except (OSError, subprocess.SubprocessError):
        driver = "?"
    return (f"{props.name}, {props.multi_processor_count} SMs, "
            f"{props.total_memory / 2**30:.0f} GiB, driver {driver}, torch {torch.__version__}")


def header(title: str) -> str:
    return (f"# {title}\n# card: {describe_machine()}\n"
            f"# date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}\n"
            f"# command: {' '.join(['python'] + sys.argv)}")


def copy_bandwidth_tbs(gib: float = 1.0, repeats: int = 10) -> float:
    """Device-to-device copy rate in TB/s, counting bytes read plus bytes written: the best of
    several event-timed batches of back-to-back cudaMemcpyAsync copies."""
    n = int(gib * 2**30)
    src = torch.randint(0, 255, (n,), dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    warm_up_gpu()
    rates = []
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeats):
            dst.copy_(src)
        end.record()
        end.synchronize()
        rates.append(2 * n * repeats / (start.elapsed_time(end) * 1e-3) / 1e12)
    del src, dst
    return max(rates)
