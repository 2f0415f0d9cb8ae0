"""zipgen.tune.dispatch: the lookup ladder, the one-time warning, the runtime's cached choice, and
its wiring into zipgen.runtime.gemm (GPU parts faked; CPU only)."""
from __future__ import annotations

import importlib
import warnings

import pytest
import torch

import zipgen
from zipgen.codegen import DecodeConfig, ZipGemmConfig
from zipgen.tune import TuningDB, TuningDBWarning, dispatch, lookup, switch_lookup, winners

from test_tune_db import rec

gemm_module = importlib.import_module("zipgen.runtime.gemm")  # zipgen.runtime.gemm is the function

A100, A100_2 = "NVIDIA A100-SXM4-80GB", "NVIDIA A100 40GB PCIe"
A, B, C, D = (ZipGemmConfig(4, 1, 1, 1), ZipGemmConfig(8, 2, 2, 1), ZipGemmConfig(16, 1, 3, 2),
              ZipGemmConfig(2, 2, 4, 2))


def zg(cfg, device=A100, arch="sm_80", m=1, us=10.0, n=4096, k=4096):
    return rec(n=n, k=k, m=m, us=us, config=cfg.as_dict(),
               target=dict(arch=arch, device_name=device, sm_count=108))


def index(*records):
    return winners(records)


def test_exact_device_first():
    idx = index(zg(A, us=9.0), zg(B, device=A100_2, us=1.0))
    assert lookup("zipgemm", A100, "sm_80", 4096, 4096, 1, idx) == (A, "exact")
    assert lookup("zipgemm", A100, "sm_80", 4096, 4096, 1, index(zg(B, device=A100_2))) == (B, "arch")


def test_an_m_maps_to_its_bucket():
    idx = index(zg(A, m=16), zg(B, m=32))
    assert lookup("zipgemm", A100, "sm_80", 4096, 4096, 9, idx) == (A, "exact")
    assert lookup("zipgemm", A100, "sm_80", 4096, 4096, 17, idx) == (B, "exact")


def test_nearest_bucket_this_device_first_ties_go_up():
    idx = index(zg(A, m=8), zg(B, m=32), zg(C, m=16, device=A100_2))
    # bucket 16: the other A100 has it exactly, which comes before a nearby bucket
    assert lookup("zipgemm", A100, "sm_80", 4096, 4096, 16, idx) == (C, "arch")
    idx = index(zg(A, m=8), zg(B, m=32), zg(C, m=64, device=A100_2))
    assert lookup("zipgemm", A100, "sm_80", 4096, 4096, 16, idx) == (B, "nearest-m")
    assert lookup("zipgemm", A100, "sm_80", 4096, 4096, 1, idx) == (A, "nearest-m")
    assert lookup("zipgemm", A100, "sm_80", 4096, 4096, 256, idx) == (B, "nearest-m")
    only_other = index(zg(C, m=64, device=A100_2))
    assert lookup("zipgemm", A100, "sm_80", 4096, 4096, 1, only_other) == (C, "nearest-m")


def test_none_for_another_shape_op_or_arch():
    idx = index(zg(A, arch="sm_90", device=A100), zg(B, n=1024))
    assert lookup("zipgemm", A100, "sm_80", 4096, 4096, 1, idx) == (None, "default")
    assert lookup("decode", A100, "sm_80", 1024, 4096, None, idx) == (None, "default")


def test_never_another_arch_even_of_the_same_device_name():
    idx = index(zg(A, arch="sm_90"), zg(B, arch="sm_90", m=8))
    for m in (1, 8, 200):
        assert lookup("zipgemm", A100, "sm_80", 4096, 4096, m, idx) == (None, "default")


def test_a_stale_or_invalid_config_is_skipped():
    renamed = rec(m=1, us=1.0, config={"warps": 8},
                  target=dict(arch="sm_80", device_name=A100, sm_count=108))
    too_big = zg(ZipGemmConfig(16, 8, 4, 1, True), us=2.0)  # 198 KB of shared memory on sm_80
    idx = {r.key + (i,): r for i, r in enumerate([renamed, too_big, zg(B, us=5.0)])}
    assert lookup("zipgemm", A100, "sm_80", 4096, 4096, 1, idx) == (B, "exact")


def test_decode_ignores_m():
    d = rec(op="decode", m=None, config=DecodeConfig(8, 2).as_dict(),
            target=dict(arch="sm_80", device_name=A100, sm_count=108))
    assert lookup("decode", A100, "sm_80", 4096, 4096, 77, index(d)) == (DecodeConfig(8, 2), "exact")


def test_switch_lookup():
    def sw(m, device=A100, arch="sm_80", time="t1"):
        return rec(op="switch", m=None, us=None, config={"fused_max_m": m}, time=time,
                   target=dict(arch=arch, device_name=device, sm_count=108))
    assert switch_lookup(A100, "sm_80", 4096, 4096, index(sw(32), sw(64, A100_2))) == (32, "exact")
    assert switch_lookup(A100, "sm_80", 4096, 4096, index(sw(64, A100_2))) == (64, "arch")
    assert switch_lookup(A100, "sm_80", 4096, 4096, index(sw(64, arch="sm_90"))) == (None, "default")
    assert switch_lookup(A100, "sm_80", 4096, 4096, index(sw(0))) == (0, "exact")


@pytest.fixture
def fake_gpu(monkeypatch, tmp_path):
    """dispatch's runtime entry points on a pretend A100 (device index 0), reading tmp_path."""
    monkeypatch.setattr(dispatch, "_target", lambda index: (A100, "sm_80"))
    monkeypatch.setattr(dispatch, "_index_of", lambda device: 0)
    dispatch.reload([tmp_path])
    yield TuningDB(tmp_path)
    dispatch.reload()


def test_runtime_default_warns_once_and_names_the_fix(fake_gpu, monkeypatch):
    dev = torch.device("cuda", 0)
    with pytest.warns(TuningDBWarning) as caught:
        cfg = dispatch.choose("zipgemm", dev, 4096, 14336, 5, gemm_module.fused_config)
    assert cfg == gemm_module.fused_config(5, 4096, 14336)
    (w,) = caught
    text = str(w.message)
    assert "zipgemm" in text and "N=4096, K=14336" in text and A100 in text
    assert "zipgen tune --arch sm_80 --shape 4096x14336" in text
    calls = []
    monkeypatch.setattr(dispatch, "lookup", lambda *a, **k: calls.append(a) or (None, "default"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        assert dispatch.choose("zipgemm", dev, 4096, 14336, 7, gemm_module.fused_config) == cfg
        dispatch.choose("zipgemm", dev, 4096, 14336, 100, gemm_module.fused_config)
    assert len(calls) == 1, "M 7 shares bucket 8 with M 5 (cached); M 100 is a new bucket"


def test_runtime_uses_tuned_winners_and_reload(fake_gpu):
    dev = torch.device("cuda", 0)
    fake_gpu.append(zg(C, m=16))
    fake_gpu.append(rec(op="switch", m=None, us=None, config={"fused_max_m": 64},
                        target=dict(arch="sm_80", device_name=A100, sm_count=108)))
    dispatch.reload([fake_gpu.folder])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert dispatch.choose("zipgemm", dev, 4096, 4096, 12, gemm_module.fused_config) == C
        assert dispatch.fused_max_m(dev, 4096, 4096, 16) == 64
    assert dispatch.fused_max_m(dev, 1024, 4096, 16) == 16


def test_env_variable_names_the_runtime_database(monkeypatch, tmp_path):
    monkeypatch.setenv("ZIPGEN_TUNING_DB", str(tmp_path))
    from zipgen.tune import read_folders, write_folder
    assert read_folders() == [tmp_path] and write_folder() == tmp_path
    monkeypatch.delenv("ZIPGEN_TUNING_DB")
    monkeypatch.setenv("ZIPGEN_CACHE_DIR", str(tmp_path / "cache"))
    folders = read_folders()
    assert folders[-1] == tmp_path / "cache" / "tuning" and folders[0].name == "tuning_db"


def test_gemm_takes_the_switch_point_and_config_from_dispatch(fake_gpu, monkeypatch):
    """runtime.gemm with the kernel launch faked: M <= the tuned switch point launches the tuned
    fused config, above it the decode path runs."""
    fake_gpu.append(zg(D, m=64, n=64, k=128))
    fake_gpu.append(rec(op="switch", m=None, us=None, config={"fused_max_m": 64}, n=64, k=128,
                        target=dict(arch="sm_80", device_name=A100, sm_count=108)))
    dispatch.reload([fake_gpu.folder])
    w = (torch.randn(64, 128) * 0.02).to(torch.bfloat16)
    ct = zipgen.compress(w)
    launched, decoded = [], []
    monkeypatch.setattr(gemm_module, "check_gemm_inputs", lambda *a: None)
    monkeypatch.setattr(gemm_module, "get_kernel", lambda op, cfg, device: cfg)
    monkeypatch.setattr(gemm_module, "launch", lambda kernel, **kw: launched.append(kernel))
    monkeypatch.setattr(gemm_module, "decompress_cuda",
                        lambda ct, out: decoded.append(ct) or out.copy_(w))
    monkeypatch.setattr(gemm_module, "scratch",  # the runtime's buffer, on the CPU here
                        lambda device, n, k: torch.empty(n, k, dtype=torch.bfloat16))
    x = torch.randn(40, 128).to(torch.bfloat16)
    gemm_module.gemm(x, ct)
    assert launched == [D] and not decoded
    y = gemm_module.gemm(torch.cat([x, x]), ct)  # M = 80 > 64
    assert decoded == [ct] and len(launched) == 1
    assert torch.allclose(y.float(), torch.cat([x, x]).float() @ w.float().t(), rtol=2e-2, atol=2e-2)


def test_records_of_other_kernel_sources_are_ignored_with_one_warning():
    old, new, unknown = (zg(A, us=1.0), zg(B, us=5.0), zg(C, us=9.0))
    old.env["headers_sha256"] = "headers of an older zipgen"
    new.env["headers_sha256"] = "today's headers"
    with pytest.warns(TuningDBWarning, match="ignored 1 tuning records measured with other kernel"):
        kept = dispatch.current_kernels([old, new, unknown], headers_sha256="today's headers")
    assert kept == [new, unknown]  # a record without the hash (hand-written) is kept
    # the faster record of the old kernel no longer wins
    assert lookup("zipgemm", A100, "sm_80", 4096, 4096, 1, winners(kept)) == (B, "exact")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert dispatch.current_kernels([new], headers_sha256="today's headers") == [new]


def test_a_record_is_current_while_the_kernel_it_timed_is_unchanged():
    """env kernel_sha256 (the timed kernel's body and included headers) decides, whatever the
    hash of all headers says; a wrong stamp or a config that no longer renders is stale."""
    from zipgen.codegen.digest import kernel_sha256
    from zipgen.tune.current import is_current
    good = zg(A)
    good.env.update(kernel_sha256=kernel_sha256("zipgemm", "sm_80", A),
                    headers_sha256="headers of an older zipgen")
    wrong = zg(B)
    wrong.env.update(kernel_sha256=kernel_sha256("zipgemm", "sm_80", A))  # A's kernel, not B's
    gone = rec(op="zipgemm", config={"warps_per_cta": 8, "no_such_field": 1})
    gone.env["kernel_sha256"] = "anything"
    assert is_current(good, "today's headers")
    assert not is_current(wrong, "today's headers") and not is_current(gone, "today's headers")
    with pytest.warns(TuningDBWarning, match="ignored 2 tuning records"):
        assert dispatch.current_kernels([good, wrong, gone], "today's headers") == [good]


def test_the_shipped_database_matches_the_shipped_kernels():
    """tuning_db/ must be re-measured whenever a kernel it times changes: stale records would be
    ignored at run time, leaving users on the defaults. Each record names the kernel it timed
    (its body and the headers it includes), so a new variant in a header of its own leaves the
    others' records current."""
    from zipgen.tune.current import record_kernel_sha256
    from zipgen.tune.db import read_records, shipped_folder
    records = [r for r in read_records([shipped_folder()]) if r.status == "ok"]
    assert records, "tuning_db/ ships no records"
    unstamped = [r for r in records if "kernel_sha256" not in r.env]
    assert not unstamped, f"{len(unstamped)} records without kernel_sha256: python -m zipgen.tune.stamp"
    stale = [r for r in records if r.env["kernel_sha256"] != record_kernel_sha256(r)]
    assert not stale, (f"{len(stale)} of {len(records)} records of tuning_db/ timed kernels that have "
                       f"changed since (first: {stale[0].op} {stale[0].config}): re-run zipgen tune "
                       f"on a GPU (tuning_db/README.md) or revert the kernel change")
