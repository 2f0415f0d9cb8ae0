// Tensor-core and shared-memory primitives (sm_80+), in PTX.
#pragma once

namespace zipgen {

// d += a * b for one 16x8x16 tile: a = 16x16 BF16 (4 registers, row-major fragments),
// b = 16x8 BF16 (2 registers), d = 16x8 FP32.
__device__ __forceinline__ void mma_bf16_16816(float (&d)[4], const unsigned (&a)[4], unsigned b0,
                                               unsigned b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Four (two) 8x8 BF16 matrices from shared memory, at a 32-bit shared-window address: lane l
// gives the address of row (l & 7) of matrix l >> 3 (lanes 0-15 for .x2) and receives row
// l >> 2, columns 2(l & 3) .. +1 of each, in its registers 0-3 (0-1).
__device__ __forceinline__ void ldmatrix_x4_shared(unsigned (&r)[4], unsigned addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}
__device__ __forceinline__ void ldmatrix_x2_shared(unsigned (&r)[2], unsigned addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(addr)
               : "memory");
}

// 16 bytes from global to shared memory without passing through registers (sm_80+), cached in
// L1 too (.ca: CTAs on one SM read the same activations at about the same time). Only the
// first src_bytes (0 or 16) are read; the rest of the 16 are zero-filled. Completion: commit
// the copies as a group, wait for it (each lane for its own), then a __syncwarp before other
// lanes read them.
__device__ __forceinline__ void cp_async_16(unsigned dst, const void* src, unsigned src_bytes) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
               "r"(src_bytes)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}
__device__ __forceinline__ void cp_async_wait_all() {
  asm volatile("cp.async.wait_group 0;\n" ::: "memory");
}

// Keep a loop-invariant value in a register. ptxas otherwise recomputes lane-derived values
// (thread index, shared-memory window, kernel parameters) in every iteration to save registers,
// which costs ~30 issue slots per strip in ZipGEMM's issue-bound loop.
template <typename T>
__device__ __forceinline__ void pin(T& v) {
  if constexpr (sizeof(T) == 8) {
    asm volatile("" : "+l"(v));
  } else {
    asm volatile("" : "+r"(v));
  }
}

// Shared memory through 32-bit shared-window addresses: a loop can keep such an address in a
// register (see pin() above) without the compiler losing track of the state
// space and falling back to generic loads and stores.
__device__ __forceinline__ unsigned shared_address(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void st_shared_v4(unsigned addr, unsigned a, unsigned b, unsigned c,
                                             unsigned d) {
  asm volatile("st.shared.v4.b32 [%0], {%1, %2, %3, %4};\n" ::"r"(addr), "r"(a), "r"(b), "r"(c),
               "r"(d) : "memory");
}
__device__ __forceinline__ uint4 ld_shared_v4(unsigned addr) {
  uint4 v;
  asm volatile("ld.shared.v4.b32 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "r"(addr) : "memory");
  return v;
}
__device__ __forceinline__ void red_shared_xor(unsigned addr, unsigned v) {
  asm volatile("red.shared.xor.b32 [%0], %1;\n" ::"r"(addr), "r"(v) : "memory");
}

// FP32 -> BF16 bits, round to nearest even; NaN -> canonical quiet NaN (as torch does).
__device__ __forceinline__ unsigned short float_to_bf16_bits(float f) {
  const unsigned u = __float_as_uint(f);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FC0u;
  return static_cast<unsigned short>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

__device__ __forceinline__ float bf16_bits_to_float(unsigned short h) {
  return __uint_as_float(static_cast<unsigned>(h) << 16);
}

}  // namespace zipgen
