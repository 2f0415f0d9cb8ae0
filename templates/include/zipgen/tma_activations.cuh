// Activations through the Tensor Memory Accelerator for ZipGEMM's wgmma variant (sm_90a).
//
// The staged path's cp.async copies write shared memory through the generic proxy, so before
// the wgmmas (async proxy) read them each strip needs fence.proxy.async, which compiles to
// MEMBAR.ALL.CTA + FENCE.VIEW.ASYNC: the MEMBAR waits for every load in flight, the next
// strips' compressed-stream loads included (Nsight Compute, docs/ZIPGEMM.md). Here one thread of
// the K slice's warpgroup asks the TMA for the strip's activation tile instead: a box of 64
// columns x the CTA's tokens of x, written in the 128-byte swizzle layout wgmma reads (rows of
// 128 bytes, chunk c of row r at c ^ (r & 7)), columns past K and rows past M zero-filled. The
// TMA writes through the async proxy and completes on an mbarrier per buffer; the warps wait on
// it (parity per use) and need no fence. The barrier that orders the refill of the other
// buffer after everybody's reads stays, as on the cp.async path.
#pragma once
#include <zipgen/mma.cuh>
#include <zipgen/staged_activations.cuh>
#include <zipgen/wgmma.cuh>

namespace zipgen {

// The driver's CUtensorMap: 128 opaque bytes, passed by value as a __grid_constant__ kernel
// parameter so that the TMA can read it from the parameter space.
struct alignas(64) TmaMap {
  unsigned long long words[16];
};

__device__ __forceinline__ void mbarrier_init(unsigned bar, unsigned count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
// The initialisation is visible to the async proxy (the TMA's complete_tx) and to the cluster.
__device__ __forceinline__ void fence_mbarrier_init() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}
// This thread's arrival, announcing `bytes` that the TMA will deliver to the barrier's phase.
__device__ __forceinline__ void mbarrier_arrive_expect_tx(unsigned bar, unsigned bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes)
               : "memory");
}
// Wait until the phase with this parity has completed.
__device__ __forceinline__ void mbarrier_wait_parity(unsigned bar, unsigned parity) {
  asm volatile(
      "{\n"
      ".reg .pred done;\n"
      "wait:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra wait;\n"
      "}\n" ::"r"(bar),
      "r"(parity)
      : "memory");
}
// A 2D box of the tensor map (c0: innermost coordinate, columns; c1: rows) into shared memory.
__device__ __forceinline__ void tma_load_2d(unsigned dst, const void* map, int c0, int c1,
                                            unsigned bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%2, %3}], [%4];\n" ::"r"(dst),
      "l"(map), "r"(c0), "r"(c1), "r"(bar)
      : "memory");
}

// A K slice's staged activations for the wgmma variant, filled by the TMA: the interface of
// StagedActivations that the wgmma path uses (copy, wait_and_sync, descriptor, sync).
template <int kRowGroups, int kTokenTiles, int kSlices>
struct TmaActivations {
  static constexpr int kBufferBytes = staged_buffer_bytes<kTokenTiles, true>();
  static_assert(kRowGroups == 4, "a K slice's warpgroup: 4 row groups");

  unsigned buffer0;   // the slice's double buffer, 1024-aligned
  unsigned bars;      // its two mbarriers (8 bytes each), one per buffer
  const void* map;    // the tensor map of x: [M rows, K columns] BF16
  int column0;        // the K slice's first column
  int row0;           // the CTA's first token
  bool issuer;        // the one thread that arms the barriers and issues the copies
  int barrier;        // named barrier of the warpgroup
  mutable unsigned phases = 0;  // bit b: parity of buffer b's next completion

  // slice: the warpgroup's K slice in the CTA (its barrier); column: its first column of x
  __device__ TmaActivations(unsigned base, unsigned bar_pair, int member, int slice, int lane,
                            const void* x_map, int column, int tok0)
      : buffer0(base), bars(bar_pair), map(x_map), column0(column), row0(tok0),
        issuer(member == 0 && lane == 0), barrier(1 + slice) {
    if (issuer) {
      mbarrier_init(bars, 1);
      mbarrier_init(bars + 8, 1);
      fence_mbarrier_init();
    }
    sync();  // the barriers are initialised before anybody waits on them
  }

  __device__ __forceinline__ void pin_registers() {
    pin(buffer0);
    pin(bars);
  }

  // The strip `offset` columns past the slice's first into buffer b. Ragged or not: the TMA
  // zero-fills columns past K (and rows past M), so cols_left is not needed.
  template <bool kRagged>
  __device__ __forceinline__ void copy(unsigned offset, int b, int /*cols_left*/) const {
    if (!issuer) return;
    const unsigned bar = bars + 8 * b;
    mbarrier_arrive_expect_tx(bar, kBufferBytes);  // the whole box counts, zero-fill included
    tma_load_2d(buffer0 + b * kBufferBytes, map, column0 + static_cast<int>(offset), row0, bar);
  }

  // Buffer b's copy has landed (every thread waits on its barrier), and the warpgroup is past
  // its reads of the other buffer (sync), which may now be refilled.
  __device__ __forceinline__ void wait_and_sync(int b) const {
    mbarrier_wait_parity(bars + 8 * b, (phases >> b) & 1u);
    phases ^= 1u << b;
    sync();
  }

  __device__ __forceinline__ unsigned long long descriptor(int b, int t) const {
    return sw128_kmajor_descriptor(buffer0 + b * kBufferBytes + 32 * t);
  }
  // With several warpgroups (8 or 16 warps) the barrier id is a register: their registers cap
  // the SM at 2 CTAs already (tested), and immediates cost an R2UR before every load (SASS:
  // 16 warps, 32 tokens, 299.5 -> 259.5 instructions per strip).
  __device__ __forceinline__ void sync() const {
    slice_barrier<kSlices, 32 * kRowGroups, true>(barrier);
  }
};

}  // namespace zipgen
