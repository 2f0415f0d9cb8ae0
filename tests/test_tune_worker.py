"""zipgen.tune.worker: candidate isolation with real spawned processes running a fake loop
(tune_fakes.fake_serve): a crash, a hang or a failure costs one candidate (CPU only)."""
from __future__ import annotations

import pytest

from zipgen.errors import CompileError
from zipgen.tune.worker import Worker, classify

from tune_fakes import fake_serve

PROBLEM = (64, 128, 0)


def ask(worker, mode="ok"):
    return worker.measure(PROBLEM, {"op": "zipgemm", "config": {"mode": mode}, "m": 1})


def test_crash_hang_and_failure_each_cost_one_candidate():
    with Worker(timeout_s=3, prepare_timeout_s=60, target=fake_serve) as worker:
        first = ask(worker)
        assert first["status"] == "ok"
        assert ask(worker)["pid"] == first["pid"]  # one process while nothing goes wrong

        crashed = ask(worker, "crash")
        assert crashed == {"status": "runtime",
                           "error": "worker process died (killed by SIGSEGV)"}
        after_crash = ask(worker)
        assert after_crash["status"] == "ok" and after_crash["pid"] != first["pid"]

        hung = ask(worker, "hang")
        assert hung["status"] == "timeout" and "3 s" in hung["error"]
        assert ask(worker)["status"] == "ok"

        failed = ask(worker, "fail")
        assert failed == {"status": "runtime", "error": "CUDA_ERROR_ILLEGAL_ADDRESS"}
        assert ask(worker)["status"] == "ok"
        assert worker.restarts == 3
    assert worker.proc is None


@pytest.mark.parametrize("exc,status", [
    (RuntimeError("CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES: too many resources requested"), "constraint"),
    (RuntimeError("CUDA_ERROR_ILLEGAL_ADDRESS"), "runtime"),
    (CompileError("nvrtc failed"), "compile"),
])
def test_classify(exc, status):
    assert classify(exc) == status


def test_serve_protocol_with_the_gpu_parts_faked(monkeypatch):
    """The real worker loop in a thread, measure.prepare / measure faked: answers, a wrong result
    keeps it serving, any other failure ends it."""
    import multiprocessing
    import threading

    from zipgen.tune import measure, timing, worker

    prepared = []
    monkeypatch.setattr(measure, "prepare", lambda n, k, seed: prepared.append((n, k, seed)) or "P")
    monkeypatch.setattr(timing, "warm_up_gpu", lambda: None)

    def fake_measure(problem, op, config, m):
        assert problem == "P"
        if config.get("mode") == "wrong":
            raise measure.WrongResult("M=3: 5 of 48 elements outside tolerance")
        if config.get("mode") == "oom":
            raise RuntimeError("CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES")
        return {"status": "ok", "median_us": 1.0, "p10_us": 1.0, "p90_us": 1.0}

    monkeypatch.setattr(measure, "measure", fake_measure)
    parent, child = multiprocessing.Pipe()
    thread = threading.Thread(target=worker.serve, args=(child,), daemon=True)
    thread.start()

    def ask(**req):
        parent.send({"n": 8, "k": 16, "seed": 0} | req)
        return parent.recv()

    assert ask(cmd="prepare") == {"status": "ok"}
    assert ask(cmd="prepare") == {"status": "ok"} and prepared == [(8, 16, 0)]
    assert ask(cmd="measure", op="zipgemm", config={}, m=1)["status"] == "ok"
    assert ask(cmd="measure", op="zipgemm", config={"mode": "wrong"}, m=1) == {
        "status": "correctness", "error": "M=3: 5 of 48 elements outside tolerance"}
    assert ask(cmd="measure", op="zipgemm", config={"mode": "oom"}, m=1) == {
        "status": "constraint", "error": "RuntimeError: CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES"}
    thread.join(5)
    assert not thread.is_alive(), "the worker ends after a failure other than a wrong result"


def test_check_close_catches_unwritten_and_wrong_outputs():
    import torch

    from zipgen.tune.measure import WrongResult, check_close

    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(17, 64, generator=g), torch.randn(32, 64, generator=g)
    ref = x @ w.t()
    check_close(ref.to(torch.bfloat16), ref, "exact")
    unwritten = ref.to(torch.bfloat16)
    unwritten[3, 5] = float("nan")  # the poison left in place
    with pytest.raises(WrongResult, match="non-finite"):
        check_close(unwritten, ref, "poisoned")
    off = ref.to(torch.bfloat16)
    off[16] *= 1.1  # one wrong token row
    with pytest.raises(WrongResult, match="outside tolerance"):
        check_close(off, ref, "M=17")


def test_quantiles():
    from zipgen.tune.timing import quantiles_us
    p10, median, p90 = quantiles_us([float(t) for t in range(1, 22)])
    assert (p10, median, p90) == (3.0, 11.0, 19.0)
    assert quantiles_us([5.0]) == (5.0, 5.0, 5.0)
