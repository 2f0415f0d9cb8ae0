// ZipGEMM, warp-specialised (ZipGemmConfig.specialized; sm_90a): decoding warps feed one
// multiplying warpgroup through a ring of shared-memory stages, so that the tensor cores work
// while the next strips decode.
//
// The other variants make every warp decode, patch and multiply in one dependent chain; past
// 32 tokens a strip's wgmmas must finish before the next strip's decode (the accumulators of 64
// and 128 tokens leave no registers to overlap them), and the registers cap the SM at 8 warps.
// Here the CTA computes 64 rows x kTokenTiles * 8 tokens over all of K:
//   * warps 0-3, the consumer warpgroup, hold the accumulators. Per K strip j (64 columns)
//     each waits for stage j % kStages, loads its 16 rows' A fragments from the stage (four
//     16-byte loads: the format's lane order is wgmma's register-A layout) and the warpgroup
//     issues m64nNk16 x 4 with the activations from the stage (TMA-written, 128-byte swizzle),
//     then frees the stage;
//   * the kProducers warps after them decode, four per K strip (one per 16-row strip row):
//     producer p takes row group p % 4 and the K strips p / 4, p / 4 + kProducers / 4, ...
//     It decodes into its lane slices of the stage (the other variants' staging layout, so the
//     fallback patch is theirs) and announces them on the stage's full barrier; the producer of
//     row group 0 also asks the TMA for the strip's activation tile.
// Shared memory only passes data between generic-proxy stores and loads (the wgmma reads A
// from registers), so no proxy fence sits in the producers' loop: their stream loads stay in
// flight across strips. Sums are in K order in one warpgroup: deterministic, no partials.
#pragma once
#include <zipgen/zipgemm_kernel.cuh>

namespace zipgen {

__device__ __forceinline__ void mbarrier_arrive(unsigned bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}

template <int kProducers, int kTokenTiles>
struct SpecializedLayout {
  static constexpr int kGroups = kProducers / 4;  // K strips decoded at once
  static constexpr int kTokens = 8 * kTokenTiles;
  static constexpr int kXBytes = staged_buffer_bytes<kTokenTiles, true>();  // 1024-multiple
  static constexpr int kABytes = 4 * kWarpTileBytes;  // 4 strips' lane slices
  // Stages: two rounds of the decoding groups and two more, within 192 KB (1-2 % faster than
  // one round and two more, benchmarks/results/specialized-variants-*-s14-*)
  static constexpr int kStages = 2 * kGroups + 2 < 196608 / (kXBytes + kABytes + 16)
                                     ? 2 * kGroups + 2 : 196608 / (kXBytes + kABytes + 16);
  // from the 1024-aligned base: activation stages, A stages, full then empty barriers
  static constexpr int kAOffset = kStages * kXBytes;
  static constexpr int kBarOffset = kAOffset + kStages * kABytes;
  static constexpr int kBytes = kBarOffset + 16 * kStages;  // + up to 1023 of alignment
  static constexpr unsigned kFullArrivals = 4 * kLanes + 1;  // 4 producer warps + the TMA's
  static constexpr unsigned kEmptyArrivals = 4 * kLanes;     // the consumer warpgroup
};

// The K strips [first, end) of this CTA: all of them, or (split-K, grid z) its contiguous share.
template <int kSplits>
__device__ __forceinline__ int2 split_strips(int strips) {
  if constexpr (kSplits == 1) return make_int2(0, strips);
  const int z = static_cast<int>(blockIdx.z);
  return make_int2(z * strips / kSplits, (z + 1) * strips / kSplits);
}

template <int kProducers, int kTokenTiles, int kDepth, int kSplits>
__device__ __forceinline__ void specialized_producer(const GemmArgs& a, unsigned base, int p,
                                                     int lane) {
  using L = SpecializedLayout<kProducers, kTokenTiles>;
  constexpr int kBuffers = kDepth + 1;
  const int member = p & 3, group = p >> 2;
  const int2 range = split_strips<kSplits>(a.strips_per_row_group);
  const int strips = range.y - range.x;  // local K strip jj is the row's strip range.x + jj
  const int count = group < strips ? (strips - 1 - group) / L::kGroups + 1 : 0;
  if (count == 0) return;
  // a strip row past N (last CTA) redoes the last one; its sums are never stored
  const int strip_row = min(static_cast<int>(blockIdx.x) * 4 + member, (a.n - 1) / kStripRows);
  const unsigned row_start =
      static_cast<unsigned>(strip_row * a.strips_per_row_group + range.x + group);
  const auto strip_at = [&](int i) {
    return row_start + static_cast<unsigned>(min(i, count - 1) * L::kGroups);
  };
  const bool issues_tma = member == 0 && lane == 0;
  const int tok0 = blockIdx.y * L::kTokens;
  unsigned lane_slice = base + L::kAOffset + member * kWarpTileBytes + lane * kLaneStageBytes;
  unsigned base_pair = base_pair_of(a.base);
  LaneStreams streams(a, lane);
  EntrySource entry_source(a, lane);
  // Strip i's words and its entry word (the lane's word of the fallback records, whose address
  // needs the strip's offset) are loaded kDepth strips ahead into ring[i % kBuffers]; its
  // offsets (first entry, next strip's first) kUnroll strips ahead into offsets / ends, so the
  // entry-word load never waits for them. (zipgemm_rows loads the entry word one strip ahead,
  // a chain of two memory latencies per strip whatever the depth.)
  constexpr int kUnroll = 2 * kBuffers;
  StripInput ring[kBuffers];
  int offsets[kUnroll];
  int ends[kUnroll];
#pragma unroll
  for (int d = 0; d < kUnroll; ++d) {
    offsets[d] = streams.offset(strip_at(d));
    ends[d] = streams.offset(strip_at(d) + 1);
  }
  const auto load_strip = [&](StripInput& in, int i, int slot) {
    in.data = streams.load(strip_at(i));
    in.entry_word = entry_source.load(offsets[slot]);
    in.skip = EntrySource::skip(offsets[slot]);
    in.count = ends[slot] - offsets[slot];
  };
#pragma unroll
  for (int d = 0; d < kDepth; ++d) load_strip(ring[d], d, d);
  for (int i0 = 0; i0 < count; i0 += kUnroll) {
    pin(lane_slice);
    pin(base_pair);
    pin(streams.sign_mantissa);
    pin(streams.planes);
    pin(entry_source.lane_words);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int i = i0 + u;
      if (i >= count) break;  // warp-uniform
      const int b = u % kBuffers;
      load_strip(ring[(b + kDepth) % kBuffers], i + kDepth, (u + kDepth) % kUnroll);
      const int offset = offsets[u];
      offsets[u] = streams.offset(strip_at(i + kUnroll));  // its slot is free again
      ends[u] = streams.offset(strip_at(i + kUnroll) + 1);

      const int j = group + i * L::kGroups;  // the CTA's K strip (local)
      const int stage = j % L::kStages;
      const unsigned full = base + L::kBarOffset + 8 * stage;
      // the stage's last use has been multiplied (a fresh barrier passes parity 1 at once)
      mbarrier_wait_parity(full + 8 * L::kStages, ((j / L::kStages) & 1) ^ 1);
      if (issues_tma) {
        mbarrier_arrive_expect_tx(full, L::kXBytes);  // the whole box, zero-fill included
        tma_load_2d(base + stage * L::kXBytes, a.x_map, (range.x + j) * kStripCols, tok0, full);
      }
      const StripInput& in = ring[b];
      const unsigned slice = lane_slice + stage * L::kABytes;
      decode_to_slice(in.data, slice, base_pair);
      __syncwarp();  // every lane's registers are in place before the patch XORs into them
      patch_entries(in, offset, slice - lane * kLaneStageBytes, base_pair & 0x7F80u, a, lane);
      mbarrier_arrive(full);  // release: this lane's stores and XORs, for the consumer
    }
  }
}

__device__ __forceinline__ void wgmma_wait_one() {
  asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory");
}

// Stage j's A fragments into af, and the warpgroup's wgmmas on them and its activations.
template <int kProducers, int kTokenTiles>
__device__ __forceinline__ void consume_stage(float (&acc)[kTokenTiles][4], unsigned (&af)[4][4],
                                              unsigned base, unsigned lane_slice, int j) {
  using L = SpecializedLayout<kProducers, kTokenTiles>;
  const int stage = j % L::kStages;
  mbarrier_wait_parity(base + L::kBarOffset + 8 * stage, (j / L::kStages) & 1);
  const unsigned slice = lane_slice + stage * L::kABytes;
#pragma unroll
  for (int t = 0; t < 4; ++t) {
    const uint4 v = ld_shared_v4(slice + 16 * t);
    af[t][0] = v.x, af[t][1] = v.y, af[t][2] = v.z, af[t][3] = v.w;
  }
  wgmma_fence();  // the A registers and the accumulators are written before the wgmmas
#pragma unroll
  for (int t = 0; t < 4; ++t)
    wgmma_bf16<kTokenTiles>(acc, af[t], sw128_kmajor_descriptor(base + stage * L::kXBytes + 32 * t));
  wgmma_commit();
  wgmma_fence_accumulators(acc);
  wgmma_fence_fragments(af);
}

template <int kProducers, int kTokenTiles, int kSplits>
__device__ __forceinline__ void specialized_consumer(const GemmArgs& a, unsigned base, int warp,
                                                     int lane) {
  using L = SpecializedLayout<kProducers, kTokenTiles>;
  float acc[kTokenTiles][4];
#pragma unroll
  for (int t = 0; t < kTokenTiles; ++t) acc[t][0] = acc[t][1] = acc[t][2] = acc[t][3] = 0.f;
  unsigned af[2][4][4];  // two strips' A fragments: one in flight while the next is issued
  const unsigned lane_slice = base + L::kAOffset + warp * kWarpTileBytes + lane * kLaneStageBytes;
  const int2 range = split_strips<kSplits>(a.strips_per_row_group);
  const int strips = range.y - range.x;
  const auto release = [&](int j) {  // stage of strip j may be refilled
    mbarrier_arrive(base + L::kBarOffset + 8 * (L::kStages + j % L::kStages));
  };
  // In pairs: the second strip's wait, loads and issue overlap the first's wgmmas. A group in
  // flight across the loop's back edge would make ptxas serialize them (C7515), as in
  // zipgemm_rows, so each pair ends waiting for both. Not at 128 tokens with 16 warps: the
  // second strip's 16 registers would spill (128 per thread at most).
  constexpr bool kPaired = kTokenTiles < 16 || kProducers < 12;
  for (int j = 0; j < strips; j += kPaired ? 2 : 1) {
    consume_stage<kProducers, kTokenTiles>(acc, af[0], base, lane_slice, j);
    if (kPaired && j + 1 < strips) {
      consume_stage<kProducers, kTokenTiles>(acc, af[1], base, lane_slice, j + 1);
      wgmma_wait_one();
      wgmma_fence_accumulators(acc);
      wgmma_fence_fragments(af[0]);
      release(j);
    }
    wgmma_wait_all();
    wgmma_fence_accumulators(acc);
    wgmma_fence_fragments(af[0]);
    wgmma_fence_fragments(af[1]);
    release(j + (kPaired && j + 1 < strips));
  }

  // Warp w's accumulators: rows 16 w + g (+ 8), tokens 8 nt + 2 q (+ 1)
  const int g = lane >> 2, q = lane & 3;
  const auto row_of = [&](int i) { return warp * kStripRows + g + 8 * (i >> 1); };  // in the tile
  const auto token_of = [&](int nt, int i) { return 8 * nt + 2 * q + (i & 1); };
  const int row0 = static_cast<int>(blockIdx.x) * 64, tok0 = static_cast<int>(blockIdx.y) * L::kTokens;
  float bias[2] = {0.f, 0.f};
#pragma unroll
  for (int h = 0; h < 2; ++h)
    if (a.bias && row0 + row_of(2 * h) < a.n) bias[h] = bf16_bits_to_float(a.bias[row0 + row_of(2 * h)]);
  const auto store = [&](int nt, int i, float sum) {
    const int row = row0 + row_of(i), tok = tok0 + token_of(nt, i);
    if (row < a.n && tok < a.m)
      a.y[static_cast<long long>(tok) * a.n + row] = float_to_bf16_bits(sum + bias[i >> 1]);
  };
  if constexpr (kSplits == 1) {
#pragma unroll
    for (int nt = 0; nt < kTokenTiles; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) store(nt, i, acc[nt][i]);
  } else {
    // As zipgemm_rows' split-K: each CTA's FP32 tile to the workspace ([token][row]), past L1;
    // the tile's last CTA to count itself sums them in split order (deterministic) and puts
    // the counter back to 0 for the next launch or graph replay.
    constexpr int kTile = 64 * L::kTokens;
    const unsigned tile = blockIdx.y * gridDim.x + blockIdx.x;
    float* tiles = a.workspace + static_cast<long long>(tile) * kSplits * kTile;
#pragma unroll
    for (int nt = 0; nt < kTokenTiles; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i)
        __stcg(tiles + blockIdx.z * kTile + token_of(nt, i) * 64 + row_of(i), acc[nt][i]);
    __threadfence();  // our partials are visible device-wide before we count ourselves
    __shared__ unsigned last;
    asm volatile("bar.sync 1, 128;\n" ::: "memory");  // the consumer warpgroup's
    if (threadIdx.x == 0) {
      last = atomicAdd(a.counters + tile, 1u) == kSplits - 1;
      if (last) a.counters[tile] = 0u;
    }
    asm volatile("bar.sync 1, 128;\n" ::: "memory");
    if (!last) return;
    __threadfence();  // the other CTAs' partials (they fenced before counting) are seen
#pragma unroll
    for (int nt = 0; nt < kTokenTiles; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        float sum = 0.f;
#pragma unroll
        for (int z = 0; z < kSplits; ++z) sum += __ldcg(tiles + z * kTile + token_of(nt, i) * 64 + row_of(i));
        store(nt, i, sum);
      }
  }
}

template <int kProducers, int kTokenTiles, int kDepth, int kSplits>
__device__ __forceinline__ void zipgemm_specialized(const GemmArgs& a, unsigned char* smem) {
  static_assert(kProducers == 4 || kProducers == 8 || kProducers == 12 || kProducers == 16,
                "one to four producer warpgroups");
  using L = SpecializedLayout<kProducers, kTokenTiles>;
  const unsigned base = (shared_address(smem) + 1023u) & ~1023u;  // swizzle atoms: 1024-aligned
  if (threadIdx.x == 0) {
#pragma unroll
    for (int s = 0; s < L::kStages; ++s) {
      mbarrier_init(base + L::kBarOffset + 8 * s, L::kFullArrivals);
      mbarrier_init(base + L::kBarOffset + 8 * (L::kStages + s), L::kEmptyArrivals);
    }
    fence_mbarrier_init();
  }
  __syncthreads();  // the barriers are initialised before anybody waits on them
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (warp < 4) {
    specialized_consumer<kProducers, kTokenTiles, kSplits>(a, base, warp, lane);
  } else {
    specialized_producer<kProducers, kTokenTiles, kDepth, kSplits>(a, base, warp - 4, lane);
  }
}

}  // namespace zipgen
