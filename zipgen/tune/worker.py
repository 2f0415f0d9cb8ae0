"""Candidate isolation: kernels are verified and timed in a separate process (multiprocessing,
spawn), so an illegal address, a crash or a hang costs one candidate (status runtime or timeout)
and the tuner goes on with a fresh process.

Protocol (pickled dicts over a Pipe):
  {"cmd": "prepare", "n", "k", "seed"}              -> {"status": "ok"}
  {"cmd": "measure", "n", "k", "seed", "op", "config", "m"} -> measure.measure()'s dict, or
                                                        {"status": <failure>, "error": text}
  {"cmd": "stop"}
After any failure but a wrong answer the worker exits: a CUDA error can leave its context broken.
"""
from __future__ import annotations

import multiprocessing
import signal

from ..errors import CompileError, ZipgenError


def classify(exc: BaseException) -> str:
    """The record status of an exception raised while running a candidate."""
    text = str(exc)
    if "OUT_OF_RESOURCES" in text or "too many resources" in text:
        return "constraint"  # e.g. registers x threads exceed the SM's register file
    return "compile" if isinstance(exc, CompileError) else "runtime"


def serve(conn) -> None:
    """The worker process's loop."""
    from . import measure
    from .timing import warm_up_gpu

    problems: dict[tuple, object] = {}
    while True:
        try:
            req = conn.recv()
        except (EOFError, OSError):
            return
        if req["cmd"] == "stop":
            return
        key = (req["n"], req["k"], req["seed"])
        try:
            if req["cmd"] == "prepare":
                if key not in problems:
                    first = not problems
                    problems.clear()  # one shape at a time: the big ones need the memory
                    problems[key] = measure.prepare(*key)
                    if first:
                        warm_up_gpu()  # clocks up before the first timing
                conn.send({"status": "ok"})
            else:
                conn.send(measure.measure(problems[key], req["op"], req["config"], req.get("m")))
        except measure.WrongResult as exc:
            conn.send({"status": "correctness", "error": str(exc)})
        except Exception as exc:
            conn.send({"status": classify(exc), "error": f"{type(exc).__name__}: {exc}"})
            return


class Worker:
    """The parent's handle on the worker process, started on first use and after a loss."""

    def __init__(self, timeout_s: float = 60.0, prepare_timeout_s: float = 900.0, target=serve):
        self.timeout_s = timeout_s
        self.prepare_timeout_s = prepare_timeout_s  # starts the process and compresses copies
        self.target = target
        self.proc = self.conn = None
        self.prepared = None
        self.restarts = 0

    def _start(self) -> None:
        ctx = multiprocessing.get_context("spawn")  # never fork a process that holds CUDA
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=self.target, args=(child,), daemon=True,
                                name="zipgen-tune-worker")
        self.proc.start()
        child.close()
        self.prepared = None

    def _stop(self, kill: bool) -> int | None:
        """End the process (asking nicely first unless `kill`); returns its exit code."""
        if self.proc is None:
            return None
        if kill:
            self.proc.kill()
        self.proc.join(10)
        if self.proc.is_alive():  # stuck tearing down its CUDA context
            self.proc.kill()
            self.proc.join(10)
        code = self.proc.exitcode
        self.conn.close()
        self.proc = self.conn = self.prepared = None
        return code

    def _ensure_started(self) -> None:
        if self.proc is not None and not self.proc.is_alive():
            self._stop(kill=False)
            self.restarts += 1
        if self.proc is None:
            self._start()

    def _ask(self, req: dict, timeout_s: float) -> dict:
        try:
            self.conn.send(req)
            if not self.conn.poll(timeout_s):
                self._stop(kill=True)
                self.restarts += 1
                return {"status": "timeout", "error": f"no answer within {timeout_s:g} s; "
                                                      f"worker killed"}
            return self.conn.recv()
        except (EOFError, OSError):
            code = self._stop(kill=False)
            self.restarts += 1
            return {"status": "runtime", "error": f"worker process died ({_describe_exit(code)})"}

    def measure(self, problem: tuple[int, int, int], request: dict) -> dict:
        """Verify and time one candidate of `problem` (n, k, seed); never raises for the
        candidate's own failures, which come back as {"status": ..., "error": ...}."""
        n, k, seed = problem
        self._ensure_started()
        if self.prepared != problem:
            answer = self._ask({"cmd": "prepare", "n": n, "k": k, "seed": seed},
                               self.prepare_timeout_s)
            if answer.get("status") != "ok":  # not a candidate's fault: stop the run
                raise ZipgenError(f"the tuning worker could not prepare {n}x{k}: "
                                  f"{answer.get('error')}")
            self.prepared = problem
        answer = self._ask({"cmd": "measure", "n": n, "k": k, "seed": seed, **request},
                           self.timeout_s)
        if answer.get("status") not in ("ok", "correctness") and self.proc is not None:
            self._stop(kill=False)  # it exits after reporting a failure: wait for it
            self.restarts += 1
        return answer

    def close(self) -> None:
        if self.proc is not None and self.proc.is_alive():
            try:
                self.conn.send({"cmd": "stop"})
            except OSError:
                pass
        self._stop(kill=False)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"
