"""Fakes for the tuner's tests (CPU only): an in-process measurer and a worker-process loop that
crashes, hangs or fails on request. Kept import-light: the worker one runs in spawned children."""
from __future__ import annotations

import os
import signal
import time


def fake_serve(conn) -> None:
    """Stands in for zipgen.tune.worker.serve; the config's "mode" says what to do."""
    while True:
        try:
            req = conn.recv()
        except EOFError:
            return
        if req["cmd"] == "stop":
            return
        if req["cmd"] == "prepare":
            conn.send({"status": "ok"})
            continue
        mode = req["config"].get("mode", "ok")
        if mode == "crash":
            os.kill(os.getpid(), signal.SIGSEGV)
        if mode == "hang":
            time.sleep(600)
        if mode == "fail":
            conn.send({"status": "runtime", "error": "CUDA_ERROR_ILLEGAL_ADDRESS"})
            return  # like the real worker: its context is gone
        conn.send({"status": "ok", "median_us": 10.0, "p10_us": 9.0, "p90_us": 11.0,
                   "pid": os.getpid()})


class FakeMeasurer:
    """Answers like worker.Worker.measure from a function of (op, config, m); logs every call."""

    def __init__(self, time_us=None, failures=None):
        self.time_us = time_us or (lambda op, cfg, m: 10.0 + sum(cfg.values()) / 10)
        self.failures = failures or {}  # frozenset(config.items()) -> (status, error)
        self.calls = []
        self.closed = False

    def measure(self, problem, request):
        op, cfg, m = request["op"], request["config"], request.get("m")
        self.calls.append((op, dict(cfg), m))
        failure = self.failures.get((op, frozenset(cfg.items())))
        if failure:
            return {"status": failure[0], "error": failure[1]}
        t = self.time_us(op, cfg, m)
        return {"status": "ok", "median_us": t, "p10_us": 0.95 * t, "p90_us": 1.05 * t}

    def close(self):
        self.closed = True
