// Chosen rows of a TCA-TBE matrix, decoded straight to BF16 rows (an embedding lookup):
// out[i, :] = W[ids[i], :], bit for bit.
//
// A row of W crosses every strip of its strip row, and in each strip (16 x 64) its 64 elements
// sit in four lanes' registers (FORMAT.md §4: row g + 8 h of the strip is lane 4 g + q's
// registers 4 t + h and 4 t + 2 + h, q = 0..3, t = 0..3). Thread (strip, q) of a row loads that
// lane's words of the strip, decodes its 8 register pairs of the row (the other 8 belong to
// the row 8 apart) and patches the fallbacks among them: it scans the strip's records (about
// 17 in a trained strip) for those naming its lane and half. No shared memory, no barriers:
// a lookup of a few tokens is one small launch (grid x: the ids, grid y: strips of the row).
#pragma once
#include <zipgen/tcatbe.cuh>

namespace zipgen {

// Pair j = 0..7 of a row's share of a lane: register 4 (j >> 1) + kHalf + 2 (j & 1), columns
// 16 (j >> 1) + 8 (j & 1) + 2 q + {0, 1} of the strip.
template <int kHalf>
__device__ __forceinline__ void decode_row_pairs(const LaneStrip& d, unsigned base_pair,
                                                 unsigned (&pairs)[8]) {
  const CodeWords codes = code_words(d);
#pragma unroll
  for (int j = 0; j < 8; ++j) pairs[j] = decode_pair(d, codes, 4 * (j >> 1) + kHalf + 2 * (j & 1), base_pair);
}

// Store pair j of the thread's share: a 32-bit word where the row's two columns are inside K
// and 4-byte aligned, else one half at a time (odd K, the ragged right edge).
__device__ __forceinline__ void store_pair(unsigned short* row_strip, int col, int cols_left,
                                           bool words, unsigned v) {
  if (words && col + 2 <= cols_left) {
    *reinterpret_cast<unsigned*>(row_strip + col) = v;
  } else {
    if (col < cols_left) row_strip[col] = static_cast<unsigned short>(v);
    if (col + 1 < cols_left) row_strip[col + 1] = static_cast<unsigned short>(v >> 16);
  }
}

template <int kThreads>
__device__ __forceinline__ void decode_rows(
    const uint4* __restrict__ sign_mantissa, const unsigned* __restrict__ planes,
    const unsigned* __restrict__ fallback_entries, const int* __restrict__ fallback_offsets,
    const long long* __restrict__ ids, unsigned short* __restrict__ out, int n, int k,
    int strips_per_row, int base) {
  const int t = static_cast<int>(blockIdx.y) * kThreads + static_cast<int>(threadIdx.x);
  const int strip_in_row = t >> 2, q = t & 3;
  if (strip_in_row >= strips_per_row) return;
  const long long id = __ldg(ids + blockIdx.x);
  // like F.embedding's device-side assert: an index outside the table stops the kernel with an
  // error (cudaErrorIllegalInstruction) instead of reading past the streams
  if (id < 0 || id >= n) __trap();
  const int row = static_cast<int>(id), in_strip = row & 15;
  const int lane = 4 * (in_strip & 7) + q, half = in_strip >> 3;
  const long long strip = static_cast<long long>(row >> 4) * strips_per_row + strip_in_row;
  const LaneStrip data = load_lane_strip(sign_mantissa, planes, strip, lane);
  const int first = __ldg(fallback_offsets + strip), end = __ldg(fallback_offsets + strip + 1);

  const unsigned base_pair = base_pair_of(base);
  unsigned pairs[8];
  if (half) {
    decode_row_pairs<1>(data, base_pair, pairs);
  } else {
    decode_row_pairs<0>(data, base_pair, pairs);
  }
  // fallbacks came out with exponent `base`: XOR (exponent ^ base) << 7 into their half
  for (int i = first; i < end; ++i) {
    const unsigned e = entry_at(fallback_entries, i);
    const unsigned pos = entry_position(e), b = pos & 31u;  // b = register + 16 * half-word
    if ((pos >> 5) != static_cast<unsigned>(lane) || (b & 1u) != static_cast<unsigned>(half)) continue;
    const unsigned r = b & 15u, j = 2 * (r >> 2) + ((r >> 1) & 1u);
    const unsigned v = exponent_patch(e, base_pair & 0x7F80u, b);
#pragma unroll
    for (unsigned jj = 0; jj < 8; ++jj)
      if (jj == j) pairs[jj] ^= v;  // a constant index: the pairs stay in registers
  }

  unsigned short* row_strip = out + static_cast<long long>(blockIdx.x) * k + strip_in_row * kStripCols;
  const int cols_left = k - strip_in_row * kStripCols;
  const bool words = (k & 1) == 0;  // every row starts 4-byte aligned
#pragma unroll
  for (int j = 0; j < 8; ++j)
    store_pair(row_strip, 16 * (j >> 1) + 8 * (j & 1) + 2 * q, cols_left, words, pairs[j]);
}

}  // namespace zipgen
