"""Shared GPU timing helpers for the benchmarks: CUDA-graph replays, CUDA events, medians,
weights rotated past the L2 cache, the copy-bandwidth ceiling, and the card's description."""
from __future__ import annotations

import datetime
import statistics
import subprocess
import sys
import time

import torch


def describe_machine() -> str:
    props = torch.cuda.get_device_properties(0)
    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        driver = "?"
    return (f"{props.name}, {props.multi_processor_count} SMs, "
            f"{props.total_memory / 2**30:.0f} GiB, driver {driver}, torch {torch.__version__}")


def header(title: str) -> str:
    return (f"# {title}\n# card: {describe_machine()}\n"
            f"# date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}\n"
            f"# command: {' '.join(['python'] + sys.argv)}")


def rotation_count(bytes_per_copy: int, l2_multiple: float = 4.0, at_least: int = 2,
                   at_most: int = 64) -> int:
    """How many copies of the operands make one pass over them exceed the L2 several times."""
    l2 = getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 50 << 20)
    need = int(l2 * l2_multiple // max(bytes_per_copy, 1)) + 1
    return max(at_least, min(at_most, need))


def graph_time_us(calls, replays: int = 20, warmup: int = 3) -> float:
    """Median time per call in microseconds: the calls (one per rotated operand set) are
    captured in one CUDA graph, replayed `replays` times, each replay timed with events."""
    for _ in range(warmup):
        for c in calls:
            c()
    torch.cuda.synchronize()
    stream = torch.cuda.Stream()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(stream):
        with torch.cuda.graph(graph, stream=stream):
            for c in calls:
                c()
    torch.cuda.synchronize()
    times = []
    for _ in range(replays + 1):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1000 / len(calls))
    return statistics.median(times[1:])


def warm_up_gpu(seconds: float = 1.0) -> None:
    """Keep the GPU busy until its clocks have ramped up (an idle H200 sits at ~350 MHz)."""
    a = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for _ in range(20):
            a = (a @ a).clamp_(-1, 1)
        torch.cuda.synchronize()


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
