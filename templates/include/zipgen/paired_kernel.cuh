// ZipGEMM with K strips taken in pairs (ZipGemmConfig.strip_pairs; direct activations, mma.sync).
//
// As zipgemm_rows (zipgemm_kernel.cuh) with one strip row per warp and direct activations, but a
// warp's unit of work is two adjacent K strips of its row (128 columns), not one strip. Their
// fallback records are contiguous in the entry stream (FORMAT.md §5: records in strip order), so
// one entry-word load and one patch pass serve both strips: the warp's lanes take the unit's
// records one each, from the same 32 prefetched words, in one round, or two past 32 records
// (a trained pair has ~34). The offsets, the patch's address arithmetic, the __syncwarps and the
// loop control are paid once per 128 columns. The compressed words still go through a ring of
// single strips, kDepth ahead, so registers stay as in zipgemm_rows at the same depth.
//
// A row's strips 2u, 2u + 1 (both 64 full columns) are unit u; the warps of K slice s take units
// s, s + kWarpsK, ... The strips left over (the last of an odd count, and a ragged last strip)
// go one at a time after the loop, through zipgemm_rows' strip step, to the warp whose turn the
// next unit would have been. Sums: each warp in K order, the slices in a fixed order at the end:
// deterministic.
//
// kSiluMul (ZipGemmConfig.silu_mul): W is a gate and an up projection stacked ([gate; up], N / 2
// rows each), and the kernel writes silu(x gate^T) * (x up^T), [M, N / 2]. The CTA's first
// kRowGroups / 2 strip rows are gate rows, the others the up rows of the same outputs, so one
// CTA holds both sums of an output (store_silu_mul).
//
// kStageX (ZipGemmConfig.stage_x, sm_90): each warp stages its units' activations in a private
// buffer after every warp's decode tiles, through the TMA (paired_activations.cuh), instead of
// loading B fragments directly.
#pragma once
#include <zipgen/paired_activations.cuh>
#include <zipgen/zipgemm_kernel.cuh>

namespace zipgen {

// Records 0 .. kWindowRecords - 1 of a unit lie wholly inside the 32 words each lane's entry
// word makes up (the first record starts at bit skip <= 31 of word 0, 18 bits each:
// 31 + 18 * 55 <= 1024).
constexpr int kWindowRecords = 55;

// Where a unit's strips start in the fallback stream: its first strip's first record, its
// second strip's first, and the next unit's first.
struct PairOffsets {
  int first, second, end;
};

// What the patch of a unit needs: its offsets and this lane's entry word (word `lane` of the
// entry stream from the one holding the unit's first record), loaded about a unit ahead.
struct PairEntries {
  PairOffsets at;
  unsigned entry_word;
};

// The unit's records, patched by the whole warp into the slices of its two strips (tile0 /
// tile1: lane 0's slice of each): record j belongs to the first strip for j < split. Lane l
// takes records l and, past 32, 32 + l from the prefetched words; past kWindowRecords (rare),
// further rounds read them from global memory (warp-uniform).
__device__ __forceinline__ void patch_pair(const PairEntries& in, unsigned tile0, unsigned tile1,
                                           unsigned base_field, const GemmArgs& a, int lane) {
  const int skip = EntrySource::skip(in.at.first);
  const int count = in.at.end - in.at.first, split = in.at.second - in.at.first;
  {
    const int bit = skip + kEntryBits * lane;
    const unsigned lo = __shfl_sync(0xFFFFFFFFu, in.entry_word, bit >> 5);
    const unsigned hi = __shfl_sync(0xFFFFFFFFu, in.entry_word, (bit >> 5) + 1);
    if (lane < count)
      xor_entry(__funnelshift_r(lo, hi, bit & 31), lane < split ? tile0 : tile1, base_field);
  }
  if (count > 32) {
    // lanes past record 54 compute word numbers past 31; the shuffles wrap them and the records
    // are not used. A record inside the window needs `hi` only if it crosses into a word < 32.
    const int j = 32 + lane;
    const int bit = skip + kEntryBits * j;
    const unsigned lo = __shfl_sync(0xFFFFFFFFu, in.entry_word, (bit >> 5) & 31);
    const unsigned hi = __shfl_sync(0xFFFFFFFFu, in.entry_word, ((bit >> 5) + 1) & 31);
    if (j < count && j < kWindowRecords)
      xor_entry(__funnelshift_r(lo, hi, bit & 31), j < split ? tile0 : tile1, base_field);
    if (count > kWindowRecords) {
      for (int r = kWindowRecords + lane; r - lane < count; r += 32)
        if (r < count)
          xor_entry(entry_at(a.fallback_entries, in.at.first + r), r < split ? tile0 : tile1,
                    base_field);
    }
  }
}

// FP32 -> BF16 bits as PyTorch's CUDA kernels round (cvt.rn.bf16.f32): to nearest even, and
// every NaN to 0x7FFF (float_to_bf16_bits, which the GEMM's own outputs use, gives 0x7FC0).
__device__ __forceinline__ unsigned short torch_cuda_bf16_bits(float f) {
  return (__float_as_uint(f) & 0x7FFFFFFFu) > 0x7F800000u ? 0x7FFFu : float_to_bf16_bits(f);
}

// kSiluMul: the CTA's outputs from its partials: gate row r and up row r + kRows / 2 of the
// CTA's rows make output r. Each sum rounded to BF16 as the plain kernel writes it, SiLU in FP32
// of the rounded gate rounded to BF16, then the product rounded: eager PyTorch's
// act_fn(gate) * up on those BF16 values, bit for bit (silu is x / (1 + exp(-x)) in FP32 there
// too). No bias.
template <int kWarps, typename Partials>
__device__ __forceinline__ void store_silu_mul(const GemmArgs& a, const Partials& partials,
                                               int tok0) {
  constexpr int kOut = Partials::kRows / 2;
  const int half = a.n / 2;
  for (int i = threadIdx.x; i < kOut * (Partials::kTile / Partials::kRows); i += kWarps * 32) {
    const int r = i % kOut, t = i / kOut;
    const int row = blockIdx.x * kOut + r, tok = tok0 + t;
    if (row >= half || tok >= a.m) continue;
    const float gate = bf16_bits_to_float(float_to_bf16_bits(partials.sum(r, t)));
    const float up = bf16_bits_to_float(float_to_bf16_bits(partials.sum(r + kOut, t)));
    const float act = bf16_bits_to_float(torch_cuda_bf16_bits(gate / (1.0f + expf(-gate))));
    a.y[static_cast<long long>(tok) * half + row] = torch_cuda_bf16_bits(act * up);
  }
}

template <int kWarps, int kRowGroups, int kTokenTiles, int kDepth, bool kSiluMul = false,
          bool kStageX = false>
__device__ __forceinline__ void zipgemm_pairs(const GemmArgs& a, unsigned char* smem) {
  static_assert(!kSiluMul || kRowGroups % 2 == 0, "silu_mul pairs gate and up row groups");
  constexpr int kWarpsK = kWarps / kRowGroups;  // warps sharing a strip row split its units
  constexpr int kTokens = kTokenTiles * 8;
  constexpr int kBuffers = kDepth + 1;          // strips loaded ahead + the one being decoded
  // units per loop body: 2 kUnits strips, a multiple of kBuffers, so ring slots are constants
  constexpr int kUnits = kBuffers % 2 == 0 ? kBuffers / 2 : kBuffers;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int g = lane >> 2, q = lane & 3;
  const int member = warp % kRowGroups, slice = warp / kRowGroups;
  // a strip row past N (last CTA) redoes the last one; its sums are never stored. kSiluMul: row
  // groups [0, kRowGroups / 2) take gate strip rows, the others the up strip rows N / 2 further
  // (the runtime passes N / 2 a multiple of 16)
  int strip_row;
  if constexpr (kSiluMul) {
    constexpr int kHalf = kRowGroups / 2;
    const int half_rows = a.n / 2 / kStripRows;
    strip_row = min(static_cast<int>(blockIdx.x) * kHalf + member % kHalf, half_rows - 1) +
                (member / kHalf) * half_rows;
  } else {
    strip_row = min(static_cast<int>(blockIdx.x) * kRowGroups + member, (a.n - 1) / kStripRows);
  }
  const int tok0 = blockIdx.y * kTokens;
  const int whole = a.strips_per_row_group - ((a.k & 63) != 0);  // strips of 64 columns
  const int units = whole / 2;
  const int count = slice < units ? (units - 1 - slice) / kWarpsK + 1 : 0;
  unsigned row_first = static_cast<unsigned>(strip_row) * a.strips_per_row_group;
  // Strip h (a constant) of the warp's unit i: loads past the warp's last unit re-read it
  // (clamped index) instead of branching.
  unsigned first_strip = row_first + 2u * static_cast<unsigned>(slice);
  const auto strip_at = [&](int i, int h) {
    return first_strip + static_cast<unsigned>(min(i, count - 1)) * (2 * kWarpsK) + h;
  };
  LaneStreams streams(a, lane);
  EntrySource entry_source(a, lane);  // not const: pin() rewrites its members
  // Unit i's patch input, from its first offset (loaded a unit earlier, so that the entry word's
  // address is known): the entry word and the other two offsets, loaded together.
  const auto entries_of = [&](int i, int first) {
    const unsigned s = strip_at(i, 0);
    return PairEntries{{first, streams.offset(s + 1), streams.offset(s + 2)},
                       entry_source.load(first)};
  };
  // this lane's token rows (l >> 2 of each token tile; rows past M read row M - 1)
  const unsigned short* x_rows[kTokenTiles];
#pragma unroll
  for (int nt = 0; nt < kTokenTiles; ++nt)
    x_rows[nt] = a.x + static_cast<long long>(min(tok0 + nt * 8 + g, a.m - 1)) * a.k;
  // lane 0's slice of the warp's two strip tiles, and this lane's
  const unsigned tile = shared_address(smem + warp * 2 * kWarpTileBytes);
  unsigned lane_tile = tile + lane * kLaneStageBytes;
  unsigned base_pair = base_pair_of(a.base);
  // kStageX: the warp's activation buffer, after every warp's two decode tiles (1024-aligned:
  // the dynamic shared memory of these kernels starts at a 1024-byte boundary, checked), and
  // its mbarrier in the unused padding of lane 0's slice of its first decode tile
  auto staged = [&] {  // not const: pin_registers() rewrites its members
    if constexpr (kStageX) {
      if (shared_address(smem) & 1023u) __trap();
      return PairActivations<kTokenTiles>(
          a, shared_address(smem + kWarps * 2 * kWarpTileBytes +
                            warp * PairActivations<kTokenTiles>::kBytes),
          tile + 64, tok0, lane);
    } else {
      return NoStaging{};
    }
  }();
  // unit i's first column
  const auto column_of = [&](int i) {
    return (first_strip - row_first + static_cast<unsigned>(i) * (2 * kWarpsK)) * kStripCols;
  };

  float acc[1][kTokenTiles][4];  // one strip row per warp (CtaPartials' layout)
#pragma unroll
  for (int t = 0; t < kTokenTiles; ++t) acc[0][t][0] = acc[0][t][1] = acc[0][t][2] = acc[0][t][3] = 0.f;

  LaneStrip ring[kBuffers];  // the warp's strip t (strip t % 2 of unit t / 2) in ring[t % kBuffers]
  PairEntries entries{};  // the current unit's; the next unit's are loaded after its patch,
  int ahead = 0;          // from the next unit's first offset, loaded a unit before
  if (count > 0) {
#pragma unroll
    for (int d = 0; d < kDepth; ++d) ring[d] = streams.load(strip_at(d / 2, d % 2));
    entries = entries_of(0, streams.offset(strip_at(0, 0)));
    ahead = streams.offset(strip_at(1, 0));
    if constexpr (kStageX) staged.copy(column_of(0), lane);
  }
  for (int i0 = 0; i0 < count; i0 += kUnits) {
    pin(lane_tile);
    pin(streams.sign_mantissa);
    pin(streams.planes);
    pin(streams.offsets);
    pin(base_pair);
    pin(entry_source.lane_words);
    pin(entry_source.last);
    pin(first_strip);
    if constexpr (kStageX) staged.pin_registers();
#pragma unroll
    for (int u = 0; u < kUnits; ++u) {
      const int i = i0 + u;
      if (i >= count) break;  // warp-uniform
      const unsigned column = column_of(i);
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int t = 2 * u + h;  // the warp's strip 2 i + h, modulo the ring
        const int ahead_t = t + kDepth;
        ring[ahead_t % kBuffers] = streams.load(strip_at(i + (h + kDepth) / 2, ahead_t % 2));
        decode_to_slice(ring[t % kBuffers], lane_tile + h * kWarpTileBytes, base_pair);
      }
      // both strips' B fragments, direct: loaded here (L1 hits mostly: every warp of the CTA
      // reads the same rows), in flight during the patch; loaded earlier they cost registers
      // during the decode. Staged: read from the warp's buffer right before their multiplies
      unsigned bf[2][kTokenTiles][4][2];
      if constexpr (!kStageX) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const unsigned short* rows[kTokenTiles];
#pragma unroll
          for (int nt = 0; nt < kTokenTiles; ++nt) rows[nt] = x_rows[nt] + column + h * kStripCols;
          direct_fragments<kTokenTiles, false>(bf[h], rows, 0, lane);
        }
      }
      __syncwarp();  // every lane's decoded registers are in its slices
      patch_pair(entries, tile, tile + kWarpTileBytes, base_pair & 0x7F80u, a, lane);
      entries = entries_of(i + 1, ahead);
      ahead = streams.offset(strip_at(i + 2, 0));
      if constexpr (kStageX) staged.wait(i);  // the unit's activations have landed
      __syncwarp();  // the patches are visible to their owners
      if constexpr (kStageX) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
#pragma unroll
          for (int tp = 0; tp < 2; ++tp) {
            const uint4 v0 = ld_shared_v4(lane_tile + h * kWarpTileBytes + 32 * tp);
            const uint4 v1 = ld_shared_v4(lane_tile + h * kWarpTileBytes + 32 * tp + 16);
            const unsigned af0[4] = {v0.x, v0.y, v0.z, v0.w}, af1[4] = {v1.x, v1.y, v1.z, v1.w};
#pragma unroll
            for (int nt = 0; nt < kTokenTiles; ++nt) {
              unsigned b[4];
              staged.fragments(b, h, tp, nt);
              mma_bf16_16816(acc[0][nt], af0, b[0], b[1]);
              mma_bf16_16816(acc[0][nt], af1, b[2], b[3]);
            }
          }
        }
        if (i + 1 < count) {  // warp-uniform
          __syncwarp();  // everybody's ldmatrix reads are done before the buffer is refilled
          staged.copy(column + 2 * kWarpsK * kStripCols, lane);  // unit i + 1's
        }
      } else {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
#pragma unroll
          for (int t = 0; t < 4; ++t) {
            const uint4 v = ld_shared_v4(lane_tile + h * kWarpTileBytes + 16 * t);
            const unsigned af[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
            for (int nt = 0; nt < kTokenTiles; ++nt)
              mma_bf16_16816(acc[0][nt], af, bf[h][nt][t][0], bf[h][nt][t][1]);
          }
        }
      }
    }
  }
  if (slice == units % kWarpsK) {  // the row's strips past its last unit: 0, 1 or 2
    for (int s = 2 * units; s < a.strips_per_row_group; ++s) {
      const unsigned strip = row_first + static_cast<unsigned>(s);
      StripInput in;
      in.data = streams.load(strip);
      const int offset = streams.offset(strip);
      in.entry_word = entry_source.load(offset);
      in.skip = EntrySource::skip(offset);
      in.count = streams.offset(strip + 1) - offset;
      const unsigned short* rows[kTokenTiles];
#pragma unroll
      for (int nt = 0; nt < kTokenTiles; ++nt) rows[nt] = x_rows[nt] + s * kStripCols;
      unsigned bf[kTokenTiles][4][2];
      direct_fragments<kTokenTiles, true>(bf, rows, a.k - s * kStripCols, lane);
      unsigned af[4][4] = {};  // wgmma only
      multiply_strip<kTokenTiles, false, true, false>(acc[0], in, bf, true, true, NoStaging{}, 0,
                                                      NoCopy{}, base_pair, lane_tile, a, offset,
                                                      af, true);
    }
  }

  if constexpr (kStageX) staged.release(lane);  // the partials below reuse its memory

  // Sum each strip row's K-slice partials in slice order and write BF16 rows of y.
  const CtaPartials<kWarps, kRowGroups, 1, kTokenTiles> partials(smem, acc, warp, g, q);
  if constexpr (kSiluMul)
    store_silu_mul<kWarps>(a, partials, tok0);
  else
    store_cta_tile<kWarps>(a, partials, tok0);
}

}  // namespace zipgen
