// ZipGEMM: y[M, N] = x[M, K] @ W[N, K]^T (+ bias) with W in TCA-TBE, decoded on the fly.
//
// One CTA computes kRowGroups * 16 output rows for kTokenTiles * 8 tokens. Each row group of 16
// rows (one strip row of W) gets kWarps / kRowGroups warps that split its K: the warp of K slice
// s takes the strips s, s + kWarps / kRowGroups, ... of the row. Per strip a warp
//   1. has the strip's compressed words in registers already (a kDepth-deep ring of loads),
//   2. decodes two weights per 32-bit operation into its shared-memory tile,
//   3. patches the strip's few fallback weights (exponents prefetched into a 128-byte stash),
//   4. reads the tile back as mma A fragments (ldmatrix) and multiplies them with every token
//      tile: the strip is decoded once, whatever the number of tokens.
// The warps' FP32 partial sums are added in a fixed order at the end (deterministic), so the
// result is the same on every run.
#pragma once
#include <zipgen/mma.cuh>
#include <zipgen/tcatbe.cuh>

namespace zipgen {

constexpr int kStashWords = 32;  // 128 bytes of fallback exponents per warp and strip

struct GemmArgs {
  const uint4* sign_mantissa;
  const unsigned* planes;
  const unsigned char* fallback_exponents;
  const int* fallback_offsets;
  const unsigned short* x;     // [M, K] BF16 bits, row-major
  const unsigned short* bias;  // [N] BF16 bits or nullptr
  unsigned short* y;           // [M, N] BF16 bits, row-major
  int m, n, k;
  int strips_per_row_group;
  int fallback_bytes;  // size of the (padded) fallback stream
  int base;
};

// The 4 bytes of the fallback stream this lane stashes for a strip whose fallbacks start at
// `offset`: lane l covers bytes (offset & ~3) + 4l .. + 3.
__device__ __forceinline__ unsigned load_stash_word(const GemmArgs& a, int offset, int lane) {
  const int at = (offset & ~3) + 4 * lane;
  return at + 4 <= a.fallback_bytes
             ? __ldg(reinterpret_cast<const unsigned*>(a.fallback_exponents + at)) : 0u;
}

// Halfword offset of a lane's element at plane bit b inside the staging tile, relative to the
// lane's element (row g, column 2q): register r = b & 15 sits 8 rows lower when r is odd,
// 16 (r >> 2) + 8 ((r >> 1) & 1) = 4 (r & 14) columns right, and its high half one further.
__device__ __forceinline__ int tile_offset_of_bit(unsigned b) {
  return (b & 1u) * (8 * 2 * kStagePitch) + (b & 14u) * 4 + (b >> 4);
}

// Give this lane's fallback elements their exponents. The strip's exponents follow in the
// stream lane by lane and, inside a lane, in plane-bit order; `stash` holds the 128 bytes from
// (offset & ~3). When the strip has more fallbacks than the stash covers (never for trained
// weights, whose strips hold ~35), the rest come from global memory.
__device__ __forceinline__ void patch_fallbacks(unsigned short* lane_tile, unsigned fallbacks,
                                                const unsigned char* stash, int offset,
                                                int below, int total,
                                                const unsigned char* __restrict__ stream) {
  const int skip = offset & 3;
  if (skip + total <= 4 * kStashWords) {  // warp-uniform
    const unsigned char* e = stash + skip + below;
    for (unsigned m = fallbacks; m; m &= m - 1, ++e) {
      unsigned short* slot = lane_tile + tile_offset_of_bit(__ffs(m) - 1);
      *slot = static_cast<unsigned short>((*slot & 0x807Fu) | (unsigned(*e) << 7));
    }
  } else {
    int i = skip + below;
    for (unsigned m = fallbacks; m; m &= m - 1, ++i) {
      const unsigned e = i < 4 * kStashWords ? stash[i] : __ldg(stream + (offset & ~3) + i);
      unsigned short* slot = lane_tile + tile_offset_of_bit(__ffs(m) - 1);
      *slot = static_cast<unsigned short>((*slot & 0x807Fu) | (e << 7));
    }
  }
}

template <int kWarps, int kRowGroups, int kTokenTiles, int kDepth>
__device__ __forceinline__ void zipgemm_rows(const GemmArgs& a, unsigned char* smem) {
  constexpr int kTokens = kTokenTiles * 8;
  constexpr int kWarpsK = kWarps / kRowGroups;  // warps sharing one row group split its K
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int g = lane >> 2, q = lane & 3;
  // Warp w works on row group w % kRowGroups of the CTA and on its K slice w / kRowGroups;
  // warps of one K slice read the same activations at about the same time (L1 hits).
  const int row_group = blockIdx.x * kRowGroups + warp % kRowGroups;
  const int slice = warp / kRowGroups;
  const int tok0 = blockIdx.y * kTokens;
  unsigned* tile = reinterpret_cast<unsigned*>(smem) + warp * (kStageWords + kStashWords);
  unsigned* stash = tile + kStageWords;
  const long long strip0 = static_cast<long long>(row_group) * a.strips_per_row_group + slice;
  const bool rows_exist = row_group * kStripRows < a.n;
  const int count = rows_exist && slice < a.strips_per_row_group
                        ? (a.strips_per_row_group - 1 - slice) / kWarpsK + 1 : 0;
  const unsigned base_pair = base_pair_of(a.base);

  float acc[kTokenTiles][4];
#pragma unroll
  for (int t = 0; t < kTokenTiles; ++t) acc[t][0] = acc[t][1] = acc[t][2] = acc[t][3] = 0.f;

  LaneStrip ring[kDepth];
  int ring_offset[kDepth];
#pragma unroll
  for (int d = 0; d < kDepth; ++d) {
    if (d < count) {
      const long long s = strip0 + d * kWarpsK;
      ring[d] = load_lane_strip(a.sign_mantissa, a.planes, s, lane);
      ring_offset[d] = __ldg(a.fallback_offsets + s);
    }
  }
  unsigned stash_word = count > 0 ? load_stash_word(a, ring_offset[0], lane) : 0u;
  // The strip kDepth ahead, as pointers that advance by kWarpsK strips per refill.
  const long long ahead = strip0 + kDepth * kWarpsK;
  const uint4* sm_ahead = a.sign_mantissa + ahead * (kStripElems / 16) + lane;
  const unsigned* planes_ahead = a.planes + ahead * (kPlanes * kLanes) + lane;
  const int* offset_ahead = a.fallback_offsets + ahead;
  // This lane's activation rows (as 32-bit pairs, column 2q); tokens past M read row M - 1.
  const unsigned* x_rows[kTokenTiles];
#pragma unroll
  for (int nt = 0; nt < kTokenTiles; ++nt)
    x_rows[nt] = reinterpret_cast<const unsigned*>(
        a.x + static_cast<long long>(min(tok0 + nt * 8 + g, a.m - 1)) * a.k + 2 * q);

  for (int j0 = 0; j0 < count; j0 += kDepth) {
#pragma unroll
    for (int d = 0; d < kDepth; ++d) {
      const int j = j0 + d;
      if (j >= count) break;  // warp-uniform
      const int col0 = (slice + j * kWarpsK) * kStripCols;
      const LaneStrip cur = ring[d];
      const int offset = ring_offset[d];
      const unsigned cur_stash = stash_word;
      if (j + kDepth < count) {  // refill the slot with the strip kDepth ahead
        ring[d] = load_lane_strip_at(sm_ahead, planes_ahead);
        ring_offset[d] = __ldg(offset_ahead);
        sm_ahead += kWarpsK * (kStripElems / 16);
        planes_ahead += kWarpsK * kPlanes * kLanes;
        offset_ahead += kWarpsK;
      }
      if (j + 1 < count)  // next strip's stash: its offset arrived at least one strip ago
        stash_word = load_stash_word(a, ring_offset[(d + 1) % kDepth], lane);

      // Activation fragments of this strip (mma B operands), issued now so that they arrive
      // while the strip decodes. Tokens past M read row M - 1 (their sums are never stored);
      // columns past K (only in a ragged last strip) read zeros.
      unsigned bf[kTokenTiles][4][2];
      if (col0 + kStripCols <= a.k) {  // warp-uniform; false only for a ragged last strip
#pragma unroll
        for (int nt = 0; nt < kTokenTiles; ++nt)
#pragma unroll
          for (int t = 0; t < 4; ++t) {
            bf[nt][t][0] = __ldg(x_rows[nt] + col0 / 2 + 8 * t);
            bf[nt][t][1] = __ldg(x_rows[nt] + col0 / 2 + 8 * t + 4);
          }
      } else {
#pragma unroll
        for (int nt = 0; nt < kTokenTiles; ++nt)
#pragma unroll
          for (int t = 0; t < 4; ++t) {
            const int kk = col0 + 16 * t + 2 * q;
            bf[nt][t][0] = kk < a.k ? __ldg(x_rows[nt] + col0 / 2 + 8 * t) : 0u;
            bf[nt][t][1] = kk + 8 < a.k ? __ldg(x_rows[nt] + col0 / 2 + 8 * t + 4) : 0u;
          }
      }

      // 2. decode into the tile
      const ShiftedPlanes sp = shifted_planes(cur);
#pragma unroll
      for (int r = 0; r < 16; ++r)
        tile[element_row(lane, r) * kStagePitch + element_col(lane, r, 0) / 2] =
            decode_pair(cur, sp, r, base_pair);

      // 3. fallbacks: each lane patches its own, in plane-bit order
      const unsigned fallbacks = fallback_mask(cur);
      const int own = __popc(fallbacks);
      const int below = lanes_below(own, lane);
      const int total = __shfl_sync(0xFFFFFFFFu, below + own, 31);
      stash[lane] = cur_stash;
      __syncwarp();
      patch_fallbacks(reinterpret_cast<unsigned short*>(tile) + g * 2 * kStagePitch + 2 * q,
                      fallbacks, reinterpret_cast<const unsigned char*>(stash), offset, below,
                      total, a.fallback_exponents);
      __syncwarp();

      // 4. tensor cores: the strip's 4 tiles of 16x16 against every token tile
      const int mtx = lane >> 3;
      const unsigned* row_ptr = tile + ((mtx & 1) * 8 + (lane & 7)) * kStagePitch + (mtx >> 1) * 4;
#pragma unroll
      for (int t = 0; t < 4; ++t) {
        unsigned af[4];
        ldmatrix_x4(af, row_ptr + t * 8);
#pragma unroll
        for (int nt = 0; nt < kTokenTiles; ++nt) mma_bf16_16816(acc[nt], af, bf[nt][t][0], bf[nt][t][1]);
      }
      __syncwarp();  // the next strip rewrites the tile
    }
  }

  // Sum each row group's K-slice partials in slice order and write BF16 rows of y.
  __syncthreads();
  float* partial = reinterpret_cast<float*>(smem);  // [kWarps][16 rows][kTokens]
#pragma unroll
  for (int nt = 0; nt < kTokenTiles; ++nt) {
    float* p = partial + (warp * kStripRows + g) * kTokens + nt * 8 + 2 * q;
    p[0] = acc[nt][0];
    p[1] = acc[nt][1];
    p[8 * kTokens] = acc[nt][2];
    p[8 * kTokens + 1] = acc[nt][3];
  }
  __syncthreads();
  constexpr int kRows = kRowGroups * kStripRows;
  for (int i = threadIdx.x; i < kRows * kTokens; i += kWarps * 32) {
    const int r = i % kRows, t = i / kRows;  // consecutive threads: consecutive rows
    const int row = blockIdx.x * kRows + r, tok = tok0 + t;
    if (row >= a.n || tok >= a.m) continue;
    const int first_warp = r / kStripRows;  // warps first_warp + s * kRowGroups hold this row
    float sum = 0.f;
#pragma unroll
    for (int s = 0; s < kWarpsK; ++s)
      sum += partial[((first_warp + s * kRowGroups) * kStripRows + r % kStripRows) * kTokens + t];
    if (a.bias) sum += bf16_bits_to_float(a.bias[row]);
    a.y[static_cast<long long>(tok) * a.n + row] = float_to_bf16_bits(sum);
  }
}

}  // namespace zipgen
