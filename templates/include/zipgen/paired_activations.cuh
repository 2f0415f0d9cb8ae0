// The paired kernel's activations through shared memory (ZipGemmConfig.strip_pairs with
// stage_x; paired_kernel.cuh; sm_90: the TMA).
//
// With 8 different token rows every direct B-fragment load touches 8 lines (8x the L1 wavefronts
// of M = 1), and the paired kernel issues its 16 per token tile and unit just before the
// multiplies. Here each warp has its own buffer of one unit's activations: lane 0 asks the TMA
// for the unit's two strips (boxes of the CTA's tokens x 64 columns of x, as on the wgmma path:
// tma_activations.cuh), one unit ahead, completing on the warp's mbarrier, and the warp reads
// the B fragments with ldmatrix. Two copy instructions per unit instead of 16 loads per token
// tile; no barrier with other warps (the row groups sharing the columns copy them again, from
// L2), so warps keep the paired kernel's independence. The boxes come in the 128-byte swizzle
// layout (chunk c of row r at c ^ (r & 7)): the 8 rows of one ldmatrix phase fall into 8
// different 4-bank groups with no padding, so 16-warp CTAs still fit twice per SM. Rows past M
// and columns past K arrive as zeros.
#pragma once
#include <zipgen/tma_activations.cuh>
#include <zipgen/zipgemm_kernel.cuh>

namespace zipgen {

template <int kTokenTiles>
struct PairActivations {
  enum : int {
    kBoxBytes = kTokenTiles * 8 * 128,  // one strip's box: the tokens x 64 columns
    kBytes = 2 * kBoxBytes,             // a warp's buffer (1024-aligned: swizzle atoms)
  };

  const void* map;  // the tensor map of x
  unsigned bar;     // the warp's mbarrier (in the padding of its first decode tile)
  unsigned read;    // this lane's ldmatrix row address for k-steps 0-1 of a unit's first strip
  int row0;         // the CTA's first token

  // buffer: the warp's buffer (shared-window address, 1024-aligned); mbarrier: 8 free bytes
  __device__ PairActivations(const GemmArgs& a, unsigned buffer, unsigned mbarrier, int tok0,
                             int lane)
      : map(a.x_map), bar(mbarrier), row0(tok0) {
    // ldmatrix.x4 lane l: row l & 7 of matrix l >> 3, i.e. chunk 4 tp + (l >> 3) of k-steps
    // 2 tp and 2 tp + 1 (their b0, b1), swizzled: (4 tp + c) ^ r = 4 tp ^ (c ^ r)
    const unsigned r = lane & 7;
    read = buffer + 128 * r + 16 * ((lane >> 3) ^ r);
    if (lane == 0) {
      mbarrier_init(bar, 1);
      fence_mbarrier_init();
    }
    __syncwarp();
  }

  __device__ __forceinline__ void pin_registers() {
    pin(read);
    pin(bar);
  }

  // Ask for the unit at `column` (its first strip's; both wholly inside K or zero-filled past
  // it). Every lane's reads of the previous unit must be done (a __syncwarp before).
  __device__ __forceinline__ void copy(unsigned column, int lane) const {
    if (lane == 0) {
      const unsigned buffer = read & ~1023u;  // lane 0: row 0, chunk 0
      mbarrier_arrive_expect_tx(bar, kBytes);  // the whole boxes count, zero-fill included
      tma_load_2d(buffer, map, static_cast<int>(column), row0, bar);
      tma_load_2d(buffer + kBoxBytes, map, static_cast<int>(column) + kStripCols, row0, bar);
    }
  }

  // Invalidate the mbarrier before its memory serves as anything else (every copy waited for).
  __device__ __forceinline__ void release(int lane) const {
    __syncwarp();
    if (lane == 0) asm volatile("mbarrier.inval.shared::cta.b64 [%0];\n" ::"r"(bar) : "memory");
  }

  // The copy of unit i (the warp's i-th) has landed.
  __device__ __forceinline__ void wait(int i) const { mbarrier_wait_parity(bar, i & 1); }

  // b0, b1 of k-steps 2 tp and 2 tp + 1 of strip h of the unit, token tile nt:
  // r[0], r[1] (step 2 tp) and r[2], r[3] (step 2 tp + 1).
  __device__ __forceinline__ void fragments(unsigned (&r)[4], int h, int tp, int nt) const {
    ldmatrix_x4_shared(r, (read ^ (64u * tp)) + kBoxBytes * h + 1024 * nt);
  }
};

}  // namespace zipgen
