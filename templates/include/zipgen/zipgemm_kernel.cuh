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

// The activation fragments (mma B operands) of a strip for every token tile: x_rows[nt] points
// at this lane's token row, column col0 + 2q. Tokens past M read row M - 1 (their sums are
// never stored); in a ragged last strip (kRagged) columns past K read zeros.
template <int kTokenTiles, bool kRagged>
__device__ __forceinline__ void load_activations(unsigned (&bf)[kTokenTiles][4][2],
                                                 const unsigned* const (&x_rows)[kTokenTiles],
                                                 int col_left) {
#pragma unroll
  for (int nt = 0; nt < kTokenTiles; ++nt)
#pragma unroll
    for (int t = 0; t < 4; ++t) {
      // col_left: K columns from this lane's first one (16t + 2q) on; K % 8 == 0, so a pair
      // is either wholly inside K or wholly past it
      const bool in0 = !kRagged || 16 * t < col_left, in1 = !kRagged || 16 * t + 8 < col_left;
      bf[nt][t][0] = in0 ? __ldg(x_rows[nt] + 8 * t) : 0u;
      bf[nt][t][1] = in1 ? __ldg(x_rows[nt] + 8 * t + 4) : 0u;
    }
}

// Decode one strip into this lane's shared-memory slice, patch its fallbacks, and multiply.
template <int kTokenTiles, bool kRagged>
__device__ __forceinline__ void multiply_strip(float (&acc)[kTokenTiles][4], const StripInput& in,
                                               const unsigned* const (&x_rows)[kTokenTiles],
                                               int col_left, unsigned base_pair,
                                               unsigned lane_tile, unsigned stash,
                                               unsigned stash_lane, const GemmArgs& a,
                                               int offset_if_overflow) {
  unsigned bf[kTokenTiles][4][2];
  load_activations<kTokenTiles, kRagged>(bf, x_rows, col_left);  // in flight while we decode

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

  // 3. tensor cores: the strip's 4 tiles of 16x16 against every token tile
#pragma unroll
  for (int t = 0; t < 4; ++t) {
    const uint4 v = ld_shared_v4(lane_tile + 16 * t);
    const unsigned af[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int nt = 0; nt < kTokenTiles; ++nt) mma_bf16_16816(acc[nt], af, bf[nt][t][0], bf[nt][t][1]);
  }
}

template <int kWarps, int kRowGroups, int kTokenTiles, int kDepth>
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
  unsigned char* warp_smem = smem + warp * (kWarpTileBytes + kBuffers * kStashBytes);
  unsigned lane_tile = shared_address(warp_smem + lane * kLaneStageBytes);
  unsigned stash_slots = shared_address(warp_smem + kWarpTileBytes);
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

  // This lane's activation rows (as 32-bit pairs, column 2q); tokens past M read row M - 1.
  const unsigned* x_rows[kTokenTiles];
#pragma unroll
  for (int nt = 0; nt < kTokenTiles; ++nt)
    x_rows[nt] = reinterpret_cast<const unsigned*>(
        a.x + static_cast<long long>(min(tok0 + nt * 8 + g, a.m - 1)) * a.k + slice * kStripCols +
        2 * q);

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
      multiply_strip<kTokenTiles, false>(acc, ring[u], x_rows, kStripCols, base_pair, lane_tile,
                                         stash_slots + u * kStashBytes,
                                         stash_lane + u * kStashBytes, a, offset);
#pragma unroll
      for (int nt = 0; nt < kTokenTiles; ++nt) x_rows[nt] += kWarpsK * kStripCols / 2;
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
    const int col_left = a.k - (slice + full * kWarpsK) * kStripCols - 2 * q;
    multiply_strip<kTokenTiles, true>(acc, ragged, x_rows, col_left, base_pair, lane_tile,
                                      stash_slots, stash_lane, a, offset);
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
