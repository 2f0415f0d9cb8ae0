// ZipGEMM: y[M, N] = x[M, K] @ W[N, K]^T (+ bias) with W in TCA-TBE, decoded on the fly.
//
// One CTA computes kRowGroups * 16 output rows for kTokenTiles * 8 tokens. Each row group of 16
// rows (one strip row of W) gets kWarps / kRowGroups warps that split its K: the warp of K slice
// s takes the strips s, s + kWarps / kRowGroups, ... of the row. Per strip a warp
//   1. has the strip's compressed words in registers already (loads issued kDepth strips ahead,
//      into a ring of kDepth + 1 buffers that the unrolled loop indexes statically: no moves),
//   2. decodes two weights per four instructions and stores each lane's 16 registers to its
//      own slice of shared memory (four 16-byte stores),
//   3. patches the strip's few fallback weights there, one entry per lane (the entries' words
//      prefetched, one per lane), and reads its registers back (four 16-byte loads): the A
//      fragments of the strip's four tensor-core tiles, in the order the format stores them,
//   4. multiplies them with every token tile: the strip is decoded once, whatever M is.
// The warps' FP32 partial sums are added in a fixed order at the end (deterministic), so the
// result is the same on every run. With split-K (kSplits > 1, grid z) the kSplits CTAs of an
// output tile share each row's K the same way, and the tile's last CTA to finish adds their
// FP32 partial tiles in split order (deterministic too).
#pragma once
#include <zipgen/mma.cuh>
#include <zipgen/staged_activations.cuh>
#include <zipgen/tma_activations.cuh>
#include <zipgen/tcatbe.cuh>

namespace zipgen {

// A lane's staged registers: 64 bytes, padded to 80 so that the 16-byte stores and loads of
// any 8 consecutive lanes (one shared-memory wavefront) hit 8 different 4-bank groups.
constexpr int kLaneStageBytes = 80;
constexpr int kWarpTileBytes = kLanes * kLaneStageBytes;
// Shared memory: per warp its lanes' decode tiles; then (stage_x) per K slice the double
// buffer of staged activations (staged_activations.cuh).

struct GemmArgs {
  const uint4* sign_mantissa;
  const unsigned* planes;
  const unsigned* fallback_entries;  // 18-bit records as 32-bit words (FORMAT.md §5)
  const int* fallback_offsets;
  const unsigned short* x;     // [M, K] BF16 bits, row-major
  const unsigned short* bias;  // [N] BF16 bits or nullptr
  unsigned short* y;           // [M, N] BF16 bits, row-major
  int m, n, k;
  int strips_per_row_group;
  int entry_words;  // size of the (padded) entry stream in 32-bit words
  int base;
  const void* x_map;  // wgmma: the TMA tensor map of x (a __grid_constant__ parameter)
  float* workspace;   // split-K: FP32 partial tiles, [output tile][split][token][row]
  unsigned* counters; // split-K: per output tile, its CTAs done so far (0 between launches)
};

// A lane's words of strip s: 16-byte sign-mantissa chunks lane and 32 + lane of the strip's
// 1024 bytes, code words lane, 32 + lane, 64 + lane, and the strip's fallback offset. Strip
// numbers are 32-bit (a matrix has < 2^31 / 1024 strips per 2 GiB of sign-mantissa bytes), so
// each address is one wide multiply-add from a lane-constant base.
struct LaneStreams {
  const uint4* sign_mantissa;  // + lane
  const unsigned* planes;      // + lane
  const int* offsets;

  __device__ LaneStreams(const GemmArgs& a, int lane)
      : sign_mantissa(a.sign_mantissa + lane), planes(a.planes + lane),
        offsets(a.fallback_offsets) {}

  __device__ __forceinline__ LaneStrip load(unsigned s) const {
    return load_lane_strip_at(sign_mantissa + s * (kStripElems / 16), planes + s * (kPlanes * kLanes));
  }
  __device__ __forceinline__ int offset(unsigned s) const { return __ldg(offsets + s); }
};

// Everything a warp needs to multiply one strip, once its compressed words have arrived.
struct StripInput {
  LaneStrip data;
  unsigned entry_word;  // word `lane` of the entry stream from the strip's first record's word
  int skip;             // bit of the strip's first record in the first of those words
  int count;            // the strip's fallback entries
};

// Where a strip's entry words come from: lane l loads word l from the one holding the strip's
// first record (bit 18 offset), or zero past the stream's end. Lane-constant parts held once.
struct EntrySource {
  const unsigned* lane_words;  // entry stream + lane
  int last;                    // largest word index, from lane_words, inside the stream

  __device__ EntrySource(const GemmArgs& a, int lane)
      : lane_words(a.fallback_entries + lane), last(a.entry_words - 1 - lane) {}

  __device__ __forceinline__ unsigned load(int offset) const {
    const int at = static_cast<int>((static_cast<long long>(kEntryBits) * offset) >> 5);
    return at <= last ? __ldg(lane_words + at) : 0u;
  }
  __device__ __forceinline__ static int skip(int offset) {  // only the low five bits matter
    return static_cast<int>((kEntryBits * static_cast<unsigned>(offset)) & 31u);
  }
};

// Set the exponent of the element entry e names in its owner lane's staged register.
__device__ __forceinline__ void xor_entry(unsigned e, unsigned warp_tile, unsigned base_field) {
  const unsigned pos = entry_position(e), b = pos & 31u;
  red_shared_xor(warp_tile + (pos >> 5) * kLaneStageBytes + 4 * (b & 15u),
                 exponent_patch(e, base_field, b));
}

// The patch step: the warp's lanes take the strip's entries one each (a trained strip has ~17;
// past 32 further rounds read them from global memory) and XOR (exponent ^ base) << 7 into the
// owner lane's staged register, which the decoder left with exponent base (code 0): no scan
// over the lanes, no per-lane loop, no load-modify-store. Entries name distinct elements, so
// the XORs never collide. warp_tile: lane 0's slice.
__device__ __forceinline__ void patch_entries(const StripInput& in, int offset, unsigned warp_tile,
                                              unsigned base_field, const GemmArgs& a, int lane) {
  // the first 32 entries from the prefetched words: a record spans at most two of them
  const int bit = in.skip + kEntryBits * lane;
  const unsigned lo = __shfl_sync(0xFFFFFFFFu, in.entry_word, bit >> 5);
  const unsigned hi = __shfl_sync(0xFFFFFFFFu, in.entry_word, (bit >> 5) + 1);
  if (lane < in.count) xor_entry(__funnelshift_r(lo, hi, bit & 31), warp_tile, base_field);
  // rounds past the first (warp-uniform, rare in trained weights): records from the stream
  if (in.count > 32) {
    for (int j = 32 + lane; j - lane < in.count; j += 32)
      if (j < in.count) xor_entry(entry_at(a.fallback_entries, offset + j), warp_tile, base_field);
  }
}

// Where a strip's activations come from, on the direct path: this lane's token rows at the
// strip's first column, and K minus that column.
template <int kTokenTiles>
struct StripActivations {
  const unsigned short* rows[kTokenTiles];
  int cols_left;
};

// The activations (mma B operands) of a strip come one of two ways, chosen per kernel
// (ZipGemmConfig.stage_x): staged through shared memory (staged_activations.cuh), or direct:
// each lane loads its B fragments itself, 8 x 4 bytes per token tile, from x_strip[nt] (this
// lane's token row, l >> 2 of token tile nt, at the strip's first column; tokens past M read row
// M - 1, whose sums are never stored). In a ragged last strip (kRagged) columns past K
// (cols_left) read zeros; K % 8 == 0, so a pair is wholly inside or outside. Cheapest in
// instructions and registers when the token rows coincide (M = 1: one line per load), but with
// 8 different rows every load touches 8 lines: 8x the L1 wavefronts.
template <int kTokenTiles, bool kRagged>
__device__ __forceinline__ void direct_fragments(unsigned (&bf)[kTokenTiles][4][2],
                                                 const unsigned short* const (&x_strip)[kTokenTiles],
                                                 int cols_left, int lane) {
  const int q = lane & 3;
#pragma unroll
  for (int nt = 0; nt < kTokenTiles; ++nt) {
    const unsigned* pairs = reinterpret_cast<const unsigned*>(x_strip[nt]) + q;
#pragma unroll
    for (int t = 0; t < 4; ++t) {
      const bool in0 = !kRagged || 16 * t + 2 * q < cols_left;
      const bool in1 = !kRagged || 16 * t + 8 + 2 * q < cols_left;
      bf[nt][t][0] = in0 ? __ldg(pairs + 8 * t) : 0u;
      bf[nt][t][1] = in1 ? __ldg(pairs + 8 * t + 4) : 0u;
    }
  }
}

// Nothing to do after the barrier (direct path, ragged strip)
struct NoCopy {
  __device__ void operator()() const {}
};

// Decode one strip into this lane's shared-memory slice (registers 4t .. 4t + 3 of the lane are
// the A fragment of tensor-core tile t; four 16-byte stores).
__device__ __forceinline__ void decode_to_slice(const LaneStrip& data, unsigned lane_tile,
                                                unsigned base_pair) {
  const CodeWords codes = code_words(data);
  unsigned regs[16];
#pragma unroll
  for (int i = 0; i < 16; ++i) {
    // pair 15 first: it reads all three code words, so after it each word dies with its last
    // slot, and ptxas issues the next strips' loads before this decode instead of after it
    // (staged 8 warps, 2 token tiles, depth 2; format version 3)
    const int r = (i + 15) % 16;
    regs[r] = decode_pair(data, codes, r, base_pair);
  }
#pragma unroll
  for (int t = 0; t < 4; ++t)
    st_shared_v4(lane_tile + 16 * t, regs[4 * t], regs[4 * t + 1], regs[4 * t + 2], regs[4 * t + 3]);
}

// Decode one strip into this lane's shared-memory slice, patch its fallbacks, and multiply
// with the B fragments bf, which the caller loaded (direct) or which come from the staged
// buffer slot `buffer`. Staged: at the first strip of a group of units (group_start: a unit is
// the warp's kRowStrips strips of one K strip, which share their activations; a group is
// kXStrips units staged together), once the group has synchronised, copy_next() issues the next
// group's copies; at the first strip of a unit (first_of_unit), with kHoldB, the fragments are
// read into bf for the whole unit, without it each tile reads its fragments just before its
// multiply. wgmma: af holds the A fragments of the strip last issued, whose wgmmas stay in
// flight unless wait_now.
template <int kTokenTiles, bool kStageX, bool kHoldB, bool kWgmma, typename Staged,
          typename CopyNext>
__device__ __forceinline__ void multiply_strip(float (&acc)[kTokenTiles][4], const StripInput& in,
                                               unsigned (&bf)[kTokenTiles][4][2],
                                               bool first_of_unit, bool group_start,
                                               const Staged& staged,
                                               int buffer, const CopyNext& copy_next,
                                               unsigned base_pair, unsigned lane_tile,
                                               const GemmArgs& a, int offset,
                                               unsigned (&af)[4][4], bool wait_now) {
  // 1. decode: registers 4t .. 4t + 3 are the A fragment of tile t
  decode_to_slice(in.data, lane_tile, base_pair);

  // the previous strip's wgmmas (if in flight during this decode) are done before the
  // barrier lets their buffer be refilled and before their A registers are rewritten
  if constexpr (kWgmma) {
    wgmma_fence_accumulators(acc);
    wgmma_fence_fragments(af);
    wgmma_wait_all();
    wgmma_fence_accumulators(acc);
    wgmma_fence_fragments(af);
  }
  // 2. fallbacks: the strip's entries, patched by the whole warp
  bool synced = false;
  if constexpr (kStageX) {
    if (first_of_unit) {
      if (group_start) {
        staged.wait_and_sync(buffer);  // the staged registers and the group's activations are visible
        copy_next();                   // nobody reads the other buffer any more
        synced = true;
      }
      if constexpr (kHoldB) staged.fragments(bf, buffer);
    }
  }
  if (!synced) __syncwarp();  // every lane's staged registers are written
  patch_entries(in, offset, lane_tile - (threadIdx.x & 31) * kLaneStageBytes,
                base_pair & 0x7F80u, a, threadIdx.x & 31);
  __syncwarp();  // the patches are visible to their owners

  // 3. tensor cores: the strip's 4 tiles of 16x16 (A fragments back from the lane's own
  // slice, each read once) against every token tile
  if constexpr (kWgmma) {  // the warpgroup's 64 rows x all tokens per tile, B from shared memory
#pragma unroll
    for (int t = 0; t < 4; ++t) {
      const uint4 v = ld_shared_v4(lane_tile + 16 * t);
      af[t][0] = v.x, af[t][1] = v.y, af[t][2] = v.z, af[t][3] = v.w;
    }
    wgmma_fence();  // the A registers and the accumulators are written before the wgmmas
#pragma unroll
    for (int t = 0; t < 4; ++t) wgmma_bf16<kTokenTiles>(acc, af[t], staged.descriptor(buffer, t));
    wgmma_commit();
    wgmma_fence_accumulators(acc);
    wgmma_fence_fragments(af);
    if (wait_now) {  // else in flight until the next strip's wait
      wgmma_wait_all();
      wgmma_fence_accumulators(acc);
      wgmma_fence_fragments(af);
    }
  } else if constexpr (kStageX && !kHoldB) {
#pragma unroll
    for (int t = 0; t < 4; ++t) {
      const uint4 v = ld_shared_v4(lane_tile + 16 * t);
      const unsigned af[4] = {v.x, v.y, v.z, v.w};
      staged.multiply(acc, af, t, buffer);
    }
  } else {
#pragma unroll
    for (int t = 0; t < 4; ++t) {
      const uint4 v = ld_shared_v4(lane_tile + 16 * t);
      const unsigned af[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
      for (int nt = 0; nt < kTokenTiles; ++nt)
        mma_bf16_16816(acc[nt], af, bf[nt][t][0], bf[nt][t][1]);
    }
  }
}

// The direct path's stand-in for StagedActivations: nothing to stage.
struct NoStaging {
  __device__ void pin_registers() {}
};
template <bool kStageX, int kRowGroups, int kTokenTiles, int kSlices, bool kSwizzled>
struct StagingOf {
  using type = NoStaging;
};
template <int kRowGroups, int kTokenTiles, int kSlices, bool kSwizzled>
struct StagingOf<true, kRowGroups, kTokenTiles, kSlices, kSwizzled> {
  using type = StagedActivations<kRowGroups, kTokenTiles, kSlices>;
};
template <int kRowGroups, int kTokenTiles, int kSlices>
struct StagingOf<true, kRowGroups, kTokenTiles, kSlices, true> {  // wgmma: through the TMA
  using type = TmaActivations<kRowGroups, kTokenTiles, kSlices>;
};

// The CTA's FP32 partial sums in shared memory, one per warp and strip row, summed over the K
// slices in slice order (deterministic). [kTokens][kPitch]: token t's partial of row rr of strip
// row s of warp w at t * kPitch + (w * kRowStrips + s) * 16 + rr. A pitch of 4 mod 8 words past
// a multiple of 16 rows puts the 32 lanes of each fragment store in 32 banks (token 2q: 8q + g),
// and the sums read consecutive rows: no bank conflicts either way.
template <int kWarps, int kRowGroups, int kRowStrips, int kTokenTiles>
struct CtaPartials {
  // an enum, not static constexpr members: those become device globals in every cubin
  enum : int {
    kWarpsK = kWarps / kRowGroups,
    kPitch = kWarps * kRowStrips * kStripRows + 4,
    kRows = kRowGroups * kRowStrips * kStripRows,
    kTile = kRows * kTokenTiles * 8,
  };
  float* partial;

  // Every warp's accumulators into shared memory (which the CTA is done with otherwise); g, q:
  // the lane's row and column group in the mma fragments (lane >> 2, lane & 3).
  __device__ CtaPartials(unsigned char* smem, const float (&acc)[kRowStrips][kTokenTiles][4],
                         int warp, int g, int q)
      : partial(reinterpret_cast<float*>(smem)) {
    __syncthreads();
#pragma unroll
    for (int s = 0; s < kRowStrips; ++s) {
#pragma unroll
      for (int nt = 0; nt < kTokenTiles; ++nt) {
        float* p = partial + (nt * 8 + 2 * q) * kPitch + (warp * kRowStrips + s) * kStripRows + g;
        p[0] = acc[s][nt][0];
        p[kPitch] = acc[s][nt][1];
        p[8] = acc[s][nt][2];
        p[kPitch + 8] = acc[s][nt][3];
      }
    }
    __syncthreads();
  }

  // The CTA's sum of its row r for its token t: CTA strip row r / 16 is strip row s of member
  // (r / 16) / kRowStrips, whose warps are member + slice * kRowGroups.
  __device__ __forceinline__ float sum(int r, int t) const {
    const int strip_row = r / kStripRows;
    const int first_warp = strip_row / kRowStrips, s = strip_row % kRowStrips;
    float sum = 0.f;
#pragma unroll
    for (int k = 0; k < kWarpsK; ++k)
      sum += partial[t * kPitch + ((first_warp + k * kRowGroups) * kRowStrips + s) * kStripRows +
                     r % kStripRows];
    return sum;
  }
};

// One output element: the sum plus the bias, as BF16.
__device__ __forceinline__ void store_y(const GemmArgs& a, int row, int tok, float sum) {
  if (a.bias) sum += bf16_bits_to_float(a.bias[row]);
  a.y[static_cast<long long>(tok) * a.n + row] = float_to_bf16_bits(sum);
}

// Without split-K: the CTA's rows of y for its tokens, from its partials.
template <int kWarps, typename Partials>
__device__ __forceinline__ void store_cta_tile(const GemmArgs& a, const Partials& partials,
                                               int tok0) {
  for (int i = threadIdx.x; i < Partials::kTile; i += kWarps * 32) {
    const int r = i % Partials::kRows, t = i / Partials::kRows;  // consecutive threads: rows
    const int row = blockIdx.x * Partials::kRows + r, tok = tok0 + t;
    if (row >= a.n || tok >= a.m) continue;
    store_y(a, row, tok, partials.sum(r, t));
  }
}

__host__ __device__ constexpr int gcd(int a, int b) { return b == 0 ? a : gcd(b, a % b); }

template <int kWarps, int kRowGroups, int kRowStrips, int kTokenTiles, int kDepth,
          bool kStageX, bool kWgmma = false, int kXStrips = 1, int kSplits = 1>
__device__ __forceinline__ void zipgemm_rows(const GemmArgs& a, unsigned char* smem) {
  static_assert(kRowStrips == 1 || kRowStrips == 2, "a warp multiplies 1 or 2 strip rows");
  // wgmma: the 4 warps of a K slice (row groups) are one warpgroup, warp w its rows 16 w
  static_assert(!kWgmma || (kStageX && kRowGroups == 4 && kRowStrips == 1),
                "the wgmma variant needs staged activations, 4 row groups, 1 strip row");
  // kXStrips units of activations per copy and barrier (staged mma.sync path only)
  static_assert(kXStrips == 1 || (kStageX && !kWgmma && (kXStrips == 2 || kXStrips == 4)),
                "groups of 2 or 4 units need the staged mma.sync path");
  constexpr int kTokens = kTokenTiles * 8;
  constexpr int kWarpsK = kWarps / kRowGroups;  // warps sharing one row group split its K
  constexpr int kSlices = kWarpsK * kSplits;     // ... with those of the other kSplits CTAs
  constexpr int kBuffers = kDepth + 1;          // strips loaded ahead + the one being used
  // strips per unrolled loop body: a multiple of both, so that ring slot and strip row are
  // constants in it
  // wgmma with up to 32 tokens: a strip's wgmmas run on during the next strip's decode (5-6 %
  // faster at M = 32 on an H200), except across the loop's back edge, where ptxas would
  // serialize them (C7515), so the body is twice as long. At 64 and 128 tokens the overlap
  // measured 15 % slower (more live registers), so each strip waits for its own.
  constexpr bool kOverlapWgmma = kWgmma && kTokenTiles <= 4;
  // units per body: also a multiple of kXStrips, so that a unit's place in its group is too
  constexpr int kRingUnits = kBuffers * (kOverlapWgmma ? 2 : 1);
  constexpr int kUnroll = kRingUnits / gcd(kRingUnits, kXStrips) * kXStrips * kRowStrips;
  // the B fragments stay in registers for a unit's strips (direct: always; staged: when the
  // unit has several strips), or each tile reads them from the staged buffer (staged, one)
  constexpr bool kHoldB = !kStageX || kRowStrips > 1;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int g = lane >> 2, q = lane & 3;
  // Warp w works on row group w % kRowGroups of the CTA, i.e. on its kRowStrips strip rows,
  // and on K slice w / kRowGroups. A strip row past N (in the last CTA) redoes the last one,
  // so that every warp of a K slice takes part in the slice's barriers (staged); its sums are
  // never stored.
  const int member = warp % kRowGroups;
  // in the CTA: its staging buffer and barrier. On the wgmma path ptxas must see it as
  // warp-uniform to keep the buffers' descriptors and the TMA's operands in uniform registers:
  // a constant 0 for a single warpgroup, else broadcast from lane 0 (a shuffle, which ptxas
  // knows is uniform; as CUTLASS's canonical_warp_idx_sync). Without it each strip copied them
  // with 11 R2UR (SASS, every multi-warpgroup winner: 2-6 % fewer instructions per strip, 2-18
  // fewer registers). On the mma.sync path the broadcast costs registers (64 -> 77 at 16 warps,
  // half the CTAs per SM), so it stays there.
  const int slice = kWgmma && kWarpsK == 1 ? 0
                    : kWgmma ? __shfl_sync(0xFFFFFFFFu, warp / kRowGroups, 0)
                             : warp / kRowGroups;
  // in the row: K strips kslice, kslice + kSlices, ... (the CTAs of grid z take turns)
  const int kslice = kSplits == 1 ? slice : static_cast<int>(blockIdx.z) * kWarpsK + slice;
  const int first_strip_row = (static_cast<int>(blockIdx.x) * kRowGroups + member) * kRowStrips;
  const int last_strip_row = (a.n - 1) / kStripRows;
  const int tok0 = blockIdx.y * kTokens;
  unsigned lane_tile = shared_address(smem + warp * kWarpTileBytes + lane * kLaneStageBytes);
  const int count = kslice < a.strips_per_row_group
                        ? (a.strips_per_row_group - 1 - kslice) / kSlices + 1 : 0;
  // The last strip of a row is ragged when K is not a multiple of 64; the warps that own it
  // multiply it after the main loop, so that the loop's activation loads need no bounds.
  const bool owns_ragged = (a.k & 63) != 0 && count > 0 &&
                           kslice + (count - 1) * kSlices == a.strips_per_row_group - 1;
  const int full = count - owns_ragged;  // K strips (units) of the main loop
  unsigned base_pair = base_pair_of(a.base);
  const auto cols_left_of = [&](int j) { return a.k - (kslice + j * kSlices) * kStripCols; };
  const auto columns_of = [](int j) { return static_cast<unsigned>(j * kSlices * kStripCols); };

  float acc[kRowStrips][kTokenTiles][4];
#pragma unroll
  for (int s = 0; s < kRowStrips; ++s)
#pragma unroll
    for (int t = 0; t < kTokenTiles; ++t) acc[s][t][0] = acc[s][t][1] = acc[s][t][2] = acc[s][t][3] = 0.f;

  // Token row r of the CTA (rows past M read row M - 1) at the slice's first column.
  const auto x_row = [&](int r) {
    return a.x + static_cast<long long>(min(tok0 + r, a.m - 1)) * a.k + kslice * kStripCols;
  };
  // Direct: this lane's token rows (l >> 2 of each token tile); unit j's activations.
  const unsigned short* x_rows[kTokenTiles];
#pragma unroll
  for (int nt = 0; nt < kTokenTiles; ++nt) x_rows[nt] = x_row(nt * 8 + g);
  const auto activations_of = [&](int j) {
    StripActivations<kTokenTiles> x;
#pragma unroll
    for (int nt = 0; nt < kTokenTiles; ++nt) x.rows[nt] = x_rows[nt] + columns_of(j);
    x.cols_left = cols_left_of(j);
    return x;
  };
  // Staged: the slice's double buffer of kXStrips slots each, after every warp's decode
  // tiles; unit j sits in slot slot_of(j), copied at the start of the group before its own.
  const auto slot_of = [](int j) { return (j / kXStrips & 1) * kXStrips + j % kXStrips; };
  using Staging = typename StagingOf<kStageX, kRowGroups, kTokenTiles, kWarpsK, kWgmma>::type;
  Staging staged = [&] {
    if constexpr (kStageX) {
      unsigned first = shared_address(smem + kWarps * kWarpTileBytes);
      if constexpr (kWgmma) first = (first + 1023u) & ~1023u;  // swizzle atoms: 1024-aligned
      const unsigned base =
          first + slice * 2 * kXStrips * staged_buffer_bytes<kTokenTiles, kWgmma>();
      if constexpr (kWgmma) {
        // the mbarriers after everything else shared memory holds, the partial sums of the
        // epilogue included (ZipGemmConfig.smem_bytes)
        constexpr int kStaged = kWarps * kWarpTileBytes + 1024 +
                                kWarpsK * 2 * staged_buffer_bytes<kTokenTiles, true>();
        constexpr int kPartials = (kWarps * kRowStrips * kStripRows + 4) * kTokens * 4;
        constexpr int kBarriers = kStaged > kPartials ? kStaged : kPartials;
        return Staging(base, shared_address(smem + kBarriers) + 16u * slice, member, slice, lane,
                       a.x_map, kslice * kStripCols, tok0);
      } else {
        return Staging(base, member, slice, lane, x_row);
      }
    } else {
      return Staging{};
    }
  }();
  if constexpr (kStageX) {
#pragma unroll
    for (int n = 0; n < kXStrips; ++n)
      if (n < full) staged.template copy<false>(columns_of(n), n, 0);
  }

  // Strip i of this warp: K strip (unit) j = i / kRowStrips of its slice, strip row
  // s = i % kRowStrips; its data sits in ring[i % kBuffers], loaded at iteration i - kDepth;
  // its fallback offsets (first entry, next strip's first) in offsets / ends[i % kBuffers],
  // loaded at iteration i - kBuffers, so that the entry-word load of strip i, issued at
  // iteration i - 1, never waits for them. Loads past the
  // warp's last strip re-read that strip (a cache hit) instead of branching: addresses come
  // from a clamped strip index.
  LaneStreams streams(a, lane);
  unsigned row_start[kRowStrips];  // matrix strip number of each strip row's slice start
#pragma unroll
  for (int s = 0; s < kRowStrips; ++s)
    row_start[s] = static_cast<unsigned>(min(first_strip_row + s, last_strip_row)) *
                       a.strips_per_row_group + kslice;
  const int strips = full * kRowStrips;
  const auto strip_at = [&](int i) {
    const unsigned at = static_cast<unsigned>(min(i, strips - 1));
    const unsigned row = kRowStrips == 1 ? row_start[0] : (at & 1) ? row_start[kRowStrips - 1]
                                                                   : row_start[0];
    return row + at / kRowStrips * kSlices;
  };
  StripInput ring[kBuffers];
  int offsets[kBuffers];
  int ends[kBuffers];  // the next strip's offset: count = end - offset
  unsigned bf[kTokenTiles][4][2];  // the current unit's B fragments (kHoldB)
  unsigned af[4][4] = {};  // wgmma: the A fragments of the strip last issued
  EntrySource entry_source(a, lane);  // not const: pin() rewrites its members
  if (strips > 0) {
#pragma unroll
    for (int d = 0; d < kBuffers; ++d) {
      if (d < kDepth) ring[d].data = streams.load(strip_at(d));
      offsets[d] = streams.offset(strip_at(d));
      ends[d] = streams.offset(strip_at(d) + 1);
    }
    ring[0].entry_word = entry_source.load(offsets[0]);
    ring[0].skip = EntrySource::skip(offsets[0]);
    ring[0].count = ends[0] - offsets[0];
  }
  for (int i0 = 0; i0 < strips; i0 += kUnroll) {
    pin(lane_tile);
    pin(streams.sign_mantissa);
    pin(streams.planes);
    pin(streams.offsets);
    pin(base_pair);
    pin(entry_source.lane_words);
    pin(entry_source.last);
#pragma unroll
    for (int s = 0; s < kRowStrips; ++s) pin(row_start[s]);
    staged.pin_registers();
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int i = i0 + u;
      if (i >= strips) break;  // warp-uniform
      const int b = u % kBuffers, s = u % kRowStrips;
      const int j = i0 / kRowStrips + u / kRowStrips;
      ring[(b + kDepth) % kBuffers].data = streams.load(strip_at(i + kDepth));  // slot of i - 1
      StripInput& next = ring[(b + 1) % kBuffers];  // its offset arrived kDepth strips ago
      next.entry_word = entry_source.load(offsets[(b + 1) % kBuffers]);
      next.skip = EntrySource::skip(offsets[(b + 1) % kBuffers]);
      next.count = ends[(b + 1) % kBuffers] - offsets[(b + 1) % kBuffers];
      const int offset = offsets[b];
      offsets[b] = streams.offset(strip_at(i + kBuffers));  // offsets[b] is free again
      ends[b] = streams.offset(strip_at(i + kBuffers) + 1);
      if constexpr (!kStageX) {  // in flight while the strip decodes
        if (s == 0) {
          const StripActivations<kTokenTiles> x = activations_of(j);
          direct_fragments<kTokenTiles, false>(bf, x.rows, x.cols_left, lane);
        }
      }
      const auto copy_next = [&] {  // the next group's full units (called at a group's start)
        if constexpr (kStageX) {
#pragma unroll
          for (int n = 0; n < kXStrips; ++n) {
            const int next = j + kXStrips + n;
            if (next < full) staged.template copy<false>(columns_of(next), slot_of(next), 0);
          }
        }
      };
      multiply_strip<kTokenTiles, kStageX, kHoldB, kWgmma>(
          acc[s], ring[b], bf, s == 0, s == 0 && j % kXStrips == 0, staged, slot_of(j),
          copy_next, base_pair, lane_tile, a, offset, af, !kOverlapWgmma || u == kUnroll - 1);
    }
  }
  if (owns_ragged) {  // once per row: load it directly
    // Its activations go to the first slot of the buffer after the last group's, which nobody
    // has read since that group's barrier (staged).
    const int ragged_slot = ((full + kXStrips - 1) / kXStrips & 1) * kXStrips;
    if constexpr (kStageX) {
      staged.template copy<true>(columns_of(full), ragged_slot, cols_left_of(full));
    } else {
      const StripActivations<kTokenTiles> x = activations_of(full);
      direct_fragments<kTokenTiles, true>(bf, x.rows, x.cols_left, lane);
    }
    __syncwarp();
#pragma unroll
    for (int s = 0; s < kRowStrips; ++s) {
      const unsigned strip = row_start[s] + static_cast<unsigned>(full) * kSlices;
      StripInput ragged;
      ragged.data = streams.load(strip);
      const int offset = streams.offset(strip);
      ragged.entry_word = entry_source.load(offset);
      ragged.skip = EntrySource::skip(offset);
      ragged.count = streams.offset(strip + 1) - offset;
      multiply_strip<kTokenTiles, kStageX, kHoldB, kWgmma>(
          acc[s], ragged, bf, s == 0, s == 0, staged, ragged_slot, NoCopy{}, base_pair,
          lane_tile, a, offset, af, true);
    }
  }

  if constexpr (kWgmma) {  // the last strip's wgmmas
    wgmma_fence_accumulators(acc[0]);
    wgmma_wait_all();
    wgmma_fence_accumulators(acc[0]);
  }
  // Sum each strip row's K-slice partials in slice order and write BF16 rows of y (split-K:
  // FP32 partial tiles, which the tile's last CTA sums in split order).
  const CtaPartials<kWarps, kRowGroups, kRowStrips, kTokenTiles> partials(smem, acc, warp, g, q);
  constexpr int kRows = decltype(partials)::kRows;
  constexpr int kTile = decltype(partials)::kTile;
  const auto cta_sum = [&](int r, int t) { return partials.sum(r, t); };
  const auto store = [&](int row, int tok, float sum) { store_y(a, row, tok, sum); };
  if constexpr (kSplits == 1) {
    store_cta_tile<kWarps>(a, partials, tok0);
  } else {
    // 1. This CTA's partial tile to its slot of the workspace (rows past N and tokens past M
    // too: finite sums of clamped rows, never stored), past L1.
    const unsigned tile = blockIdx.y * gridDim.x + blockIdx.x;
    float* tiles = a.workspace + static_cast<long long>(tile) * kSplits * kTile;
    for (int i = threadIdx.x; i < kTile; i += kWarps * 32)
      __stcg(tiles + blockIdx.z * kTile + i, cta_sum(i % kRows, i / kRows));
    // 2. The last of the tile's kSplits CTAs to count itself sums all of their tiles in split
    // order and puts the counter back to 0 for the next launch (nobody else touches it again
    // in this one), so a CUDA graph can replay the kernel.
    __threadfence();  // our partials are visible device-wide before we count ourselves
    __syncthreads();  // ... all of them, and everybody is done reading `partial`
    unsigned* last = reinterpret_cast<unsigned*>(smem);
    if (threadIdx.x == 0) {
      *last = atomicAdd(a.counters + tile, 1u) == kSplits - 1;
      if (*last) a.counters[tile] = 0u;
    }
    __syncthreads();
    if (!*last) return;
    __threadfence();  // the other CTAs' partials (they fenced before counting) are seen
    for (int i = threadIdx.x; i < kTile; i += kWarps * 32) {
      const int r = i % kRows, t = i / kRows;
      const int row = blockIdx.x * kRows + r, tok = tok0 + t;
      if (row >= a.n || tok >= a.m) continue;
      float sum = 0.f;
#pragma unroll
      for (int z = 0; z < kSplits; ++z) sum += __ldcg(tiles + z * kTile + i);
      store(row, tok, sum);
    }
  }
}

}  // namespace zipgen
