"""The candidate configurations per (op, arch, M bucket), statically filtered before the search so
the searcher never proposes one that cannot run; each rejected one keeps its reasons."""
from __future__ import annotations

import itertools
from dataclasses import dataclass

from ..codegen import OPS, arch_traits

# The values the tuner tries per config field (a subset of what the configs accept: one-warp
# fused CTAs never won a sweep, BENCHMARKS.md).
VALUES: dict[str, dict[str, tuple]] = {
    # The specialized kernel also takes 12 and 20 warps, but as values of their own the other
    # kernels would waste a quarter of the TPE proposals on them (pruned, but proposed);
    # benchmarks/split_sweep.py --specialized 12,16,20 measures them into a database.
    "zipgemm": {"warps_per_cta": (2, 4, 8, 16), "token_tiles": (1, 2, 4, 8, 16),
                "depth": (1, 2, 3, 4), "row_groups": (1, 2, 4), "stage_x": (False, True),
                "row_strips": (1, 2), "wgmma": (False, True), "x_strips": (1, 2, 4),
                # k_splits 5-8 are valid kernels but lost every one of 360 trials on the layers
                # with the fewest tiles (benchmarks/results/split-k-5-8-s12-h200-2026-11-28.md)
                "k_splits": (1, 2, 3, 4), "specialized": (False, True),
                "strip_pairs": (False, True)},
    "decode": {"warps_per_cta": (1, 2, 4, 8, 16), "strips_per_warp": (1, 2, 4, 8)},
}


# Split-K below this M bucket was slower in every cell measured (M = 1 / 8, the small layers
# included: benchmarks/results/split-k-small-m-h200-2026-11-28.md), so it is not searched.
SPLIT_K_MIN_M = 16


def _split_k_reasons(cfg, m_bucket: int | None) -> list[str]:
    """Where split-K is not searched: on the mma.sync path (no faster at M = 16 / 32, whose
    winners' grids already kept the SMs busy) and at M = 1 / 8 (slower everywhere)."""
    out = []
    if cfg.wgmma is not True:
        out.append(f"k_splits={cfg.k_splits} without wgmma: split-K on the mma.sync path was "
                   f"no faster at M = 16 / 32 (branch next/split-k, BENCHMARKS.md)")
    if m_bucket and m_bucket < SPLIT_K_MIN_M:
        out.append(f"k_splits={cfg.k_splits} for M bucket {m_bucket}: split-K was slower in "
                   f"all 16 cells measured at M = 1 / 8")
    return out


# Paired strips with direct activations won 8 of the 9 M = 1 studies of the fifteenth session's
# sweep and none of the 8 at M = 8, where their direct loads touch 8 lines each
# (benchmarks/results/strip-pairs-sweep-s15-h200-2026-11-28.md). With the activations staged per
# warp through the TMA (stage_x, eighteenth session) they beat 15 of the 16 M = 8 / 16 winners of
# the benchmark layers and 2 of 8 at M = 32, and lose to the direct ones at M = 1 by 5-19 % (the
# staging's cost where there is one token row: benchmarks/results/pairs-staged-ab-s18-*).
STRIP_PAIRS_MAX_M = 1  # direct activations
STAGED_PAIRS_MAX_TOKENS = 32  # staged: up to 4 token tiles (86 registers at 4)


def _strip_pairs_reasons(cfg, m_bucket: int | None) -> list[str]:
    if cfg.strip_pairs is not True:
        return []
    if cfg.stage_x is True:
        if m_bucket == 1:
            return ["strip_pairs=True with stage_x=True for M bucket 1: the direct paired kernel "
                    "was 5-19 % faster at M = 1 on every benchmark layer"]
        if cfg.tokens > STAGED_PAIRS_MAX_TOKENS:
            return [f"strip_pairs=True with stage_x=True and {cfg.tokens} tokens per CTA: "
                    f"measured up to {STAGED_PAIRS_MAX_TOKENS}"]
        return []
    if m_bucket and m_bucket > STRIP_PAIRS_MAX_M:
        return [f"strip_pairs=True for M bucket {m_bucket}: the paired kernel with direct "
                f"activations lost all 8 studies measured at M = 8"]
    return []


def token_tiles_for(m_bucket: int) -> tuple[int, ...]:
    """Token tiles (8 tokens each) worth trying for M tokens: the two smallest that cover M in
    one CTA along M (more tokens per CTA than that only compute padding); past 64 tokens the
    largest of each path: 8 (mma.sync) and 16 (wgmma only)."""
    if m_bucket > 64:
        return (8, 16)
    return tuple([t for t in VALUES["zipgemm"]["token_tiles"] if 8 * t >= m_bucket][:2])


def _tiles_reason(tiles: int, useful: tuple[int, ...], m_bucket: int) -> str:
    why = ("more CTAs along M, each decoding W again" if tiles < min(useful)
           else "mostly padding")
    return (f"token_tiles={tiles} ({8 * tiles} tokens per CTA) for M bucket {m_bucket}: {why} "
            f"(tried: token_tiles {', '.join(map(str, useful))})")


@dataclass(frozen=True)
class Space:
    op: str
    arch: str
    m_bucket: int | None
    valid: tuple  # configs, in enumeration order
    rejected: tuple  # (config, (reason, ...))

    @property
    def fields(self) -> dict[str, tuple]:
        """Per field, the values that occur among the valid configs (for the TPE sampler)."""
        names = VALUES[self.op]
        return {f: tuple(v for v in names[f] if any(getattr(c, f) == v for c in self.valid))
                for f in names}


def planned_trials(space_size: int, trials: int) -> tuple[str, int]:
    """(sampler, trials): brute force over a space that fits the budget, else TPE."""
    return ("brute-force", space_size) if space_size <= trials else ("tpe", trials)


def enumerate_space(op: str, arch: str, m_bucket: int | None = None) -> Space:
    """Every candidate of VALUES[op] for `arch`, split into valid and rejected (with reasons).
    For zipgemm, `m_bucket` also limits the token tiles (token_tiles_for)."""
    traits = arch_traits(arch)
    values = VALUES[op]
    useful_tiles = token_tiles_for(m_bucket) if op == "zipgemm" and m_bucket else None
    valid, rejected = [], []
    for combo in itertools.product(*values.values()):
        cfg = OPS[op](**dict(zip(values, combo)))
        reasons = list(cfg.problems(traits))
        if useful_tiles and cfg.token_tiles not in useful_tiles:
            reasons.append(_tiles_reason(cfg.token_tiles, useful_tiles, m_bucket))
        if op == "zipgemm" and cfg.k_splits > 1:
            reasons += _split_k_reasons(cfg, m_bucket)
        if op == "zipgemm":
            reasons += _strip_pairs_reasons(cfg, m_bucket)
        if reasons:
            rejected.append((cfg, tuple(reasons)))
        else:
            valid.append(cfg)
    return Space(op, arch, m_bucket, tuple(valid), tuple(rejected))
