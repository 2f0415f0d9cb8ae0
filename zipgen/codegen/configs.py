"""Kernel configurations: frozen, hashable, validated statically per arch, named for CUTLASS-style
self-describing cubins. Every op registers its config class and template in OPS."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from .arch import ArchTraits


class _Config:
    """What every kernel configuration dataclass shares."""

    def as_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        return " ".join(f"{f.name}={getattr(self, f.name)}" for f in fields(self))

    @classmethod
    def from_numbers(cls, numbers):
        """A config from its leading fields in declaration order, as command-line numbers
        (0 / 1 for a bool field); the rest keep their defaults."""
        return cls(*[bool(int(v)) if f.type in (bool, "bool") else int(v)
                     for v, f in zip(numbers, fields(cls))])


@dataclass(frozen=True)
class DecodeConfig(_Config):
    """The standalone decoder: warps per CTA and strips (16x64 weights) each warp decodes."""

    warps_per_cta: int = 4  # 4 x 1 was the fastest of all 16 on an H200 (BENCHMARKS.md)
    strips_per_warp: int = 1

    op = "decode"
    template = "decode.cu.j2"

    def problems(self, arch: ArchTraits) -> list[str]:
        """Why this config cannot run on `arch` (empty when it can)."""
        out = []
        if self.warps_per_cta not in (1, 2, 4, 8, 16):
            out.append(f"warps_per_cta={self.warps_per_cta} is not 1, 2, 4, 8 or 16")
        if self.strips_per_warp not in (1, 2, 4, 8):
            out.append(f"strips_per_warp={self.strips_per_warp} is not 1, 2, 4 or 8")
        if self.smem_bytes > arch.max_smem_static:
            out.append(f"{self.smem_bytes} B of shared memory exceed {arch.name}'s "
                       f"{arch.max_smem_static} B")
        return out

    @property
    def threads(self) -> int:
        return 32 * self.warps_per_cta

    @property
    def smem_bytes(self) -> int:
        return self.warps_per_cta * 16 * 36 * 4  # staging tile per warp (decode_kernel.cuh)

    dynamic_smem = False  # static __shared__ array: nothing to pass at launch

    def kernel_name(self, arch: ArchTraits) -> str:
        return f"zipgen_decode_{arch.short}_w{self.warps_per_cta}_s{self.strips_per_warp}"

    def grid(self, num_strips: int) -> int:
        per_cta = self.warps_per_cta * self.strips_per_warp
        return -(-num_strips // per_cta)


@dataclass(frozen=True)
class ZipGemmConfig(_Config):
    """The fused GEMM: a CTA computes row_groups * row_strips * 16 rows of y for
    token_tiles * 8 tokens; the warps_per_cta / row_groups warps of each row group (row_strips
    strip rows) split its K; each warp keeps `depth` strips of loads in flight."""

    warps_per_cta: int = 8
    token_tiles: int = 1
    depth: int = 2
    row_groups: int = 1
    # activations through shared memory (cp.async, ldmatrix; shared by the row groups of a K
    # slice; with strip_pairs, per warp through the TMA) instead of each lane loading its B
    # fragments: 8x fewer L1 wavefronts once token rows differ (M > 1)
    stage_x: bool = False
    # strip rows (16 rows each) per warp: the warp multiplies both with the activations it
    # read once, halving the B-fragment traffic per weight (ldmatrix, at M > 8) for more
    # registers (zipgemm_kernel.cuh)
    row_strips: int = 1
    # Hopper warpgroup MMA (sm_90a only; wgmma.cuh): the 4 row groups of a K slice are one
    # warpgroup that reads the staged activations once, instead of each warp through ldmatrix
    wgmma: bool = False
    # staged mma.sync path: K strips of activations copied per barrier of the row groups (a
    # larger double buffer, a quarter of the barriers at 4)
    x_strips: int = 1
    # split-K across CTAs (grid z): the k_splits CTAs of an output tile share each row's K
    # strips, write FP32 partial tiles, and the tile's last CTA to finish sums them in split
    # order (deterministic). More CTAs where N / rows leaves SMs idle (the 64-row wgmma tile
    # gives the 8B qkv 96 CTAs for 132 SMs)
    k_splits: int = 1
    # warp specialisation (sm_90a; specialized_kernel.cuh): warps 0-3 only multiply (wgmma,
    # holding the accumulators of 64 rows over all of K), the warps_per_cta - 4 others only
    # decode, into a ring of shared-memory stages. The tensor cores then work during the decode
    # at 64 / 128 tokens, where the other variants wait for each strip's wgmmas. With k_splits,
    # each CTA of a tile takes a contiguous share of K
    specialized: bool = False
    # K strips in pairs (mma.sync; paired_kernel.cuh): a warp's unit is two adjacent K strips
    # of its row, whose fallback records are contiguous, so one entry-word load and one patch
    # pass serve both; offsets, address arithmetic, __syncwarps and loop control are paid once
    # per 128 columns. With stage_x (sm_90) each warp stages its units' activations in a
    # private buffer (TMA boxes, ldmatrix; paired_activations.cuh), with no barrier between
    # warps: the M = 8-32 kernel, where direct loads touch 8 lines each
    strip_pairs: bool = False
    # W is a gate and an up projection stacked ([gate; up]) and the kernel writes
    # silu(x gate^T) * (x up^T) (paired kernel only; paired_kernel.cuh): a Llama-style MLP's
    # activation in the GEMM's epilogue, saving a launch per layer. Not a tuned field: the
    # runtime sets it on the tuned winner (zipgen.runtime.gemm_silu_mul)
    silu_mul: bool = False

    op = "zipgemm"
    template = "zipgemm.cu.j2"

    def problems(self, arch: ArchTraits) -> list[str]:
        out = []
        if self.specialized is True:  # a multiplying warpgroup and 1-4 decoding ones
            if self.warps_per_cta not in (8, 12, 16, 20):
                out.append(f"specialized=True needs 8, 12, 16 or 20 warps (a multiplying "
                           f"warpgroup and 1-4 decoding ones), not {self.warps_per_cta}")
            elif self.warps_per_cta == 20 and self.token_tiles == 16:
                out.append("specialized=True with 20 warps and 128 tokens: 640 threads leave "
                           "96 registers each, and the 64 accumulators of 128 tokens spill")
        elif self.warps_per_cta not in (1, 2, 4, 8, 16):
            out.append(f"warps_per_cta={self.warps_per_cta} is not 1, 2, 4, 8 or 16")
        if self.token_tiles not in (1, 2, 4, 8, 16):
            out.append(f"token_tiles={self.token_tiles} is not 1, 2, 4, 8 or 16")
        elif self.token_tiles == 16 and self.wgmma is not True:
            out.append("token_tiles=16 (128 tokens per CTA) needs wgmma=True: 64 accumulators "
                       "per thread are too many for the mma.sync path")
        if self.depth not in (1, 2, 3, 4):
            out.append(f"depth={self.depth} is not 1, 2, 3 or 4")
        if not isinstance(self.stage_x, bool):
            out.append(f"stage_x={self.stage_x!r} is not a bool")
        if self.row_strips not in (1, 2):
            out.append(f"row_strips={self.row_strips} is not 1 or 2")
        if self.row_groups not in (1, 2, 4) or self.warps_per_cta % self.row_groups:
            out.append(f"row_groups={self.row_groups} is not 1, 2 or 4 dividing warps_per_cta")
        if self.x_strips not in (1, 2, 4):
            out.append(f"x_strips={self.x_strips} is not 1, 2 or 4")
        elif self.x_strips > 1 and not (self.stage_x is True and self.wgmma is False):
            out.append("x_strips > 1 needs stage_x=True and wgmma=False (it groups the staged "
                       "mma.sync path's copies; wgmma stages through the TMA)")
        if self.k_splits not in range(1, 9):
            out.append(f"k_splits={self.k_splits} is not an integer from 1 to 8")
        if not isinstance(self.wgmma, bool):
            out.append(f"wgmma={self.wgmma!r} is not a bool")
        elif self.wgmma:
            if not arch.tma:  # sm_90 / sm_90a: compiled for sm_90a (codegen.compile_arch)
                out.append(f"wgmma=True needs an sm_90 GPU (H100 / H200), not {arch.name}")
            if not (self.stage_x is True and self.row_groups == 4 and self.row_strips == 1):
                out.append("wgmma=True needs stage_x=True, row_groups=4 and row_strips=1 (the 4 "
                           "row groups of a K slice form the warpgroup)")
        if not isinstance(self.specialized, bool):
            out.append(f"specialized={self.specialized!r} is not a bool")
        elif self.specialized:
            if not (self.wgmma is True and self.stage_x is True and self.row_groups == 4
                    and self.row_strips == 1 and self.x_strips == 1):
                out.append("specialized=True needs wgmma=True, stage_x=True, row_groups=4, "
                           "row_strips=1 and x_strips=1 (one multiplying warpgroup of 64 rows)")
        if not isinstance(self.strip_pairs, bool):
            out.append(f"strip_pairs={self.strip_pairs!r} is not a bool")
        elif self.strip_pairs and not (self.wgmma is False and self.specialized is False
                                       and self.row_strips == 1 and self.x_strips == 1
                                       and self.k_splits == 1):
            out.append("strip_pairs=True needs wgmma=False, specialized=False, row_strips=1, "
                       "x_strips=1 and k_splits=1 (the mma.sync path, activations direct or "
                       "staged per warp)")
        elif self.strip_pairs and self.stage_x is True and not arch.tma:
            out.append(f"strip_pairs=True with stage_x=True copies the activations with the "
                       f"TMA: an sm_90 GPU (H100 / H200), not {arch.name}")
        if not isinstance(self.silu_mul, bool):
            out.append(f"silu_mul={self.silu_mul!r} is not a bool")
        elif self.silu_mul and not self.takes_silu_mul:
            out.append("silu_mul=True needs strip_pairs=True and 2 or 4 row groups (half of "
                       "them take gate rows, half the up rows of the same outputs)")
        if not out and self.smem_bytes > arch.max_smem_per_block:
            out.append(f"{self.smem_bytes} B of shared memory exceed {arch.name}'s "
                       f"{arch.max_smem_per_block} B")
        return out

    # extern __shared__: the launch passes smem_bytes, with the opt-in attribute above 48 KB
    dynamic_smem = True

    @property
    def tokens(self) -> int:
        return 8 * self.token_tiles

    @property
    def threads(self) -> int:
        return 32 * self.warps_per_cta

    @property
    def stages(self) -> int:
        """Shared-memory stages of the specialized kernel (SpecializedLayout): two per group of
        4 decoding warps and two more, within 192 KB."""
        return min(2 * ((self.warps_per_cta - 4) // 4) + 2,
                   196608 // (self.token_tiles * 8 * 128 + 4 * 32 * 80 + 16))

    @property
    def smem_bytes(self) -> int:
        if self.specialized:  # SpecializedLayout: activation and A stages, 2 mbarriers each
            x_stage = self.token_tiles * 8 * 128
            a_stage = 4 * 32 * 80
            return 1024 + self.stages * (x_stage + a_stage + 16)
        # per warp (zipgemm_kernel.cuh): 32 lanes x 80 B of staged registers (strip_pairs: two
        # strips' worth, paired_kernel.cuh); then, stage_x,
        # per K slice a double buffer of staged activations (8 rows at a pitch of 144 B per
        # token tile)
        tiles = self.warps_per_cta * 32 * 80 * (2 if self.strip_pairs else 1)
        if self.strip_pairs and self.stage_x:  # a warp's buffer: its tokens x 128 columns
            # (paired_activations.cuh: two strips' TMA boxes; the mbarrier in a tile's padding)
            tiles += self.warps_per_cta * 2 * self.tokens * 128
        elif self.stage_x:
            pitch = 128 if self.wgmma else 144  # wgmma: 128-byte swizzle atoms, 1024-aligned
            tiles += (self.warps_per_cta // self.row_groups * 2 * self.x_strips
                      * self.token_tiles * 8 * pitch + (1024 if self.wgmma else 0))
        # FP32 partial sums per warp and strip row, token-major with 4 words of padding per
        # token (reuses the tiles)
        partials = (self.warps_per_cta * self.row_strips * 16 + 4) * self.tokens * 4
        if self.wgmma:  # then the TMA's two mbarriers per K slice (tma_activations.cuh)
            return max(tiles, partials) + 16 * (self.warps_per_cta // self.row_groups)
        return max(tiles, partials)

    def kernel_name(self, arch: ArchTraits) -> str:
        return (f"zipgemm_{arch.short}_r{self.rows}_t{self.tokens}_w{self.warps_per_cta}"
                f"_d{self.depth}" + ("_sx" if self.stage_x else "")
                + (f"_s{self.row_strips}" if self.row_strips > 1 else "")
                + ("_wg" if self.wgmma else "")
                + (f"_x{self.x_strips}" if self.x_strips > 1 else "")
                + (f"_k{self.k_splits}" if self.k_splits > 1 else "")
                + ("_ws" if self.specialized else "")
                + ("_p2" if self.strip_pairs else "")
                + ("_silu" if self.silu_mul else ""))

    @property
    def takes_x_map(self) -> bool:
        """Whether the kernel reads x through the TMA, taking its tensor map as an argument
        (zipgen.runtime.tma): the wgmma kernels and the paired kernel with staged activations."""
        return self.wgmma is True or (self.strip_pairs is True and self.stage_x is True)

    @property
    def takes_silu_mul(self) -> bool:
        """Whether this kernel can take a gated MLP's SiLU x up in its epilogue (silu_mul): the
        paired kernel with 2 or 4 row groups, half for gate rows and half for up rows. The
        runtime (zipgen.runtime.gated) and bundles (their tuned winners' variants) ask it."""
        return self.strip_pairs is True and self.row_groups in (2, 4)

    @property
    def min_ctas(self) -> int | None:
        """__launch_bounds__' second argument, or None. Paired strips at depth 1 and one token
        tile fit in 64 registers, but ptxas's heuristics gave 64-69 depending on the warp
        count: 66 at 16 warps would leave one CTA per SM instead of two."""
        if self.strip_pairs and self.token_tiles == 1 and self.depth == 1:
            return 1024 // self.threads  # 64 registers
        return None

    @property
    def rows(self) -> int:
        """Rows of y per CTA."""
        return 16 * self.row_groups * self.row_strips

    def grid(self, n: int, m: int) -> tuple[int, int, int]:
        return (-(-n // self.rows), -(-m // self.tokens), self.k_splits)

    def split_k_sizes(self, n: int, m: int) -> tuple[int, int]:
        """(FP32 workspace floats, arrival counters) a split-K launch needs; (0, 0) without
        split-K: a partial tile per CTA, a counter per output tile."""
        if self.k_splits == 1:
            return 0, 0
        tiles_x, tiles_y, splits = self.grid(n, m)
        return tiles_x * tiles_y * splits * self.rows * self.tokens, tiles_x * tiles_y


@dataclass(frozen=True)
class RowsConfig(_Config):
    """The row decoder (an embedding lookup: chosen rows of a matrix straight to BF16): warps
    per CTA; four threads per strip of a row, so 8 warps cover a row of 4096 in one CTA."""

    warps_per_cta: int = 8

    op = "rows"
    template = "rows.cu.j2"
    smem_bytes = 0
    dynamic_smem = False

    def problems(self, arch: ArchTraits) -> list[str]:
        """Why this config cannot run on `arch` (empty when it can)."""
        if self.warps_per_cta not in (1, 2, 4, 8, 16):
            return [f"warps_per_cta={self.warps_per_cta} is not 1, 2, 4, 8 or 16"]
        return []

    @property
    def threads(self) -> int:
        return 32 * self.warps_per_cta

    def kernel_name(self, arch: ArchTraits) -> str:
        return f"zipgen_rows_{arch.short}_w{self.warps_per_cta}"

    def grid(self, rows: int, strips_per_row: int) -> tuple[int, int, int]:
        """x: one per row asked for; y: the CTAs that share a row's strips (4 threads each)."""
        return (rows, -(-4 * strips_per_row // self.threads), 1)


OPS = {"decode": DecodeConfig, "zipgemm": ZipGemmConfig, "rows": RowsConfig}


def default_config(op: str, arch: ArchTraits):
    """The configuration used when nothing was tuned (measured on H100; see BENCHMARKS.md)."""
    return OPS[op]()
