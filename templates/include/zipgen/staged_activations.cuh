// Activations through shared memory for ZipGEMM's staged path (ZipGemmConfig.stage_x).
//
// The kRowGroups warps that work on one K slice (zipgemm_kernel.cuh: same strip columns,
// different rows) share a double buffer holding the kTokenTiles * 8 token rows of the slice's
// current strip (64 columns): each activation byte crosses from L2 once per CTA and K slice,
// not once per warp. Lanes copy 32-byte pairs of chunks straight into shared memory with
// cp.async (no registers held across the decode), one strip ahead, and read mma B fragments
// with ldmatrix. One barrier per strip among those warps (a __syncwarp for one row group),
// between the wait for strip j's copies and the issue of strip j + 1's into the other buffer:
// past it, every warp is done reading strip j - 1's buffer and sees all of strip j's.
//
// The wgmma variant stages through the TMA instead (tma_activations.cuh), into buffers of the
// 128-byte swizzle layout (kSwizzled below: rows of exactly 128 bytes).
#pragma once
#include <zipgen/mma.cuh>
#include <zipgen/tcatbe.cuh>
#include <zipgen/wgmma.cuh>

namespace zipgen {

// A token tile of one strip (8 rows of 64 columns): rows of 128 bytes at a pitch of 144, so
// the 8 rows one ldmatrix phase reads, and the 8 chunks a copy phase writes (two rows of 4
// lanes), fall into 8 different 4-bank groups.
template <bool kSwizzled>
__host__ __device__ constexpr int x_pitch_bytes() {
  return kSwizzled ? 128 : 144;
}

template <int kTokenTiles, bool kSwizzled = false>
__host__ __device__ constexpr int staged_buffer_bytes() {
  return kTokenTiles * 8 * x_pitch_bytes<kSwizzled>();
}

// One lane's part in its K slice's shared staging. In a ragged last strip (kRagged), chunks
// past K (cols_left = K - the strip's first column) are zero-filled; K % 8 == 0, so a chunk is
// wholly inside or outside.
// bar.sync kId .. kLast with the id as an immediate: with a register id ptxas reserves all 16
// named barriers (EIATTR_NUM_BARRIERS 16), and the SM's barriers then cap residency at 4 CTAs
// (Nsight Compute "Block Limit Barriers"); with immediates it reserves kLast + 1.
template <int kId, int kLast, int kThreads>
__device__ __forceinline__ void named_barrier(int id) {
  if (kId == kLast || id == kId) {  // the last one needs no test: id is one of them
    asm volatile("bar.sync %0, %1;\n" ::"n"(kId), "n"(kThreads) : "memory");
    return;
  }
  if constexpr (kId < kLast) named_barrier<kId + 1, kLast, kThreads>(id);
}

// bar.sync on barrier `id` (1 .. kSlices) of kThreads threads. Immediates (named_barrier) cost a
// compare chain: kSlices predicated BAR.SYNCs issued per barrier, and with several slices on the
// wgmma path ptxas then kept the global-memory descriptor in registers (an R2UR before every
// load). A register id costs the 16 reserved barriers instead, which callers choose where
// something else caps the SM at 4 CTAs or fewer anyway (kRegisterId).
template <int kSlices, int kThreads, bool kRegisterId>
__device__ __forceinline__ void slice_barrier(int id) {
  if constexpr (kRegisterId && kSlices > 1) {
    asm volatile("bar.sync %0, %1;\n" ::"r"(id), "n"(kThreads) : "memory");
  } else {
    named_barrier<1, kSlices, kThreads>(id);
  }
}

template <int kRowGroups, int kTokenTiles, int kSlices>
struct StagedActivations {
  static constexpr int kXPitchBytes = x_pitch_bytes<false>();
  static constexpr int kXTileBytes = 8 * kXPitchBytes;
  // pair p of a strip: token row p >> 2, chunks 2 (p & 3) and 2 (p & 3) + 1 (columns
  // 16 (p & 3) .. + 15); the group's lane i copies pairs i, i + kGroupLanes, ...
  static constexpr int kPairs = 32 * kTokenTiles;
  static constexpr int kGroupLanes = 32 * kRowGroups;
  static constexpr int kPerLane = (kPairs + kGroupLanes - 1) / kGroupLanes;
  static constexpr bool kEveryLaneCopies = kPairs % kGroupLanes == 0;
  static constexpr int kBufferBytes = staged_buffer_bytes<kTokenTiles>();
  static constexpr int kRowStep = kGroupLanes / 4;  // token rows between a lane's pairs

  const unsigned short* src[kPerLane];  // this lane's pairs in the slice's first strip
  unsigned copy_to;  // shared address of this lane's first pair (its first chunk) in buffer 0
  unsigned read_at;  // this lane's ldmatrix row address in buffer 0 (see multiply)
  int column;        // 16 (p & 3): the lane's first column within a strip
  bool copies;       // false for the idle lanes when the group has more lanes than pairs
  int barrier;       // named barrier of the group (kRowGroups > 1)

  // base: the slice's double buffer; member: which of the group's warps this is; x_rows(r):
  // token row r of the CTA (rows past M clamped by the caller) at the slice's first column.
  template <typename XRows>
  __device__ StagedActivations(unsigned base, int member, int slice, int lane, XRows x_rows) {
    const int i = member * 32 + lane;
    column = 16 * (i & 3);
    copies = kEveryLaneCopies || i < kPairs;
#pragma unroll
    for (int u = 0; u < kPerLane; ++u)
      src[u] = x_rows(min((i >> 2) + u * kRowStep, 8 * kTokenTiles - 1)) + column;
    const int row = i >> 2, chunk = 2 * (i & 3);
    copy_to = base + row * kXPitchBytes + 16 * chunk;
    read_at = base + (lane >> 4) * kXTileBytes + (lane & 7) * kXPitchBytes + 16 * ((lane >> 3) & 1);
    barrier = 1 + slice;  // 0 is __syncthreads'
  }

  __device__ __forceinline__ void pin_registers() {
#pragma unroll
    for (int u = 0; u < kPerLane; ++u) pin(src[u]);
    pin(copy_to);
    pin(read_at);
  }

  // Issue the copies of strip `offset` columns past the slice's first strip into buffer b.
  template <bool kRagged>
  __device__ __forceinline__ void copy(unsigned offset, int b, int cols_left) const {
    if (!copies) return;
#pragma unroll
    for (int u = 0; u < kPerLane; ++u) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        // a zero-filled chunk still needs a valid address: the row at the strip's first column
        const bool in = !kRagged || column + 8 * h < cols_left;
        const unsigned short* from = src[u] + offset;
        const int chunk_at = 16 * h;
        cp_async_16(copy_to + b * kBufferBytes + u * kRowStep * kXPitchBytes + chunk_at,
                    in ? from + 8 * h : from - column, in ? 16u : 0u);
      }
    }
    cp_async_commit();
  }

  // This lane's copies have landed (wait), and everybody's are visible to the group (sync).
  // (The buffer matters to TmaActivations only.)
  __device__ __forceinline__ void wait_and_sync(int /*b*/) const {
    cp_async_wait_all();
    sync();
  }

  __device__ __forceinline__ void sync() const {
    if constexpr (kRowGroups == 1) {
      __syncwarp();
    } else {
      // 16 warps: 512 threads, so at most 4 CTAs per SM whatever the barriers
      slice_barrier<kSlices, 32 * kRowGroups, kSlices * kRowGroups == 16>(barrier);
    }
  }

  // The B fragments of every tensor-core tile t and token tile nt of the strip in buffer b,
  // read as multiply() reads them, for a warp that multiplies several strips with them.
  __device__ __forceinline__ void fragments(unsigned (&bf)[kTokenTiles][4][2], int b) const {
#pragma unroll
    for (int t = 0; t < 4; ++t) {
      const unsigned at = read_at + b * kBufferBytes + 32 * t;
#pragma unroll
      for (int nt = 0; nt + 1 < kTokenTiles; nt += 2) {
        unsigned r[4];
        ldmatrix_x4_shared(r, at + nt * kXTileBytes);
        bf[nt][t][0] = r[0], bf[nt][t][1] = r[1], bf[nt + 1][t][0] = r[2], bf[nt + 1][t][1] = r[3];
      }
      if constexpr (kTokenTiles % 2 == 1) {
        unsigned r[2];
        ldmatrix_x2_shared(r, at + (kTokenTiles - 1) * kXTileBytes);
        bf[kTokenTiles - 1][t][0] = r[0], bf[kTokenTiles - 1][t][1] = r[1];
      }
    }
  }

  // acc[nt] += A (4 registers, tensor-core tile t of the strip) x B of token tile nt, for
  // every token tile, from buffer b. ldmatrix.x4 gives b0, b1 of token tiles nt and nt + 1:
  // lane l addresses row l & 7 of token tile nt + (l >> 4), chunk 2t + ((l >> 3) & 1); .x2
  // (an odd last token tile) uses lanes 0-15 only.
  __device__ __forceinline__ void multiply(float (&acc)[kTokenTiles][4], const unsigned (&af)[4],
                                           int t, int b) const {
    const unsigned at = read_at + b * kBufferBytes + 32 * t;
#pragma unroll
    for (int nt = 0; nt + 1 < kTokenTiles; nt += 2) {
      unsigned r[4];
      ldmatrix_x4_shared(r, at + nt * kXTileBytes);
      mma_bf16_16816(acc[nt], af, r[0], r[1]);
      mma_bf16_16816(acc[nt + 1], af, r[2], r[3]);
    }
    if constexpr (kTokenTiles % 2 == 1) {
      unsigned r[2];
      ldmatrix_x2_shared(r, at + (kTokenTiles - 1) * kXTileBytes);
      mma_bf16_16816(acc[kTokenTiles - 1], af, r[0], r[1]);
    }
  }
};

}  // namespace zipgen
