"""zipgen.tune.db and record: the tuning database's format, its forgiving reader, atomic appends
and winners (CPU only)."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import warnings

import pytest

from zipgen.errors import InputError
from zipgen.tune import SCHEMA_VERSION, Record, TuningDB, TuningDBWarning, winners

H100 = dict(arch="sm_90", device_name="NVIDIA H100 80GB HBM3", sm_count=132)


def rec(op="zipgemm", n=4096, k=4096, m=1, status="ok", us=10.0, config=None, time="t1",
        target=H100, **kw):
    timed = dict(median_us=us, p10_us=us * 0.9, p90_us=us * 1.1) if status == "ok" and us else {}
    return Record(op=op, n=n, k=k, m=m, status=status,
                  config=config or {"warps_per_cta": 8, "token_tiles": 1, "depth": 2,
                                    "row_groups": 1},
                  error=None if status == "ok" else f"{status} failure", env={"time": time},
                  **timed, **target, **kw)


def test_round_trip(tmp_path):
    db = TuningDB(tmp_path)
    records = [rec(), rec(m=17, us=20.0), rec(op="decode", m=None,
                                             config={"warps_per_cta": 4, "strips_per_warp": 1}),
               rec(status="compile"), rec(op="switch", m=None, us=None,
                                          config={"fused_max_m": 16}, detail={"buckets": [1]})]
    for r in records:
        db.append(r)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean database reads without a warning
        back = db.read()
    assert back == records
    assert records[1].m_bucket == 32
    files = list(tmp_path.glob("*.jsonl"))
    assert [f.name for f in files] == ["sm_90-NVIDIA_H100_80GB_HBM3.jsonl"]
    line = json.loads(files[0].read_text().splitlines()[0])
    assert line["schema"] == SCHEMA_VERSION
    assert line["problem"] == {"op": "zipgemm", "n": 4096, "k": 4096, "m": 1, "m_bucket": 1,
                               "dtypes": "bf16", "format_version": 3}
    assert line["target"] == {"arch": "sm_90", "device_name": "NVIDIA H100 80GB HBM3",
                              "sm_count": 132}


@pytest.mark.parametrize("status", ["constraint", "compile", "runtime", "correctness", "timeout"])
def test_failures_never_carry_a_time(status):
    for times in (dict(median_us=1.0), dict(p10_us=1.0), dict(p90_us=2.0)):
        with pytest.raises(InputError, match="carries no time"):
            Record(op="zipgemm", n=1, k=8, m=1, config={}, status=status, error="x", **times,
                   **H100)
    with pytest.raises(InputError, match="error text"):
        Record(op="zipgemm", n=1, k=8, m=1, config={}, status=status, **H100)


@pytest.mark.parametrize("bad", [dict(median_us=None), dict(median_us=float("nan")),
                                 dict(median_us=-1.0), dict(median_us=5.0, p10_us=6.0, p90_us=7.0),
                                 dict(median_us=5.0, m=3, m_bucket=16), dict(status="fast")])
def test_invalid_records_raise(bad):
    with pytest.raises(InputError):
        Record(**(dict(op="zipgemm", n=1, k=8, m=1, config={}, status="ok") | H100 | bad))


def test_stale_and_corrupt_lines_are_skipped_with_a_warning(tmp_path):
    db = TuningDB(tmp_path)
    good = rec()
    path = db.append(good)
    other_schema = good.to_json() | {"schema": SCHEMA_VERSION + 1}
    other_format = good.to_json()
    other_format["problem"] = other_format["problem"] | {"format_version": 99}
    failure_with_time = rec(status="runtime").to_json() | {"median_us": 1.0}
    with open(path, "a") as f:
        f.write("{not json\n")
        f.write(json.dumps(other_schema) + "\n")
        f.write(json.dumps(other_format) + "\n")
        f.write(json.dumps({"schema": SCHEMA_VERSION, "problem": {}}) + "\n")
        f.write(json.dumps(failure_with_time) + "\n")
        f.write("\n")
    with pytest.warns(TuningDBWarning) as caught:
        back = db.read()
    assert back == [good]
    text = str(caught[0].message)
    assert "3 corrupt" in text and "2 stale" in text and "line 2" in text
    assert "schema version 2" in text


def test_a_torn_last_line_does_not_swallow_the_next_record(tmp_path):
    db = TuningDB(tmp_path)
    path = db.append(rec())
    with open(path, "a") as f:
        f.write('{"schema": 1, "probl')  # a writer died mid-line
    db.append(rec(m=8))
    with pytest.warns(TuningDBWarning, match="1 corrupt"):
        assert [r.m for r in db.read()] == [1, 8]


def test_missing_folder_reads_empty(tmp_path):
    assert TuningDB(tmp_path / "nope").read() == []


def test_concurrent_appends_from_two_processes_do_not_interleave(tmp_path):
    """Big records (~64 KB each) from two processes at once: every line stays whole."""
    code = textwrap.dedent(f"""
        import sys
        from zipgen.tune import Record, TuningDB
        db = TuningDB({str(tmp_path)!r})
        for i in range(60):
            db.append(Record(op="zipgemm", n=int(sys.argv[1]), k=8, m=1, config={{}},
                             status="ok", median_us=1.0 + i, arch="sm_80", device_name="X",
                             sm_count=1, detail={{"pad": sys.argv[1] * 65536}}))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(n)]) for n in (1, 2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        records = TuningDB(tmp_path).read()
    assert sorted((r.n, r.median_us) for r in records) == sorted(
        (n, 1.0 + i) for n in (1, 2) for i in range(60))


def test_winners_fastest_ok_per_key():
    fast = rec(us=5.0, config={"a": 1})
    records = [rec(us=9.0, config={"a": 2}), fast, rec(status="runtime", config={"a": 3}),
               rec(m=16, us=7.0), rec(target=dict(H100, device_name="H200"), us=1.0),
               rec(target=dict(H100, arch="sm_80", device_name="A100"), us=2.0)]
    best = winners(records)
    assert best[("zipgemm", "sm_90", H100["device_name"], 4096, 4096, 1)] is fast
    assert best[("zipgemm", "sm_90", H100["device_name"], 4096, 4096, 16)].median_us == 7.0
    assert len(best) == 4


def test_failures_never_win_and_a_remeasurement_replaces_the_old_one():
    records = [rec(status="timeout", config={"a": 1}, time="t1")]
    assert winners(records) == {}
    records += [rec(us=3.0, config={"a": 2}, time="t1"), rec(us=8.0, config={"a": 2}, time="t2"),
                rec(us=5.0, config={"a": 3}, time="t2")]
    (best,) = winners(records).values()
    assert best.config == {"a": 3}  # {"a": 2} was measured again (after a generator change, say)


def test_winner_of_the_switch_point_is_the_latest():
    records = [rec(op="switch", m=None, us=None, config={"fused_max_m": m}, time=t)
               for m, t in ((16, "t2"), (32, "t1"))]
    (best,) = winners(records, op="switch").values()
    assert best.config == {"fused_max_m": 16}
