"""`zipgen tune`: --dry-run without a GPU, refusing without a GPU or for another arch, and a whole
run with the GPU parts faked (CPU only)."""
from __future__ import annotations

import importlib

import pytest
import torch

from zipgen.cli.main import main
from zipgen.tune import TuningDB, search
from zipgen.tune.space import enumerate_space

from tune_fakes import FakeMeasurer

tune_cmd = importlib.import_module("zipgen.cli.tune_cmd")


def test_dry_run_lists_valid_and_filtered_configs(capsys, tmp_path):
    assert main(["tune", "--dry-run", "--arch", "sm_80", "--shape", "4096x4096",
                 "--db", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "No GPU used" in out
    assert "decode on sm_80: 20 valid, 0 filtered out; brute-force, 20 trials per shape" in out
    space = enumerate_space("zipgemm", "sm_80", 1)
    sampler = "tpe, 100" if len(space.valid) > 100 else f"brute-force, {len(space.valid)}"
    assert (f"zipgemm on sm_80, M bucket 1: {len(space.valid)} valid, {len(space.rejected)} "
            f"filtered out; {sampler} trials") in out
    assert "zipgemm on sm_80, M bucket 256: " in out
    assert "token_tiles=4 (32 tokens per CTA) for M bucket 1: mostly padding" in out
    assert "B of shared memory exceed sm_80's" in out
    assert "row_groups=4 is not 1, 2 or 4 dividing warps_per_cta" in out
    assert "Would run " in out and "switch point" in out
    assert not list(tmp_path.iterdir()), "a dry run writes nothing"


def test_dry_run_with_a_small_budget_says_tpe(capsys):
    assert main(["tune", "--dry-run", "--arch", "sm_90", "--model", "qwen2.5-7b", "--m", "1",
                 "--op", "zipgemm", "--trials", "10"]) == 0
    out = capsys.readouterr().out
    assert "tpe, 10 trials per shape" in out and "4608x3584" in out and "3584x18944" in out


def test_refuses_without_a_gpu(capsys, tmp_path):
    assert not torch.cuda.is_available()
    assert main(["tune", "--arch", "sm_80", "--shape", "4096x4096", "--db", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no CUDA GPU" in err and "--dry-run" in err


def test_refuses_another_arch(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(search.Target, "current",
                        classmethod(lambda cls, index=0: cls("sm_90", "NVIDIA H100 80GB HBM3", 132)))
    assert main(["tune", "--arch", "sm_80", "--shape", "4096x4096"]) == 2
    err = capsys.readouterr().err
    assert "--arch sm_80 is not this GPU's arch" in err and "--arch sm_90" in err


@pytest.mark.parametrize("args,match", [(["--shape", "4096by4096"], "bad shape"),
                                        (["--shape", "64x64", "--m", "3"], "buckets"),
                                        (["--shape", "64x64", "--trials", "0"], "--trials"),
                                        (["--shape", "64x64", "--refresh", "-1"], "--refresh"),
                                        (["--shape", "64x64", "--start-from", "/nonexistent"],
                                         "no such database folder: /nonexistent")])
def test_bad_arguments(capsys, args, match):
    assert main(["tune", "--arch", "sm_80", "--dry-run"] + args) == 2
    assert match in capsys.readouterr().err


def test_model_and_shape_exclude_each_other():
    with pytest.raises(SystemExit):
        main(["tune", "--arch", "sm_80", "--model", "mistral-7b", "--shape", "64x64"])


def test_whole_run_faked(capsys, monkeypatch, tmp_path):
    """The command end to end with a pretend GPU: the table, the switch point, the records."""
    target = search.Target("sm_80", "Fake A100", 108)
    monkeypatch.setattr(tune_cmd, "present_target", lambda arch: target)
    monkeypatch.setattr(search, "build_candidate", lambda op, arch, cfg: None)
    monkeypatch.setattr("zipgen.tune.worker.Worker", lambda timeout_s: FakeMeasurer(
        lambda op, cfg, m: 50.0 if op == "decode_path" else 20.0 + sum(cfg.values())))
    argv = ["tune", "--arch", "sm_80", "--shape", "512x1024", "--m", "1,16", "--db",
            str(tmp_path), "--quiet"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "Fake A100 (sm_80, 108 SMs); 3 studies" in out
    assert "warps_per_cta=2 token_tiles=1 depth=1 row_groups=1" in out
    assert "fused up to M" in out and "ZIPGEN_TUNING_DB=" in out
    records = TuningDB(tmp_path).read()
    assert {r.op for r in records} == {"decode", "zipgemm", "switch"}
    assert main(argv) == 0
    assert "resumed" in capsys.readouterr().out
    assert main(argv + ["--refresh", "2"]) == 0  # nothing older to re-time: all resumed
    assert "resumed" in capsys.readouterr().out
