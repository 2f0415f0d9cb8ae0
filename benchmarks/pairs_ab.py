"""ZipGEMM with K strips in pairs (ZipGemmConfig.strip_pairs) against the tuning database's
winners: per layer and M, the winner, its paired twin (where the winner is on the direct
mma.sync path), a small grid of paired configurations, and cuBLAS, timed in one process.

    python benchmarks/pairs_ab.py --db tuning_db [--models 8b,70b] [--ms 1,8]
                                  [--warps 4,8,16] [--row-groups 1,2] [--depths 1,2]
                                  [--stage-x 0,1] [--token-tiles 2] [--json out.json]

--stage-x 1 times the paired kernel with activations staged per warp (stage_x,
paired_activations.cuh), 0 with direct ones (the default), 0,1 both. --token-tiles replaces
the token tiles that cover M (fewer: more CTAs along M, each decoding W again).

Same method as benchmarks/gemm.py (CUDA graphs, weights rotated past L2, medians; every config
is checked against FP32 first). The winners' kernels are unchanged in this tree (the paired
kernel has its own header), so their records' times and these are comparable.
"""
from __future__ import annotations

import dataclasses
import itertools

from zipgen.codegen import ZipGemmConfig, arch_traits

from specialized_ab import variant_parser, variant_table


def paired_grid(m: int, winner, warps, row_groups, depths, stage_x=(False,), token_tiles=None):
    """The winner's paired twin, then warps x row groups x depths x stage_x with the token
    tiles that cover M (up to 16 tokens direct, 32 staged), each valid on the GPU's arch."""
    arch = arch_traits("sm_90")
    seen = []
    twin = dataclasses.replace(winner, strip_pairs=True)
    if not twin.problems(arch):
        seen.append(twin)
    for w, rg, d, sx in itertools.product(warps, row_groups, depths, stage_x):
        # up to 16 tokens per CTA with direct activations, 32 staged
        tiles = token_tiles or next(t for t in (1, 2, 4) if 8 * t >= min(m, 32 if sx else 16))
        cfg = ZipGemmConfig(w, tiles, d, rg, sx, strip_pairs=True)
        if cfg not in seen and not cfg.problems(arch):
            seen.append(cfg)
    return seen


def main():
    ap = variant_parser(__doc__, "1,8")
    ap.add_argument("--warps", default="4,8,16")
    ap.add_argument("--row-groups", default="1,2")
    ap.add_argument("--depths", default="1,2")
    ap.add_argument("--stage-x", default="0")
    ap.add_argument("--token-tiles", type=int)
    args = ap.parse_args()
    warps, row_groups, depths, stage_x = ([int(v) for v in s.split(",")] for s in
                                          (args.warps, args.row_groups, args.depths, args.stage_x))
    stage_x = [bool(v) for v in stage_x]
    variant_table(args, "K strips in pairs against the database's winners "
                  "(benchmarks/pairs_ab.py)", "paired",
                  lambda m, winner: paired_grid(m, winner, warps, row_groups, depths, stage_x,
                                                args.token_tiles))


if __name__ == "__main__":
    main()
