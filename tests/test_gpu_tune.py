"""The tuner for real, tiny: worker measurements, a short `zipgen tune` run, its winners used by
the runtime (GPU machine only)."""
from __future__ import annotations

import warnings

import pytest
import torch

import zipgen
from zipgen.cli.main import main
from zipgen.codegen import DecodeConfig, ZipGemmConfig
from zipgen.runtime import decompress_cuda, device_arch, fused_config, gemm
from zipgen.tune import TuningDB, TuningDBWarning, dispatch, lookup, switch_lookup, winners
from zipgen.tune.worker import Worker

from conftest import requires_gpu

pytestmark = [pytest.mark.gpu, requires_gpu]

N, K = 256, 1024


def test_worker_verifies_and_times_real_candidates():
    with Worker(timeout_s=300) as worker:
        for request in [{"op": "zipgemm", "config": ZipGemmConfig().as_dict(), "m": 8},
                        {"op": "decode", "config": DecodeConfig().as_dict(), "m": None},
                        {"op": "decode_path", "config": DecodeConfig().as_dict(), "m": 16}]:
            result = worker.measure((N, K, 0), request)
            assert result["status"] == "ok", (request, result)
            assert 0 < result["p10_us"] <= result["median_us"] <= result["p90_us"]
        assert worker.restarts == 0


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """A real run: both ops, M buckets 1 and 8, a few TPE trials each."""
    folder = tmp_path_factory.mktemp("tuning")
    argv = ["tune", "--arch", device_arch(torch.device("cuda")), "--shape", f"{N}x{K}",
            "--m", "1,8", "--trials", "4", "--db", str(folder), "--quiet"]
    assert main(argv) == 0
    return folder, argv


def test_tiny_tuning_run_records_winners(tuned):
    folder, _ = tuned
    records = TuningDB(folder).read()
    assert {r.op for r in records if r.status == "ok"} == {"decode", "zipgemm", "switch"}
    for r in records:
        assert (r.median_us is not None) == (r.status == "ok" and r.op != "switch")
        assert r.env["source_sha256"] or r.op == "switch"
    name, arch = torch.cuda.get_device_name(0), device_arch(torch.device("cuda"))
    index = winners(records)
    for m in (1, 8):
        cfg, source = lookup("zipgemm", name, arch, N, K, m, index)
        assert source == "exact" and isinstance(cfg, ZipGemmConfig)
    assert lookup("decode", name, arch, N, K, None, index)[1] == "exact"
    assert switch_lookup(name, arch, N, K, index)[1] == "exact"


def test_a_second_run_resumes(tuned, capsys):
    folder, argv = tuned
    lines = len((next(folder.glob("*.jsonl"))).read_text().splitlines())
    assert main(argv) == 0
    assert "resumed" in capsys.readouterr().out
    assert len((next(folder.glob("*.jsonl"))).read_text().splitlines()) == lines


def test_runtime_uses_the_winners(tuned):
    folder, _ = tuned
    dispatch.reload([folder])
    try:
        g = torch.Generator(device="cuda").manual_seed(5)
        w = (torch.randn(N, K, device="cuda", generator=g) * 0.02).to(torch.bfloat16)
        ct = zipgen.compress(w)
        with warnings.catch_warnings():
            warnings.simplefilter("error", TuningDBWarning)  # everything is tuned
            for m in (1, 5):
                x = torch.randn(m, K, device="cuda", generator=g).to(torch.bfloat16)
                y = gemm(x, ct).float()
                ref = x.float() @ w.float().t()
                assert float((y - ref).norm() / ref.norm()) < 5e-3
            assert torch.equal(decompress_cuda(ct).view(torch.int16), w.view(torch.int16))
        name, arch = torch.cuda.get_device_name(0), device_arch(torch.device("cuda"))
        best = lookup("zipgemm", name, arch, N, K, 5, winners(TuningDB(folder).read()))[0]
        assert dispatch.choose("zipgemm", torch.device("cuda", 0), N, K, 5, fused_config) == best
    finally:
        dispatch.reload()
