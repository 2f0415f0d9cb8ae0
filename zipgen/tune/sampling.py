"""How one Optuna study proposes the configurations of a Space.

Brute force (a space that fits the trial budget): one categorical "config" parameter over the
valid configs, so exactly the filtered space is searched, each once. TPE (a larger space): one
categorical per config field, which TPE models separately; a combination outside the filtered
space is pruned at once with its reasons, before any GPU time is spent.
"""
from __future__ import annotations

import warnings

import optuna

from ..codegen import OPS
from .space import Space, planned_trials


class Sampling:
    def __init__(self, space: Space, trials: int, seed: int):
        self.space = space
        self.valid = set(space.valid)
        self.rejected = dict(space.rejected)
        self.sampler_name, self.n_trials = planned_trials(len(space.valid), trials)
        self.brute = self.sampler_name == "brute-force"
        self.names = {cfg.describe(): cfg for cfg in space.valid}
        self.fields = space.fields
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
            cfg = OPS[self.space.op](**{f: trial.suggest_categorical(f, values)
                                        for f, values in self.fields.items()})
        trial.set_user_attr("config", cfg.describe())
        if cfg not in self.valid:
            trial.set_user_attr("status", "constraint")
            raise optuna.TrialPruned("constraint: " + "; ".join(self.rejected.get(cfg, ())))
        return cfg
