"""zipgen.tune.space and buckets: candidates enumerated, statically filtered, every rejection
explained (CPU only)."""
from __future__ import annotations

import itertools
import math

import pytest

from zipgen.codegen import ARCHES, DecodeConfig, ZipGemmConfig
from zipgen.runtime.gemm import fused_config
from zipgen.tune import M_BUCKETS, enumerate_space, m_bucket
from zipgen.tune.space import VALUES, token_tiles_for


@pytest.mark.parametrize("m,bucket", [(1, 1), (2, 8), (8, 8), (9, 16), (17, 32), (118, 128),
                                      (256, 256), (257, 256), (100000, 256)])
def test_m_bucket(m, bucket):
    assert m_bucket(m) == bucket


def test_m_bucket_rejects_zero():
    with pytest.raises(ValueError):
        m_bucket(0)


@pytest.mark.parametrize("arch", list(ARCHES))
@pytest.mark.parametrize("op,bucket", [("decode", None)] + [("zipgemm", b) for b in M_BUCKETS])
def test_kept_configs_are_valid_and_rejected_ones_say_why(arch, op, bucket):
    space = enumerate_space(op, arch, bucket)
    assert space.valid, "an empty space cannot be searched"
    assert len(space.valid) + len(space.rejected) == math.prod(map(len, VALUES[op].values()))
    for cfg in space.valid:
        assert cfg.problems(ARCHES[arch]) == []
    for cfg, reasons in space.rejected:
        assert reasons and all(isinstance(r, str) and r for r in reasons)
    if op == "zipgemm":
        tiles = {c.token_tiles for c in space.valid}
        # 16 token tiles are for wgmma configurations (sm_90) only
        assert tiles == set(token_tiles_for(bucket)) - ({16} if arch not in ("sm_90", "sm_90a") else set())
        assert all(8 * t >= bucket for t in tiles) or tiles <= {8, 16}


def test_token_tiles_per_bucket():
    assert [token_tiles_for(b) for b in M_BUCKETS] == [(1, 2), (1, 2), (2, 4), (4, 8), (8, 16),
                                                       (8, 16), (8, 16)]
    assert all(c.wgmma for c in enumerate_space("zipgemm", "sm_90", 128).valid if c.token_tiles == 16)


def test_rejection_reasons_name_the_cause():
    space = enumerate_space("zipgemm", "sm_80", 1)
    reasons = {cfg: r for cfg, r in space.rejected}
    too_big = next(c for c in reasons if c.token_tiles == 4)
    assert any("mostly padding" in r and "M bucket 1" in r for r in reasons[too_big])
    smem = next(c for c in reasons if c.warps_per_cta == 16 and c.token_tiles == 8
                and c.stage_x and c.depth == 4)  # 198 KB
    assert any("shared memory" in r for r in reasons[smem])
    odd = next(c for c in reasons if c.warps_per_cta == 2 and c.row_groups == 4)
    assert any("row_groups" in r for r in reasons[odd])
    few = enumerate_space("zipgemm", "sm_80", 128).rejected
    assert any("decoding W again" in r for c, rs in few if c.token_tiles == 1 for r in rs)


def test_split_k_is_searched_on_the_wgmma_path_from_m_16():
    for bucket in (16, 32, 64, 128, 256):
        valid = enumerate_space("zipgemm", "sm_90", bucket).valid
        assert {c.k_splits for c in valid if c.wgmma} == {1, 2, 3, 4}
        assert {c.k_splits for c in valid if not c.wgmma} == {1}
    for arch, bucket in (("sm_90", 1), ("sm_90", 8), ("sm_80", 32)):
        space = enumerate_space("zipgemm", arch, bucket)
        assert {c.k_splits for c in space.valid} == {1}
    reasons = {c: r for c, r in enumerate_space("zipgemm", "sm_90", 8).rejected if c.k_splits > 1}
    assert any("M bucket 8" in r and "slower" in r for rs in reasons.values() for r in rs)
    assert any("without wgmma" in r for rs in reasons.values() for r in rs)


def test_defaults_are_in_their_space():
    """The tuner enqueues the default first: it must be searchable."""
    for arch, bucket in itertools.product(ARCHES, M_BUCKETS):
        valid = set(enumerate_space("zipgemm", arch, bucket).valid)  # ~1 s each: once per bucket
        for n, k in [(4096, 4096), (28672, 4096), (4096, 14336)]:
            assert fused_config(bucket, n, k) in valid
        assert DecodeConfig() in enumerate_space("decode", arch).valid


def test_fields_are_the_values_of_valid_configs():
    space = enumerate_space("zipgemm", "sm_80", 128)
    assert space.fields["token_tiles"] == (8,)
    assert space.fields["stage_x"] == (False, True)
    # 16 warps with 8 staged token tiles (16 K slices x 2 x 8 x 1152 B) overflow sm_80's shared memory
    assert ZipGemmConfig(16, 8, 4, 1, True) not in space.valid


def test_strip_pairs_are_searched_direct_at_m_1_and_staged_from_m_8_to_32():
    """Paired strips with direct activations won at M = 1 and lost every study at M = 8; with
    staged activations (sm_90, the TMA) they won at M = 8 / 16 and lost at M = 1."""
    valid = enumerate_space("zipgemm", "sm_90", 1).valid
    assert any(c.strip_pairs for c in valid) and any(not c.strip_pairs for c in valid)
    assert all(not c.stage_x for c in valid if c.strip_pairs)
    for m in (8, 16, 32):
        space = enumerate_space("zipgemm", "sm_90", m)
        paired = [c for c in space.valid if c.strip_pairs]
        assert paired and all(c.stage_x and c.tokens <= 32 for c in paired)
        assert any("lost all 8 studies" in " ".join(r) for c, r in space.rejected
                   if c.strip_pairs and not c.stage_x)
    assert not any(c.strip_pairs for c in enumerate_space("zipgemm", "sm_90", 64).valid)
    # the staged variant copies through the TMA: not on sm_80 / sm_86 / sm_89
    assert not any(c.strip_pairs for c in enumerate_space("zipgemm", "sm_80", 8).valid)