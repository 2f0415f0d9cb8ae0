"""The tuner's search loop with the GPU faked (build and measure monkeypatched): enqueue order,
pruned failures with reasons, crashes, wrong results, resume and the switch point (CPU only)."""
from __future__ import annotations

import math

import optuna
import pytest

from zipgen.codegen import DecodeConfig, ZipGemmConfig
from zipgen.errors import CompileError
from zipgen.runtime.gemm import fused_config
from zipgen.tune import TuningDB, enumerate_space, search, switch_lookup, winners

from tune_fakes import FakeMeasurer

TARGET = search.Target("sm_80", "Fake A100", 108)
N, K = 1024, 2048


class Log(list):
    fail: set  # configs that fail to compile


@pytest.fixture
def built(monkeypatch):
    """The configs the tuner compiled, in order (the GPU-free half of a candidate's life)."""
    log = Log()
    log.fail = set()

    def build(op, arch, cfg):
        log.append(cfg)
        if cfg in log.fail:
            raise CompileError("ptxas fatal: too many registers")
    monkeypatch.setattr(search, "build_candidate", build)
    return log


def tuner(tmp_path, measurer=None, ops=("decode", "zipgemm"), ms=(1, 16), **options):
    options.setdefault("trials", 1000)  # brute force over every space unless a test asks
    return search.Tuner(search.Options([("t", N, K)], ms=ms, ops=ops, **options), TARGET,
                        TuningDB(tmp_path), measurer=measurer or FakeMeasurer())


def key(cfg):
    return (cfg.op, frozenset(cfg.as_dict().items()))


def test_brute_force_searches_each_valid_config_once(tmp_path, built):
    fake = FakeMeasurer()
    report = tuner(tmp_path, fake).run()
    for op, bucket in [("decode", None), ("zipgemm", 1), ("zipgemm", 16)]:
        valid = enumerate_space(op, "sm_80", bucket).valid
        measured = [c for o, c, m in fake.calls if o == op and m == bucket]
        assert sorted(map(str, measured)) == sorted(str(c.as_dict()) for c in valid)
    assert report.counts["measured"] == len([c for c in fake.calls if c[0] != "decode_path"])
    assert fake.closed


def test_default_first_then_last_winner(tmp_path, built):
    db = TuningDB(tmp_path)
    last = ZipGemmConfig(16, 2, 3, 2)
    old = search.Record(op="zipgemm", n=N, k=K, m=1, arch="sm_80", device_name="Fake A100",
                        sm_count=108, config=last.as_dict(), status="ok", median_us=5.0,
                        env={"source_sha256": "an older generator"})
    db.append(old)
    t = tuner(tmp_path, ops=("zipgemm",), ms=(1,))
    t.run()
    assert built[:2] == [fused_config(1, N, K), last]
    (_, _, _, study), = t.studies
    assert [tr.params["config"] for tr in study.trials[:2]] == [fused_config(1, N, K).describe(),
                                                              last.describe()]
    built.clear()
    tuner(tmp_path / "other", ops=("decode",)).run()
    assert built[0] == DecodeConfig()


def test_an_older_kernels_winner_is_tried_after_the_last_winner(tmp_path, built, monkeypatch):
    """After a header change every record is stale: its winner ranks nothing (it timed other
    code) but is the study's third guess, from this database or from --start-from's."""
    monkeypatch.setattr(search, "current_headers_sha256", lambda: "new headers")
    earlier, shipped = ZipGemmConfig(16, 2, 3, 2), ZipGemmConfig(8, 1, 2, 4)

    def record(cfg, us, device="Fake A100"):
        return search.Record(op="zipgemm", n=N, k=K, m=1, arch="sm_80", device_name=device,
                             sm_count=108, config=cfg.as_dict(), status="ok", median_us=us,
                             env={"headers_sha256": "old headers"})
    TuningDB(tmp_path / "db").append(record(earlier, 5.0))
    t = tuner(tmp_path / "db", ops=("zipgemm",), ms=(1,))
    assert t.records == [] and t.hints  # stale: not resumed, not a last winner
    t.run()
    assert built[:2] == [fused_config(1, N, K), earlier]
    best = winners(TuningDB(tmp_path / "db").read())
    assert all(r.env["headers_sha256"] == "new headers" for r in best.values())

    built.clear()
    TuningDB(tmp_path / "shipped").append(record(shipped, 4.0))
    TuningDB(tmp_path / "shipped").append(record(earlier, 1.0, device="Another GPU"))
    tuner(tmp_path / "fresh", ops=("zipgemm",), ms=(1,), start_from=(tmp_path / "shipped",)).run()
    assert built[:2] == [fused_config(1, N, K), shipped]


def test_refresh_re_times_the_older_kernels_fastest_and_searches_nothing(tmp_path, built,
                                                                          monkeypatch):
    """Options.refresh = K: per study the default, then the K fastest configurations of the
    older kernels that the space still holds (one no longer valid is skipped), each measured
    once with today's kernels; the winner comes from those."""
    monkeypatch.setattr(search, "current_headers_sha256", lambda: "new headers")
    valid = enumerate_space("zipgemm", "sm_80", 16).valid
    default = fused_config(16, N, K)
    older = [c for c in valid if c != default][:4]
    gone = ZipGemmConfig(16, 2, 3, 2, stage_x=True, row_strips=2, x_strips=4)  # not valid
    assert gone not in valid
    db = TuningDB(tmp_path / "shipped")
    for us, cfg in zip([3.0, 1.0, 2.0, 4.0, 0.5], older + [gone]):
        db.append(search.Record(op="zipgemm", n=N, k=K, m=16, arch="sm_80",
                                device_name="Fake A100", sm_count=108, config=cfg.as_dict(),
                                status="ok", median_us=us, env={"headers_sha256": "old"}))
    # today the second-fastest older config is the fastest
    fake = FakeMeasurer(time_us=lambda op, cfg, m: 1.0 if cfg == older[2].as_dict() else 9.0)
    t = tuner(tmp_path / "db", fake, ops=("zipgemm",), ms=(16,), refresh=2,
              start_from=(tmp_path / "shipped",))
    assert [s[-2:] for s in t.plan()] == [("refresh", 3)]
    report = t.run()
    assert built == [default, older[1], older[2]]  # default, then 1.0 and 2.0 us; never `gone`
    (row,) = report.rows
    assert row.winner.config == older[2].as_dict()
    assert row.winner.env["headers_sha256"] == "new headers" and t.studies == []
    # the last winner of today's kernels comes right after the default
    built.clear()
    again = tuner(tmp_path / "db", FakeMeasurer(), ops=("zipgemm",), ms=(16,), refresh=1,
                  start_from=(tmp_path / "shipped",))
    assert again._refresh_candidates("zipgemm", N, K, 16) == [default, older[2], older[1]]


@pytest.mark.parametrize("op", ["zipgemm", "decode"])
def test_tpe_samples_every_tuned_field(op):
    """A field missing from FIELD_ORDER would keep its default in every TPE proposal (x_strips
    once did: a whole re-tune never tried it)."""
    from zipgen.tune.sampling import FIELD_ORDER
    from zipgen.tune.space import VALUES
    assert sorted(FIELD_ORDER[op]) == sorted(VALUES[op])
    seen = {f: set() for f in VALUES[op]}
    # split-K is searched from M = 16 on, paired strips at M = 1 only
    for bucket in ((1, 16) if op == "zipgemm" else (None,)):
        sampling = search.Sampling(enumerate_space(op, "sm_90", bucket), trials=8, seed=0)
        for _ in range(400):
            trial = sampling.study.ask()
            try:
                cfg = sampling.suggest(trial)
            except optuna.TrialPruned:
                continue
            for f in seen:
                seen[f].add(getattr(cfg, f))
    assert all(len(v) > 1 for v in seen.values()), seen


def test_tpe_for_big_spaces_prunes_invalid_proposals_without_measuring(tmp_path, built):
    fake = FakeMeasurer()
    t = tuner(tmp_path, fake, ops=("zipgemm",), ms=(1,), trials=30, seed=3)
    t.run()
    (_, _, _, study), = t.studies
    assert isinstance(study.sampler, optuna.samplers.TPESampler)
    inside = [tr for tr in study.trials if tr.user_attrs.get("status") != "constraint"]
    assert len({tr.user_attrs["config"] for tr in inside}) == 30  # distinct configs measured
    assert study.trials[0].user_attrs["config"] == fused_config(1, N, K).describe()
    assert "wgmma" not in study.trials[0].params  # no wgmma on sm_80: set, not sampled
    valid = set(enumerate_space("zipgemm", "sm_80", 1).valid)
    assert all(ZipGemmConfig(**c) in valid for op, c, _ in fake.calls if op == "zipgemm")
    for tr in study.trials:
        assert tr.value is None or math.isfinite(tr.value)
        if tr.user_attrs.get("status") == "constraint":
            assert tr.state == optuna.trial.TrialState.PRUNED


def test_tpe_sets_the_fields_that_the_sampled_ones_determine(tmp_path, built):
    """On sm_90 a wgmma config needs row_groups=4, stage_x and one strip row: sampled
    independently, 1 wgmma proposal in 8 would be valid; set, every one is (and few proposals
    of any kind fall outside the space)."""
    t = search.Tuner(search.Options([("t", N, K)], ms=(32,), ops=("zipgemm",), trials=40, seed=1),
                     search.Target("sm_90", "Fake H100", 132), TuningDB(tmp_path),
                     measurer=FakeMeasurer())
    t.run()
    (_, _, _, study), = t.studies
    wgmma = [tr for tr in study.trials if tr.params.get("wgmma")]
    sampled = {"wgmma", "token_tiles", "warps_per_cta", "depth", "k_splits"}
    # warp specialisation is sampled where the fields before it leave both values valid; paired
    # strips (direct activations only) are set to False, except in proposals already outside
    # the space, which sample every later field
    assert wgmma and all(sampled <= set(tr.params) <= sampled | {"specialized", "strip_pairs"}
                         for tr in wgmma)
    assert all("strip_pairs" not in tr.params for tr in wgmma
               if tr.user_attrs.get("status") != "constraint")
    assert any("specialized" in tr.params for tr in wgmma)
    # split-K is searched on the wgmma path only: elsewhere k_splits is set to 1, not sampled
    # (a proposal already outside the space samples every later field)
    assert all("k_splits" not in tr.params for tr in study.trials
               if not tr.params.get("wgmma") and tr.user_attrs.get("status") != "constraint")
    # the only way left outside the space: fewer warps than the warpgroup's 4
    assert all(tr.params["warps_per_cta"] < 4 for tr in wgmma
               if tr.user_attrs.get("status") == "constraint")
    inside = [tr for tr in study.trials if tr.user_attrs.get("status") != "constraint"]
    assert len({tr.user_attrs["config"] for tr in inside}) == 40  # distinct configs measured
    assert len(study.trials) - len(inside) < 20


def test_failures_are_pruned_trials_with_reasons_and_recorded_without_time(tmp_path, built):
    crash, slow, broken = ZipGemmConfig(2, 1, 1, 1), ZipGemmConfig(4, 2, 4, 1), ZipGemmConfig(8, 1, 4, 2)
    built.fail.add(broken)
    fake = FakeMeasurer(failures={
        key(crash): ("runtime", "worker process died (killed by SIGSEGV)"),
        key(slow): ("timeout", "no answer within 60 s; worker killed")})
    t = tuner(tmp_path, fake, ops=("zipgemm",), ms=(1,))
    report = t.run()
    (_, _, _, study), = t.studies
    pruned = {tr.user_attrs["config"]: tr for tr in study.trials
              if tr.state == optuna.trial.TrialState.PRUNED}
    assert set(pruned) == {crash.describe(), slow.describe(), broken.describe()}
    assert pruned[crash.describe()].user_attrs["status"] == "runtime"
    assert all(tr.value is None for tr in pruned.values())  # pruned, never a NaN value
    assert report.counts["runtime"] == report.counts["timeout"] == report.counts["compile"] == 1
    records = {r.status: r for r in TuningDB(tmp_path).read()}
    assert "SIGSEGV" in records["runtime"].error and "registers" in records["compile"].error
    for status in ("runtime", "timeout", "compile"):
        assert records[status].median_us is None
    # the search went on after the crash
    order = [c for _, c, _ in fake.calls]
    assert order.index(crash.as_dict()) < len(order) - 1
    assert report.rows[0].winner.status == "ok"


def test_a_wrong_result_stops_the_run_and_names_the_config(tmp_path, built):
    wrong = ZipGemmConfig(4, 1, 3, 1)
    fake = FakeMeasurer(failures={key(wrong): ("correctness", "M=3: 12 of 3072 outside tolerance")})
    with pytest.raises(search.WrongResultError, match=r"warps_per_cta=4 token_tiles=1 depth=3"):
        tuner(tmp_path, fake, ops=("zipgemm",), ms=(1,)).run()
    assert fake.closed
    (record,) = [r for r in TuningDB(tmp_path).read() if r.status == "correctness"]
    assert record.config == wrong.as_dict() and record.median_us is None


def test_keep_going_records_a_wrong_result_and_goes_on(tmp_path, built):
    wrong = ZipGemmConfig(4, 1, 3, 1)
    fake = FakeMeasurer(failures={key(wrong): ("correctness", "bad")})
    report = tuner(tmp_path, fake, ops=("zipgemm",), ms=(1,), keep_going=True).run()
    assert report.counts["correctness"] == 1
    measured = [c for op, c, _ in fake.calls if op == "zipgemm"]
    assert len(measured) == len(enumerate_space("zipgemm", "sm_80", 1).valid)
    assert report.rows[0].winner.config != wrong.as_dict()


def test_resume_skips_measured_work(tmp_path, built, monkeypatch):
    first = tuner(tmp_path).run()
    lines = sum(1 for _ in (tmp_path).rglob("*.jsonl") for _ in open(_))

    class MustNotMeasure(FakeMeasurer):
        def measure(self, problem, request):
            raise AssertionError(f"measured again: {request}")

    again = tuner(tmp_path, MustNotMeasure()).run()
    assert again.counts == {"resumed": sum(first.counts.values()) + 1}  # + the switch point
    assert sum(1 for _ in (tmp_path).rglob("*.jsonl") for _ in open(_)) == lines
    assert [(r.winner.config, r.default.median_us) for r in again.rows] == \
        [(r.winner.config, r.default.median_us) for r in first.rows]
    # a changed kernel is measured again
    monkeypatch.setattr(search, "kernel_sha256", lambda op, arch, cfg: "new")
    fake = FakeMeasurer()
    tuner(tmp_path, fake, ops=("decode",)).run()
    assert len(fake.calls) == 20


def test_switch_point_is_the_largest_m_where_fused_won(tmp_path, built):
    def time_us(op, cfg, m):
        if op == "decode_path":
            return 30.0
        return 10.0 + m + cfg.get("depth", 0) / 10 if op == "zipgemm" else 5.0

    report = tuner(tmp_path, FakeMeasurer(time_us), ms=(1, 16, 64)).run()
    (label, record), = report.switches
    assert record.config == {"fused_max_m": 16}
    assert record.detail["buckets"] == [1, 16, 64]
    assert record.detail["decode_us"] == [30.0, 30.0, 30.0]
    assert record.detail["fused_us"] == pytest.approx([11.1, 26.1, 74.1])
    assert switch_lookup("Fake A100", "sm_80", N, K, winners(TuningDB(tmp_path).read())) == \
        (16, "exact")


def test_switch_point_weighs_the_buckets_tuned_before(tmp_path, built):
    """A run over M = 1 alone keeps the fused kernel at the larger buckets an earlier run of the
    same kernels tuned: the switch point is decided over all of them."""
    def time_us(op, cfg, m):
        return 30.0 if op == "decode_path" else 10.0 + m if op == "zipgemm" else 5.0

    first = tuner(tmp_path, FakeMeasurer(time_us), ops=("zipgemm",), ms=(16, 64)).run()
    assert not first.switches  # no M = 1 yet
    again = tuner(tmp_path, FakeMeasurer(time_us), ops=("zipgemm",), ms=(1,)).run()
    (label, record), = again.switches
    assert record.detail["buckets"] == [1, 16, 64]
    assert record.config == {"fused_max_m": 16}


def test_switch_point_uses_the_tuned_decoder(tmp_path, built):
    fake = FakeMeasurer(lambda op, cfg, m: 1.0 if cfg == {"warps_per_cta": 8,
                                                          "strips_per_warp": 2} else 9.0)
    tuner(tmp_path, fake, ms=(1,)).run()
    assert [c for o, c, _ in fake.calls if o == "decode_path"] == [DecodeConfig(8, 2).as_dict()]


def test_switch_point_needs_m_1(tmp_path, built):
    report = tuner(tmp_path, ops=("zipgemm",), ms=(16, 64)).run()
    assert not report.switches and "no --m 1" in report.notes[0]


def test_k_not_multiple_of_8_tunes_the_decoder_only(tmp_path, built):
    fake = FakeMeasurer()
    t = search.Tuner(search.Options([("odd", 100, 100)], ms=(1,)), TARGET, TuningDB(tmp_path),
                     measurer=fake)
    t.run()
    assert {op for op, _, _ in fake.calls} == {"decode"}
