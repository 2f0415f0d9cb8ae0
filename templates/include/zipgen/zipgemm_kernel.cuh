// ZipGEMM: y[M, N] = x[M, K] @ W[N, K]^T (+ bias) with W in TCA-TBE, decoded on the fly.
//
// One CTA computes kRowGroups * 16 output rows for kTokenTiles * 8 tokens. Each row group of 16
// rows (one strip row of W) gets kWarps / kRowGroups warps that split its K: the warp of K slice
// s takes the strips s, s + kWarps / kRowGroups, ... of the row. Per strip a warp
//   1. has the strip's compressed words in registers already (loads issued kDepth strips ahead,
//      into a ring of kDepth + 1 buffers that the unrolled loop indexes statically: no moves),
//   2. decodes two weights per four instructions and stores each lane's 16 registers to its
//      own slice of shared memory (four 16-byte stores),
//   3. patches the lane's few fallback weights there (exponents prefetched into a 128-byte
//      stash), and reads its registers back (four 16-byte loads): the A fragments of the
//      strip's four tensor-core tiles, in the order the format stores them,
//   4. multiplies them with every token tile: the strip is decoded once, whatever M is.
// The warps' FP32 partial sums are added in a fixed order at the end (deterministic), so the
// result is the same on every run.
#pragma once
#include <zipgen/mma.cuh>
#include <zipgen/tcatbe.cuh>

namespace zipgen {

constexpr int kStashBytes = 128;  // fallback exponents a warp prefetches per strip
// A lane's staged registers: 64 bytes, padded to 80 so that the 16-byte stores and loads of
// any 8 consecutive lanes (one shared-memory wavefront) hit 8 different 4-bank groups.
constexpr int kLaneStageBytes = 80;
constexpr int kWarpTileBytes = kLanes * kLaneStageBytes;
// A token tile's activations of one strip (8 tokens x 64 columns), staged so that ldmatrix
// builds the mma B fragments: rows of 128 bytes at a pitch of 144, so that the 8 rows one
// ldmatrix phase reads fall into different banks.
constexpr int kXPitchBytes = 144;
constexpr int kXTileBytes = 8 * kXPitchBytes;

// A warp's shared memory: its lanes' decode tiles, the staged activations (stage_x only), then
// one fallback stash per ring buffer.
template <int kTokenTiles, bool kStageX>
__host__ __device__ constexpr int warp_stage_bytes() {
  return kWarpTileBytes + (kStageX ? kTokenTiles * kXTileBytes : 0);
}

// Keep a loop-invariant value in a register. ptxas otherwise recomputes lane-derived values
// (thread index, shared-memory window, kernel parameters) in every strip to save registers,
// which costs ~30 issue slots per strip in an issue-bound loop.
template <typename T>
__device__ __forceinline__ void pin(T& v) {
  if constexpr (sizeof(T) == 8) {
    asm volatile("" : "+l"(v));
  } else {
    asm volatile("" : "+r"(v));
  }
}

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

// A lane's words of strip s: 16-byte sign-mantissa chunks lane and 32 + lane of the strip's
// 1024 bytes, plane words lane, 32 + lane, 64 + lane, and the strip's fallback offset. Strip
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

// Where this lane's 4 bytes of a strip's fallback exponents come from: bytes (offset & ~3) +
// 4 lane .. + 3 of the stream, or zeros past its end. Lane-constant parts computed once.
struct StashSource {
  const unsigned char* lane_bytes;  // fallback_exponents + 4 lane
  int last;                         // largest (offset & ~3) whose word is inside the stream

  __device__ StashSource(const GemmArgs& a, int lane)
      : lane_bytes(a.fallback_exponents + 4 * lane), last(a.fallback_bytes - 4 - 4 * lane) {}

  __device__ __forceinline__ unsigned load(int offset) const {
    const int at = offset & ~3;
    return at <= last ? __ldg(reinterpret_cast<const unsigned*>(lane_bytes + at)) : 0u;
  }
};

// A 16-bit value and a stream of bytes in shared memory, for patch_fallbacks.
struct SharedHalf {
  unsigned addr;
  __device__ __forceinline__ unsigned load() const { return ld_shared_u16(addr); }
  __device__ __forceinline__ void store(unsigned v) const { st_shared_u16(addr, v); }
};
struct SharedBytes {
  unsigned addr;
  __device__ __forceinline__ unsigned operator*() const { return ld_shared_u8(addr); }
  __device__ __forceinline__ SharedBytes& operator++() { ++addr; return *this; }
};

// Everything a warp needs to multiply one strip, once its compressed words have arrived.
struct StripInput {
  LaneStrip data;
  unsigned stash;  // this lane's 4 bytes of the strip's fallback exponents (load_stash_word)
  int skip;        // offset & 3: where the strip's exponents start in the stash
};

// The activations (mma B operands) of a strip come one of two ways, chosen per kernel
// (ZipGemmConfig.stage_x). Both start from x_strip[nt]: this lane's token row (l >> 2 of token
// tile nt; tokens past M read row M - 1, whose sums are never stored) at the strip's first
// column. cols_left = K - that column: in a ragged last strip (kRagged) columns past K read
// zeros; K % 8 == 0, so a pair or a 16-byte chunk is wholly inside or outside.
//
// Direct: each lane loads its B fragments itself, 8 x 4 bytes per token tile. Cheapest in
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

// Staged: lanes load whole 16-byte chunks (lane l: chunks 2 (l & 3) and 2 (l & 3) + 1 of its
// row), store them to shared memory and read B fragments back with ldmatrix.
template <int kTokenTiles, bool kRagged>
__device__ __forceinline__ void load_chunks(uint4 (&xv)[kTokenTiles][2],
                                            const unsigned short* const (&x_strip)[kTokenTiles],
                                            int cols_left, int lane) {
  const int first = 16 * (lane & 3);
#pragma unroll
  for (int nt = 0; nt < kTokenTiles; ++nt)
#pragma unroll
    for (int h = 0; h < 2; ++h)
      xv[nt][h] = !kRagged || first + 8 * h < cols_left
                      ? __ldg(reinterpret_cast<const uint4*>(x_strip[nt] + first) + h)
                      : make_uint4(0, 0, 0, 0);
}

// Rows at a pitch of 9 chunks; a lane's two chunks are 2 (l & 3) + h, so the 8 lanes of a
// store phase (two rows) hit 8 different 4-bank groups, and so do the 8 rows of an ldmatrix.
template <int kTokenTiles>
__device__ __forceinline__ void store_chunks(const uint4 (&xv)[kTokenTiles][2], unsigned x_stage,
                                             int lane) {
  const unsigned at = x_stage + (lane >> 2) * kXPitchBytes + 32 * (lane & 3);
#pragma unroll
  for (int nt = 0; nt < kTokenTiles; ++nt)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const uint4 v = xv[nt][h];
      st_shared_v4(at + nt * kXTileBytes + 16 * h, v.x, v.y, v.z, v.w);
    }
}

// bf[t] = {b0, b1} of tensor-core tile t (columns 16t .. 16t + 15) of one staged token tile.
// ldmatrix.x4: lane l addresses row l & 7 of matrix l >> 3 = columns 8 (l >> 3) ..; matrices
// 0-3 are b0, b1 of tile 2p and b0, b1 of tile 2p + 1 (64 bytes further for p = 1).
__device__ __forceinline__ void staged_fragments(unsigned (&bf)[4][2], unsigned x_tile, int lane) {
  const unsigned read_at = x_tile + (lane & 7) * kXPitchBytes + 16 * (lane >> 3);
#pragma unroll
  for (int p = 0; p < 2; ++p) {
    unsigned r[4];
    ldmatrix_x4_shared(r, read_at + 64 * p);
    bf[2 * p][0] = r[0];
    bf[2 * p][1] = r[1];
    bf[2 * p + 1][0] = r[2];
    bf[2 * p + 1][1] = r[3];
  }
}

// Where a strip's activations come from (see above): its token rows at the strip's first
// column, and K minus that column.
template <int kTokenTiles>
struct StripActivations {
  const unsigned short* rows[kTokenTiles];
  int cols_left;
};

// Decode one strip into this lane's shared-memory slice, patch its fallbacks, and multiply.
template <int kTokenTiles, bool kStageX, bool kRagged>
__device__ __forceinline__ void multiply_strip(float (&acc)[kTokenTiles][4], const StripInput& in,
                                               const StripActivations<kTokenTiles>& x,
                                               unsigned base_pair,
                                               unsigned x_stage, unsigned lane_tile,
                                               unsigned stash, unsigned stash_lane,
                                               const GemmArgs& a, int offset_if_overflow,
                                               int lane) {
  // 0. activations, in flight while the strip decodes: B fragments (direct) or 16-byte chunks
  // to stage (kStageX)
  unsigned bf[kTokenTiles][4][2];
  uint4 xv[kTokenTiles][2];
  if constexpr (kStageX) {
    load_chunks<kTokenTiles, kRagged>(xv, x.rows, x.cols_left, lane);
  } else {
    direct_fragments<kTokenTiles, kRagged>(bf, x.rows, x.cols_left, lane);
  }

  // 1. decode: registers 4t .. 4t + 3 are the A fragment of tile t
  const CodeWords codes = code_words(in.data);
  unsigned regs[16];
#pragma unroll
  for (int r = 0; r < 16; ++r) regs[r] = decode_pair(in.data, codes, r, base_pair);
#pragma unroll
  for (int t = 0; t < 4; ++t)
    st_shared_v4(lane_tile + 16 * t, regs[4 * t], regs[4 * t + 1], regs[4 * t + 2], regs[4 * t + 3]);

  // 2. fallbacks: the strip's exponents follow lane by lane, each lane's in plane-bit order
  const unsigned fallbacks = fallback_mask(in.data);
  const int own = __popc(fallbacks);
  const int below = lanes_below(own);
  const int total = __shfl_sync(0xFFFFFFFFu, below + own, 31);
  if constexpr (kStageX) {
    __syncwarp();  // every lane is done with the previous strip's staged activations
    store_chunks<kTokenTiles>(xv, x_stage, lane);
  }
  st_shared_u32(stash_lane, in.stash);  // stash + 4 lane
  __syncwarp();
  // plane bit b = r + 16e is half e of register r: byte 4r + 2e of the lane's slice
  const auto slot_of = [lane_tile](unsigned b) {  // 4 (b & 15) + 2 (b >> 4), in fewer steps
    return SharedHalf{lane_tile + 4 * b - 62 * (b >> 4)};
  };
  if (in.skip + total <= kStashBytes) {  // warp-uniform; always for trained weights (~35)
    patch_fallbacks(fallbacks, SharedBytes{stash + in.skip + below}, slot_of);
  } else {  // the rest of a fallback-heavy strip's exponents come from global memory
    const unsigned char* stream = a.fallback_exponents + (offset_if_overflow & ~3);
    struct Overflow {
      unsigned stash;
      const unsigned char* stream;
      int i;
      __device__ unsigned operator*() const {
        return i < kStashBytes ? ld_shared_u8(stash + i) : __ldg(stream + i);
      }
      __device__ Overflow& operator++() { ++i; return *this; }
    };
    patch_fallbacks(fallbacks, Overflow{stash, stream, in.skip + below}, slot_of);
  }

  // 3. tensor cores: the strip's 4 tiles of 16x16 (A fragments back from the lane's own
  // slice) against every token tile. Staged: one token tile at a time, re-reading the A
  // fragments, so that only one tile's B fragments are live.
  if constexpr (kStageX) {
#pragma unroll
    for (int nt = 0; nt < kTokenTiles; ++nt) {
      unsigned b[4][2];
      staged_fragments(b, x_stage + nt * kXTileBytes, lane);
#pragma unroll
      for (int t = 0; t < 4; ++t) {
        const uint4 v = ld_shared_v4(lane_tile + 16 * t);
        const unsigned af[4] = {v.x, v.y, v.z, v.w};
        mma_bf16_16816(acc[nt], af, b[t][0], b[t][1]);
      }
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

template <int kWarps, int kRowGroups, int kTokenTiles, int kDepth, bool kStageX>
__device__ __forceinline__ void zipgemm_rows(const GemmArgs& a, unsigned char* smem) {
  constexpr int kTokens = kTokenTiles * 8;
  constexpr int kWarpsK = kWarps / kRowGroups;  // warps sharing one row group split its K
  constexpr int kBuffers = kDepth + 1;          // strips loaded ahead + the one being used
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int g = lane >> 2, q = lane & 3;
  // Warp w works on row group w % kRowGroups of the CTA and on its K slice w / kRowGroups;
  // warps of one K slice read the same activations at about the same time (L1 hits).
  const int row_group = blockIdx.x * kRowGroups + warp % kRowGroups;
  const int slice = warp / kRowGroups;
  const int tok0 = blockIdx.y * kTokens;
  constexpr int kStageBytes = warp_stage_bytes<kTokenTiles, kStageX>();
  unsigned char* warp_smem = smem + warp * (kStageBytes + kBuffers * kStashBytes);
  unsigned lane_tile = shared_address(warp_smem + lane * kLaneStageBytes);
  unsigned x_stage = shared_address(warp_smem + kWarpTileBytes);
  unsigned stash_slots = shared_address(warp_smem + kStageBytes);
  unsigned stash_lane = stash_slots + 4 * lane;
  const bool rows_exist = row_group * kStripRows < a.n;
  const int count = rows_exist && slice < a.strips_per_row_group
                        ? (a.strips_per_row_group - 1 - slice) / kWarpsK + 1 : 0;
  // The last strip of a row is ragged when K is not a multiple of 64; the warp that owns it
  // multiplies it after the main loop, so that the loop's activation loads need no bounds.
  const bool owns_ragged = (a.k & 63) != 0 && count > 0 &&
                           slice + (count - 1) * kWarpsK == a.strips_per_row_group - 1;
  const int full = count - owns_ragged;
  unsigned base_pair = base_pair_of(a.base);

  float acc[kTokenTiles][4];
#pragma unroll
  for (int t = 0; t < kTokenTiles; ++t) acc[t][0] = acc[t][1] = acc[t][2] = acc[t][3] = 0.f;

  // This lane's token rows (l >> 2 of each token tile) at the slice's first column; tokens
  // past M read row M - 1.
  const unsigned short* x_rows[kTokenTiles];
#pragma unroll
  for (int nt = 0; nt < kTokenTiles; ++nt)
    x_rows[nt] = a.x + static_cast<long long>(min(tok0 + nt * 8 + (lane >> 2), a.m - 1)) * a.k +
                 slice * kStripCols;

  // Strip j of this warp (strip number strip0 + j * kWarpsK of the matrix): its data sits in
  // ring[j % kBuffers], loaded at iteration j - kDepth; its fallback offset in
  // offsets[j % kBuffers], loaded at iteration j - kBuffers, so that the stash load of strip j,
  // issued at iteration j - 1, never waits for it. Loads past the warp's last strip re-read that
  // strip (a cache hit) instead of branching: addresses come from a clamped strip index.
  LaneStreams streams(a, lane);
  const unsigned strip0 = static_cast<unsigned>(row_group) * a.strips_per_row_group + slice;
  const int last = full - 1;
  const auto strip_at = [&](int j) { return strip0 + static_cast<unsigned>(min(j, last)) * kWarpsK; };
  StripInput ring[kBuffers];
  int offsets[kBuffers];
  StashSource stash_source(a, lane);
  if (full > 0) {
#pragma unroll
    for (int d = 0; d < kBuffers; ++d) {
      if (d < kDepth) ring[d].data = streams.load(strip_at(d));
      offsets[d] = streams.offset(strip_at(d));
    }
    ring[0].stash = stash_source.load(offsets[0]);
    ring[0].skip = offsets[0] & 3;
  }
  for (int j0 = 0; j0 < full; j0 += kBuffers) {
    pin(x_stage);
    pin(lane_tile);
    pin(stash_slots);
    pin(stash_lane);
    pin(streams.sign_mantissa);
    pin(streams.planes);
    pin(streams.offsets);
    pin(base_pair);
    pin(stash_source.lane_bytes);
    pin(stash_source.last);
#pragma unroll
    for (int u = 0; u < kBuffers; ++u) {
      const int j = j0 + u;
      if (j >= full) break;  // warp-uniform
      ring[(u + kDepth) % kBuffers].data = streams.load(strip_at(j + kDepth));  // slot of j - 1
      StripInput& next = ring[(u + 1) % kBuffers];  // its offset arrived kDepth strips ago
      next.stash = stash_source.load(offsets[(u + 1) % kBuffers]);
      next.skip = offsets[(u + 1) % kBuffers] & 3;
      const int offset = offsets[u];
      offsets[u] = streams.offset(strip_at(j + kBuffers));  // offsets[u] is free again
      StripActivations<kTokenTiles> x;
#pragma unroll
      for (int nt = 0; nt < kTokenTiles; ++nt) x.rows[nt] = x_rows[nt] + j * kWarpsK * kStripCols;
      x.cols_left = a.k;  // not ragged: no bounds needed
      multiply_strip<kTokenTiles, kStageX, false>(acc, ring[u], x, base_pair,
                                         x_stage, lane_tile, stash_slots + u * kStashBytes,
                                         stash_lane + u * kStashBytes, a, offset, lane);
    }
  }
  if (owns_ragged) {  // once per row: load it directly
    __syncwarp();  // stash slot 0 may still be read by the last loop iteration's lanes
    const unsigned s = strip0 + static_cast<unsigned>(full) * kWarpsK;
    StripInput ragged;
    ragged.data = streams.load(s);
    const int offset = streams.offset(s);
    ragged.stash = stash_source.load(offset);
    ragged.skip = offset & 3;
    StripActivations<kTokenTiles> x;
#pragma unroll
    for (int nt = 0; nt < kTokenTiles; ++nt) x.rows[nt] = x_rows[nt] + full * kWarpsK * kStripCols;
    x.cols_left = a.k - (slice + full * kWarpsK) * kStripCols;
    multiply_strip<kTokenTiles, kStageX, true>(acc, ragged, x, base_pair, x_stage,
                                               lane_tile, stash_slots, stash_lane, a, offset,
                                               lane);
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
