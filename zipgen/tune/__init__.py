"""Autotuning: candidate spaces, the tuning database and the runtime's lookup of its winners.

Light on purpose (the runtime imports zipgen.tune.dispatch on its hot path's first call); the
tuner itself (search, worker, timing) needs optuna and a GPU and is imported explicitly.
"""
from .buckets import M_BUCKETS, m_bucket
from .db import TuningDB, TuningDBWarning, read_folders, read_records, winners, write_folder
from .dispatch import lookup, reload, switch_lookup
from .record import SCHEMA_VERSION, STATUSES, Record
from .space import Space, enumerate_space

__all__ = ["M_BUCKETS", "SCHEMA_VERSION", "STATUSES", "Record", "Space", "TuningDB",
           "TuningDBWarning", "enumerate_space", "lookup", "m_bucket", "read_folders",
           "read_records", "reload", "switch_lookup", "winners", "write_folder"]
