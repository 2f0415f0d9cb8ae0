"""How one Optuna study proposes the configurations of a Space.

Brute force (a space that fits the trial budget): one categorical "config" parameter over the
valid configs, so exactly the filtered space is searched, each once. TPE (a larger space): one
categorical per config field, which TPE models separately, sampled in FIELD_ORDER; a field that
the fields sampled before it determine (wgmma=True: row_groups=4, stage_x, one strip row) is set,
not sampled, so that such combinations are proposed as often as the others. A combination
outside the filtered space is pruned at once with its reasons, before any GPU time is spent, and
does not count against the trial budget, nor does a repeated proposal (Sampling.count): the
budget is distinct configs measured.
"""
from __future__ import annotations

import warnings

import optuna

from ..codegen import OPS
from .space import Space, planned_trials


# The order TPE samples a config's fields in: those that constrain the others first.
FIELD_ORDER = {"zipgemm": ("wgmma", "row_strips", "stage_x", "x_strips", "row_groups",
                           "token_tiles", "warps_per_cta", "depth", "k_splits",
                           "specialized", "strip_pairs"),
               "decode": ("warps_per_cta", "strips_per_warp")}
# Proposals per trial of the budget at most (constraint-pruned ones included), so that a study
# ends even if the sampler keeps proposing configs outside the space.
PROPOSALS_PER_TRIAL = 20


class Sampling:
    def __init__(self, space: Space, trials: int, seed: int):
        self.space = space
        self.valid = set(space.valid)
        self.rejected = dict(space.rejected)
        self.sampler_name, self.n_trials = planned_trials(len(space.valid), trials)
        self.brute = self.sampler_name == "brute-force"
        self.names = {cfg.describe(): cfg for cfg in space.valid}
        self.fields = space.fields
        self._measured: set[str] = set()  # configs counted against the budget (count)
        with warnings.catch_warnings():  # BruteForceSampler is "experimental" since Optuna 3.1
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler = (optuna.samplers.BruteForceSampler(seed=seed) if self.brute
                       else optuna.samplers.TPESampler(seed=seed))
        self.study = optuna.create_study(direction="minimize", sampler=sampler)

    def enqueue(self, cfg) -> bool:
        """Make `cfg` the next trial; False (and nothing queued) if it is outside the space."""
        if cfg not in self.valid:
            return False
        self.study.enqueue_trial({"config": cfg.describe()} if self.brute
                                 else {f: getattr(cfg, f) for f in self.fields})
        return True

    def suggest(self, trial):
        """The trial's config; raises TrialPruned (reason: constraint) outside the space."""
        if self.brute:
            cfg = self.names[trial.suggest_categorical("config", list(self.names))]
        else:
            cfg = OPS[self.space.op](**self._sample_fields(trial))
        trial.set_user_attr("config", cfg.describe())
        if cfg not in self.valid:
            trial.set_user_attr("status", "constraint")
            raise optuna.TrialPruned("constraint: " + "; ".join(self.rejected.get(cfg, ())))
        return cfg

    def _sample_fields(self, trial) -> dict:
        """Each field in FIELD_ORDER: set when the valid configs that agree with the fields
        sampled so far all have the same value, else sampled (always over all its values, as
        TPE needs a fixed set of choices per parameter)."""
        chosen, agreeing = {}, list(self.space.valid)
        for f in FIELD_ORDER[self.space.op]:
            values = {getattr(c, f) for c in agreeing}
            chosen[f] = (values.pop() if len(values) == 1
                         else trial.suggest_categorical(f, self.fields[f]))
            agreeing = [c for c in agreeing if getattr(c, f) == chosen[f]]
        return chosen

    @property
    def proposals(self) -> int:
        """The study's cap on proposals (see PROPOSALS_PER_TRIAL)."""
        return self.n_trials if self.brute else self.n_trials * PROPOSALS_PER_TRIAL

    def count(self, trial) -> int:
        """Count a finished trial; returns how many distinct configs have reached the GPU stage
        (measured, failed or resumed). Neither proposals pruned for being outside the space
        nor repeated ones (answered from the tuner's records) count. Kept as a set, since
        study.trials copies every trial on each call."""
        if "config" in trial.user_attrs and trial.user_attrs.get("status") != "constraint":
            self._measured.add(trial.user_attrs["config"])
        return len(self._measured)
