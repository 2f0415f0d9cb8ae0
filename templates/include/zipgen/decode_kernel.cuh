// The standalone TCA-TBE -> BF16 decoder (used before cuBLAS for large-M GEMMs).
// Each warp decodes kStripsPerWarp strips of 16x64 weights: it issues all their loads first,
// decodes two weights per 32-bit operation into a strip staged in shared memory, where the warp
// patches the rare fallbacks from their entries (one per lane), and stores whole 16-byte chunks
// of rows.
#pragma once
#include <zipgen/tcatbe.cuh>

namespace zipgen {

// The right edge of a matrix whose K is not a multiple of 8: up to 8 values, one at a time.
// Out of line: it is rare, and unrolled into every chunk it would bloat the kernel.
__device__ __noinline__ void store_ragged(unsigned short* dst, uint4 v, int count) {
  const unsigned words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int c = 0; c < 8; ++c)
    if (c < count) dst[c] = static_cast<unsigned short>(words[c >> 1] >> (16 * (c & 1)));
}

template <int kWarps, int kStripsPerWarp>
__device__ __forceinline__ void decode_strips(
    const uint4* __restrict__ sign_mantissa, const unsigned* __restrict__ planes,
    const unsigned* __restrict__ fallback_entries, const int* __restrict__ fallback_offsets,
    unsigned short* __restrict__ out, int n, int k, int strips_per_row_group, int num_strips,
    int base, unsigned* stage) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  unsigned* tile = stage + warp * kStageWords;
  const long long first = (static_cast<long long>(blockIdx.x) * kWarps + warp) * kStripsPerWarp;
  const unsigned base_pair = base_pair_of(base);
  const bool row_vectors = (k & 7) == 0;  // 16-byte stores stay aligned in every row

  LaneStrip data[kStripsPerWarp];
  int entries_from[kStripsPerWarp], entries_to[kStripsPerWarp];
#pragma unroll
  for (int j = 0; j < kStripsPerWarp; ++j) {
    if (first + j < num_strips) {
      data[j] = load_lane_strip(sign_mantissa, planes, first + j, lane);
      entries_from[j] = __ldg(fallback_offsets + first + j);
      entries_to[j] = __ldg(fallback_offsets + first + j + 1);
    }
  }

#pragma unroll
  for (int j = 0; j < kStripsPerWarp; ++j) {
    const long long s = first + j;
    if (s >= num_strips) break;  // warp-uniform
    const CodeWords codes = code_words(data[j]);
#pragma unroll
    for (int r = 0; r < 16; ++r)
      tile[element_row(lane, r) * kStagePitch + element_col(lane, r, 0) / 2] =
          decode_pair(data[j], codes, r, base_pair);

    __syncwarp();  // the tile is written

    // Fallbacks: lane t takes entries t, t + 32, ... of the strip (about 17 in a trained strip)
    // and sets the exponent of the element it names; entries name distinct elements.
    unsigned short* tile16 = reinterpret_cast<unsigned short*>(tile);
    for (int e = entries_from[j] + lane; e < entries_to[j]; e += 32) {
      const unsigned entry = entry_at(fallback_entries, e);
      const unsigned pos = entry_position(entry), owner = pos >> 5, b = pos & 31u;
      unsigned short* half = tile16 + element_row(owner, b & 15) * 2 * kStagePitch +
                             element_col(owner, b & 15, b >> 4);
      *half = static_cast<unsigned short>((*half & 0x807Fu) | (entry_exponent(entry) << 7));
    }
    __syncwarp();

    // 16 rows x 8 chunks of 16 bytes -> global memory, row by row
    const int row0 = static_cast<int>(s / strips_per_row_group) * kStripRows;
    const int col0 = static_cast<int>(s % strips_per_row_group) * kStripCols;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int chunk = i * 32 + lane;
      const int row = row0 + (chunk >> 3);
      const int col = col0 + (chunk & 7) * 8;
      if (row >= n || col >= k) continue;
      const uint4 v = *reinterpret_cast<const uint4*>(tile + (chunk >> 3) * kStagePitch + (chunk & 7) * 4);
      unsigned short* dst = out + static_cast<long long>(row) * k + col;
      if (row_vectors && col + 8 <= k) {
        *reinterpret_cast<uint4*>(dst) = v;
      } else {
        store_ragged(dst, v, k - col);
      }
    }
    __syncwarp();  // the next strip rewrites the tile
  }
}

}  // namespace zipgen
