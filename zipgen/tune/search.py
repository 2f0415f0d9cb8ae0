"""The tuner. Per shape: the decoder, then the fused GEMM per M bucket, each an Optuna study over
the statically valid configurations (brute force when the space fits the trial budget, seeded
TPE otherwise; the default, the last winner and an earlier kernel's winner enqueued first);
then the fused-vs-decode switch point. Each candidate is compiled here and verified + timed in
a worker process; every outcome becomes a Record in the tuning database, which stays the truth
(studies live in memory).
"""
from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field

import optuna

from ..bundle.verify import current_headers_sha256
from ..codegen import OPS, DecodeConfig, build_kernel, render
from ..codegen.digest import kernel_sha256
from ..errors import CompileError, InputError, ZipgenError
from .buckets import M_BUCKETS
from .db import TuningDB, config_key, ranked, read_records, winners
from .current import is_current, switch_sha256
from .record import SWITCH_OP, Record, environment
from .sampling import Sampling
from .space import enumerate_space, planned_trials


class WrongResultError(ZipgenError):
    """A candidate computed a wrong answer: a bug in the generator, not a slow config."""


@dataclass(frozen=True)
class Target:
    arch: str
    device_name: str
    sm_count: int

    @classmethod
    def current(cls, index: int = 0) -> "Target":
        import torch

        from ..runtime import device_arch
        props = torch.cuda.get_device_properties(index)
        return cls(device_arch(torch.device("cuda", index)), props.name, props.multi_processor_count)


@dataclass
class Options:
    shapes: list  # (label, N, K)
    ms: tuple = M_BUCKETS
    ops: tuple = ("decode", "zipgemm")
    trials: int = 100
    seed: int = 0
    keep_going: bool = False
    start_from: tuple = ()  # database folders whose winners seed the studies (any kernel version)
    # > 0: no search; each study re-times the default, its last winner and the `refresh` fastest
    # configurations of older kernels (this database's stale records and start_from's): a cheap
    # re-tune after a kernel change that left the good configurations good
    refresh: int = 0


@dataclass
class Row:
    """One line of the final table: a study's winner against the default."""
    label: str
    n: int
    k: int
    op: str
    m_bucket: int | None
    winner: Record | None
    default: Record | None


@dataclass
class Report:
    rows: list = field(default_factory=list)
    switches: list = field(default_factory=list)  # switch Records written or kept
    counts: Counter = field(default_factory=Counter)  # measured / resumed / each failure status
    notes: list = field(default_factory=list)


def source_sha256(op: str, arch: str, cfg) -> str:
    """The rendered kernel's hash (cheap: no compile); raises InputError for an invalid config."""
    return hashlib.sha256(render(op, arch, cfg).source.encode()).hexdigest()


def build_candidate(op: str, arch: str, cfg) -> None:
    """Compile in the parent (through the cubin cache, which the worker then hits); raises
    CompileError."""
    build_kernel(op, arch, cfg)


def default_config(op: str, n: int, k: int, m_bucket: int | None):
    from ..runtime.gemm import fused_config
    return fused_config(m_bucket, n, k) if op == "zipgemm" else DecodeConfig()


def _config(op: str, config: dict):
    """A stored config as a config object (None when its fields no longer exist)."""
    try:
        return OPS[op](**config)
    except TypeError:
        return None


class Tuner:
    def __init__(self, options: Options, target: Target, db: TuningDB, measurer=None,
                 progress=None):
        self.o, self.target, self.db = options, target, db
        self._measurer = measurer  # None: a worker.Worker, started at the first measurement
        self.progress = progress  # a tqdm-like bar (update, set_postfix_str) or None
        self.headers = current_headers_sha256()  # the kernel bodies live in headers
        # this target's records of today's kernels: older kernels' timings rank nothing now
        def on_target(records):
            return [r for r in records
                    if (r.arch, r.device_name) == (target.arch, target.device_name)]
        here = on_target(db.read())
        self.records = [r for r in here if is_current(r, self.headers)]
        # Winners of other kernel versions (this database's older records, all of --start-from's)
        # rank nothing, since they timed other code; but after a header change they are the best
        # first guesses, so each study tries them right after the default and the last winner.
        older = ([r for r in here if not is_current(r, self.headers)]
                 + on_target(read_records(options.start_from)))
        self.ranked_hints = ranked(older)  # and their runners-up, for Options.refresh
        self.hints = {key: fastest[0] for key, fastest in self.ranked_hints.items()}
        self.done = {self._identity(r.op, r.n, r.k, r.m_bucket, r.config, r.env): r
                     for r in self.records}
        self.report = Report()
        self.studies: list = []  # (op, label, bucket, optuna study), to inspect the trials
        self._measured_shapes: set = set()

    # -- one candidate ------------------------------------------------------------------------
    def _identity(self, op, n, k, bucket, config, env) -> tuple:
        """Resume key: the same config of the same kernel is not measured twice."""
        return (op, n, k, bucket, config_key(config), env.get("kernel_sha256"))

    def measurer(self):
        if self._measurer is None:
            from .worker import Worker
            self._measurer = Worker()
        return self._measurer

    def _record(self, op, n, k, m, cfg, sha, result: dict, kernel: str | None = None) -> Record:
        times = {t: result.get(t) for t in ("median_us", "p10_us", "p90_us")}
        return Record(op=op, n=n, k=k, m=m, arch=self.target.arch,
                      device_name=self.target.device_name, sm_count=self.target.sm_count,
                      config=cfg.as_dict(), status=result["status"],
                      error=(result.get("error") or "")[:2000] or None,  # NVRTC logs run long
                      env=environment(sha, self.headers, kernel),
                      **(times if result["status"] == "ok" else {}))

    def evaluate(self, op: str, n: int, k: int, m: int | None, cfg) -> Record:
        """The record of one candidate: from the database when this exact source was measured
        on this device before, else built, verified and timed now (and appended)."""
        bucket = m if op == "zipgemm" else None
        try:
            sha = source_sha256(op, self.target.arch, cfg)
            kernel = kernel_sha256(op, self.target.arch, cfg)
        except InputError as exc:  # cannot happen for a config of the filtered space
            self.report.counts["constraint"] += 1
            return self._keep(self._record(op, n, k, m, cfg, None,
                                           {"status": "constraint", "error": str(exc)}), None)
        ident = self._identity(op, n, k, bucket, cfg.as_dict(), {"kernel_sha256": kernel})
        if ident in self.done:
            self.report.counts["resumed"] += 1
            return self.done[ident]
        try:
            build_candidate(op, self.target.arch, cfg)
            result = self.measurer().measure((n, k, self.o.seed),
                                             {"op": op, "config": cfg.as_dict(), "m": m})
        except CompileError as exc:
            result = {"status": "compile", "error": str(exc)}
        record = self._keep(self._record(op, n, k, m, cfg, sha, result, kernel), ident)
        self._measured_shapes.add((n, k))
        self.report.counts["measured" if record.status == "ok" else record.status] += 1
        if record.status == "correctness" and not self.o.keep_going:
            raise WrongResultError(
                f"{op} {cfg.describe()} on {self.target.arch} computed a wrong result for "
                f"{n}x{k} (M={m}): {record.error}. This is a generator bug; it is recorded in "
                f"{self.db.folder}. Rerun with --keep-going to tune around it.")
        return record

    def _keep(self, record: Record, ident) -> Record:
        self.db.append(record)
        self.records.append(record)
        if ident is not None:
            self.done[ident] = record
        return record

    # -- one study ----------------------------------------------------------------------------
    def study(self, op: str, label: str, n: int, k: int, bucket: int | None) -> Row:
        """One Optuna study: the default first, then the last winner, an earlier kernel's winner
        (self.hints), then the sampler's picks. With Options.refresh, those first ones and the
        older kernels' next fastest, and no search."""
        if self.o.refresh:
            return self._refresh(op, label, n, k, bucket)
        sampling = Sampling(enumerate_space(op, self.target.arch, bucket), self.o.trials,
                            self.o.seed)
        self.studies.append((op, label, bucket, sampling.study))

        def objective(trial):
            record = self.evaluate(op, n, k, bucket, sampling.suggest(trial))
            if record.status != "ok":  # a pruned trial with its reason, never a NaN value
                trial.set_user_attr("status", record.status)
                raise optuna.TrialPruned(f"{record.status}: {record.error}")
            return record.median_us

        key = (op, self.target.arch, self.target.device_name, n, k, bucket)
        default = default_config(op, n, k, bucket)
        first = [default] + [_config(op, r.config) for r in (winners(self.records).get(key),
                                                              self.hints.get(key)) if r]
        for cfg in dict.fromkeys(c for c in first if c is not None):
            if not sampling.enqueue(cfg) and cfg == default:
                self.evaluate(op, n, k, bucket, default)  # the table compares against it
        if self.progress is not None:
            self.progress.set_postfix_str(f"{label} {op}" + (f" M={bucket}" if bucket else ""))
        counted = 0  # distinct configs measured so far: the budget and the progress bar

        def after_trial(study, trial):
            nonlocal counted
            now = sampling.count(trial)  # proposals outside the space and repeats don't count
            if self.progress is not None and now > counted:
                self.progress.update(now - counted)
            counted = now
            if now >= sampling.n_trials:
                study.stop()

        sampling.study.optimize(objective, n_trials=sampling.proposals, callbacks=[after_trial])
        return self._row(op, label, n, k, bucket)

    def _row(self, op: str, label: str, n: int, k: int, bucket: int | None) -> Row:
        """A finished study's line: its winner and its default's record."""
        key = (op, self.target.arch, self.target.device_name, n, k, bucket)
        default = default_config(op, n, k, bucket).as_dict()
        mine = [r for r in self.records if r.key == key]
        default_record = next((r for r in reversed(mine) if r.config == default), None)
        return Row(label, n, k, op, bucket, winners(mine).get(key), default_record)

    def _refresh_candidates(self, op: str, n: int, k: int, bucket: int | None) -> list:
        """The default, the last winner, then the `refresh` fastest distinct configurations of
        older kernels that are still in the space."""
        key = (op, self.target.arch, self.target.device_name, n, k, bucket)
        valid = set(enumerate_space(op, self.target.arch, bucket).valid)
        last = winners(self.records).get(key)
        older = [c for c in (_config(op, r.config) for r in self.ranked_hints.get(key, ()))
                 if c in valid][:self.o.refresh]
        first = [default_config(op, n, k, bucket)] + ([_config(op, last.config)] if last else [])
        return list(dict.fromkeys(c for c in first + older if c is not None))

    def _refresh(self, op: str, label: str, n: int, k: int, bucket: int | None) -> Row:
        for cfg in self._refresh_candidates(op, n, k, bucket):
            self.evaluate(op, n, k, bucket, cfg)
            if self.progress is not None:
                self.progress.update(1)
        return self._row(op, label, n, k, bucket)

    # -- the switch point ---------------------------------------------------------------------
    def switch(self, label: str, n: int, k: int, fused: dict) -> Record | None:
        """Time decode + cuBLAS at each bucket against the best fused time there, and store the
        largest M where the fused kernel won (0: it never did) as a `switch` record."""
        key = (SWITCH_OP, self.target.arch, self.target.device_name, n, k, None)
        old = winners(self.records).get(key)
        if (old is not None and (n, k) not in self._measured_shapes
                and set(fused) <= set((old.detail or {}).get("buckets", ()))):
            self.report.counts["resumed"] += 1
            if self.progress is not None:
                self.progress.update(len(fused))
            return old  # nothing new measured for this shape since it was decided
        decoder = winners(self.records).get(("decode",) + key[1:])
        dcfg = (decoder and _config("decode", decoder.config)) or DecodeConfig()
        fused_us, decode_us = [], []
        for bucket in sorted(fused):
            result = self.measurer().measure((n, k, self.o.seed), {"op": "decode_path",
                                             "config": dcfg.as_dict(), "m": bucket})
            if self.progress is not None:
                self.progress.update(1)
            if result["status"] != "ok":
                self.report.notes.append(f"{label}: switch point not tuned; decode + cuBLAS at "
                                         f"M={bucket} failed: {result.get('error')}")
                return None
            fused_us.append(fused[bucket].median_us)
            decode_us.append(result["median_us"])
        won = [b for b, f, d in zip(sorted(fused), fused_us, decode_us) if f < d]
        fused_configs = [fused[b].config for b in sorted(fused)]
        record = Record(op=SWITCH_OP, n=n, k=k, m=None, arch=self.target.arch,
                        device_name=self.target.device_name, sm_count=self.target.sm_count,
                        config={"fused_max_m": max(won, default=0)}, status="ok",
                        env=environment(None, self.headers,
                                        switch_sha256(self.target.arch, dcfg.as_dict(),
                                                      fused_configs)),
                        detail={"buckets": sorted(fused), "fused_us": fused_us,
                                "decode_us": decode_us, "decode_config": dcfg.as_dict(),
                                "fused_configs": fused_configs})
        return self._keep(record, None)

    # -- the run ------------------------------------------------------------------------------
    def plan(self) -> list[tuple]:
        """(op, label, n, k, bucket, sampler, trials) of every study, in run order."""
        out = []
        for label, n, k in self.o.shapes:
            if "decode" in self.o.ops:
                out.append(("decode", label, n, k, None))
            if "zipgemm" in self.o.ops and k % 8 == 0:  # the fused kernel needs K % 8 == 0
                out += [("zipgemm", label, n, k, m) for m in self.o.ms]
        if self.o.refresh:
            return [s + ("refresh", len(self._refresh_candidates(s[0], s[2], s[3], s[4])))
                    for s in out]
        return [s + planned_trials(len(enumerate_space(s[0], self.target.arch, s[4]).valid),
                                   self.o.trials) for s in out]

    def run(self) -> Report:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        plan = self.plan()
        try:
            for label, n, k in self.o.shapes:
                fused = {}
                for op, *_, bucket, _, _ in (s for s in plan if s[1:4] == (label, n, k)):
                    row = self.study(op, label, n, k, bucket)
                    self.report.rows.append(row)
                    if op == "zipgemm" and row.winner is not None:
                        fused[bucket] = row.winner
                if "zipgemm" not in self.o.ops or k % 8:
                    continue
                # the switch point weighs every bucket of today's kernels, not only those tuned
                # now: a run over --m 1,8 alone must not forget that the fused kernel also won
                # at 16-128 (it did, and sent those Ms to decode + cuBLAS, 2x slower)
                for key, record in winners(self.records, "zipgemm").items():
                    if key[1:5] == (self.target.arch, self.target.device_name, n, k):
                        fused.setdefault(key[5], record)
                if 1 not in fused:  # below the smallest tuned bucket nothing is known
                    why = "no --m 1" if 1 not in self.o.ms else "no fused config ran at M=1"
                    self.report.notes.append(f"{label}: switch point not tuned ({why}; it needs "
                                             f"a fused winner at M=1)")
                elif (record := self.switch(label, n, k, fused)) is not None:
                    self.report.switches.append((label, record))
        finally:
            if self._measurer is not None and hasattr(self._measurer, "close"):
                self._measurer.close()
        return self.report
