"""GPU timing shared by the tuner and benchmarks/: calls captured in one CUDA graph, replayed and
timed with CUDA events, operands rotated past the L2 cache, medians (and p10 / p90)."""
from __future__ import annotations

import statistics
import time

import torch


def rotation_count(bytes_per_copy: int, l2_multiple: float = 4.0, at_least: int = 2,
                   at_most: int = 64, device=None) -> int:
    """How many copies of the operands make one pass over them exceed the L2 several times."""
    props = torch.cuda.get_device_properties(device if device is not None else 0)
    l2 = getattr(props, "L2_cache_size", 50 << 20)
    need = int(l2 * l2_multiple // max(bytes_per_copy, 1)) + 1
    return max(at_least, min(at_most, need))


def graph_times_us(calls, replays: int = 20, warmup: int = 3) -> list[float]:
    """Time per call in microseconds of each replay: the calls (one per rotated operand set) are
    captured in one CUDA graph (a Python launch alone doubles a small kernel's time), replayed
    `replays` times after one discarded replay, each replay timed with events."""
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
    return times[1:]


def graph_time_us(calls, replays: int = 20, warmup: int = 3) -> float:
    """Median time per call in microseconds (graph_times_us)."""
    return statistics.median(graph_times_us(calls, replays, warmup))


def quantiles_us(times: list[float]) -> tuple[float, float, float]:
    """(p10, median, p90) of replay times."""
    if len(times) < 2:
        return times[0], times[0], times[0]
    deciles = statistics.quantiles(times, n=10, method="inclusive")
    return deciles[0], statistics.median(times), deciles[8]


def warm_up_gpu(seconds: float = 1.0) -> None:
    """Keep the GPU busy until its clocks have ramped up (an idle H200 sits at ~350 MHz)."""
    a = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for _ in range(20):
            a = (a @ a).clamp_(-1, 1)
        torch.cuda.synchronize()
