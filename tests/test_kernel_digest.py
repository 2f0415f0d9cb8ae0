"""Per-kernel hashes (zipgen.codegen.digest) and the stamping of older tuning records
(zipgen.tune.stamp)."""
from __future__ import annotations

import json
import shutil


from zipgen.codegen import DecodeConfig, ZipGemmConfig, include_dir, render
from zipgen.codegen.digest import included_headers, kernel_sha256, source_digest
from zipgen.tune.current import is_current, record_kernel_sha256
from zipgen.tune.stamp import stamp_file

from test_tune_db import rec

WGMMA = ZipGemmConfig(16, 4, 1, 4, True, 1, True)


def test_a_kernel_hash_covers_its_body_and_the_headers_it_includes(tmp_path):
    root = tmp_path / "include"
    shutil.copytree(include_dir(), root)
    source = render("zipgemm", "sm_90", WGMMA).source
    names = included_headers(source, root)
    assert {"zipgen/zipgemm_kernel.cuh", "zipgen/tcatbe.cuh", "zipgen/wgmma.cuh"} <= names.keys()
    before = source_digest(source, root)
    # the generated comment block (version, config description) changes no instruction
    assert source_digest("// another version\n" + source.split("\n", 1)[1], root) == before
    # a header the kernel does not include: same hash
    (root / "zipgen" / "unrelated.cuh").write_text("#pragma once\n")
    assert source_digest(source, root) == before
    # one it includes through another: a new hash (the header cache is per file and root)
    other = tmp_path / "other"
    shutil.copytree(root, other)
    (other / "zipgen" / "tcatbe.cuh").write_text((other / "zipgen" / "tcatbe.cuh").read_text() + "\n")
    assert source_digest(source, other) != before
    # the body too
    assert source_digest(source.replace("zipgemm_rows<16", "zipgemm_rows<8"), root) != before


def test_kernel_hashes_differ_per_config_and_arch():
    assert kernel_sha256("zipgemm", "sm_90", WGMMA) == kernel_sha256("zipgemm", "sm_90", WGMMA)
    assert kernel_sha256("zipgemm", "sm_80", ZipGemmConfig()) != kernel_sha256("zipgemm", "sm_86", ZipGemmConfig())
    assert kernel_sha256("decode", "sm_80", DecodeConfig()) != kernel_sha256("decode", "sm_80", DecodeConfig(8))


def _write(path, records):
    path.write_text("".join(json.dumps(r.to_json()) + "\n" for r in records))


def test_stamping_names_the_kernels_of_records_timed_with_todays_headers(tmp_path):
    cfg = ZipGemmConfig(8, 1, 2, 1)
    today, older = rec(config=cfg.as_dict(), us=12.0), rec(config=cfg.as_dict(), m=8, us=13.0)
    today.env["headers_sha256"], older.env["headers_sha256"] = "today", "older"
    decoded = rec(op="decode", m=None, config={"warps_per_cta": 4, "strips_per_warp": 1})
    decoded.env["headers_sha256"] = "today"
    switch = rec(op="switch", m=None, us=None, config={"fused_max_m": 1},
                 detail={"buckets": [1], "fused_us": [12.0], "decode_us": [30.0],
                         "decode_config": {"warps_per_cta": 4, "strips_per_warp": 1}})
    switch.env["headers_sha256"] = "today"
    path = tmp_path / "sm_80-X.jsonl"
    _write(path, [today, older, decoded, switch])
    path.write_text(path.read_text() + "not json\n")  # kept verbatim
    assert stamp_file(path, "today") == (3, 2)
    lines = path.read_text().splitlines()
    assert lines[-1] == "not json" and len(lines) == 5
    got = [json.loads(line) for line in lines[:4]]
    assert got[0]["env"]["kernel_sha256"] == kernel_sha256("zipgemm", today.arch, cfg)
    assert "kernel_sha256" not in got[1]["env"]  # timed with other headers: left alone
    assert got[3]["detail"]["fused_configs"] == [cfg.as_dict()]  # found by its fused time
    from zipgen.tune.record import Record
    stamped = [Record.from_json(d) for d in got]
    assert is_current(stamped[0], "another day's headers")  # the stamp decides now
    assert not is_current(stamped[1], "another day's headers")
    assert all(is_current(r, "x") for r in (stamped[2], stamped[3]))
    assert record_kernel_sha256(stamped[3]) == stamped[3].env["kernel_sha256"]
    assert stamp_file(path, "today") == (0, 5)  # nothing left to stamp


def test_a_switch_record_without_its_fused_times_in_the_file_stays_unstamped(tmp_path):
    switch = rec(op="switch", m=None, us=None, config={"fused_max_m": 1},
                 detail={"buckets": [1], "fused_us": [99.0], "decode_us": [30.0],
                         "decode_config": {"warps_per_cta": 4, "strips_per_warp": 1}})
    switch.env["headers_sha256"] = "today"
    path = tmp_path / "a.jsonl"
    _write(path, [switch])
    assert stamp_file(path, "today") == (0, 1)


def test_the_tuner_stamps_its_records(tmp_path, monkeypatch):
    from zipgen.tune import TuningDB, search
    from zipgen.tune.record import SWITCH_OP
    from tune_fakes import FakeMeasurer

    monkeypatch.setattr(search, "build_candidate", lambda op, arch, cfg: None)  # no NVRTC
    t = search.Tuner(search.Options([("t", 256, 512)], ms=(1, 16), ops=("decode", "zipgemm"),
                                    trials=3, seed=0),
                     search.Target("sm_80", "Fake A100", 108), TuningDB(tmp_path),
                     measurer=FakeMeasurer())
    t.run()
    records = [r for r in TuningDB(tmp_path).read() if r.status == "ok"]
    assert {r.op for r in records} == {"decode", "zipgemm", SWITCH_OP}
    assert all(r.env["kernel_sha256"] == record_kernel_sha256(r) for r in records)
    switch, = [r for r in records if r.op == SWITCH_OP]
    assert len(switch.detail["fused_configs"]) == 2  # the winners it compared, M = 1 and 16
