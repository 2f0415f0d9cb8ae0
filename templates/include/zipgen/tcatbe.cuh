// TCA-TBE format version 1 (docs/FORMAT.md): device-side decoding of one lane's share of a strip.
//
// A strip is 16 rows x 64 columns. Lane l of a warp owns 32 elements, which are exactly the
// A-operand registers of mma.sync.m16n8k16 (bf16) for the strip's four 16x16 tensor-core tiles:
// register r = 4t + f (t: tile, f: a0..a3) holds two BF16 values, half e = 0 (low) and 1 (high).
// Everything here works on such register pairs, two weights per 32-bit operation.
#pragma once

namespace zipgen {

constexpr int kStripRows = 16;
constexpr int kStripCols = 64;
constexpr int kStripElems = kStripRows * kStripCols;  // bytes of sign-mantissa per strip
constexpr int kPlanes = 3;
constexpr int kLanes = 32;

// A strip staged in shared memory as 16 rows of 64 BF16 values. Row pitch in 32-bit words:
// with 36 (not 32) the pair stores of a warp (word 36 * row + 8t + 4(f >> 1) + q) and the
// 16-byte row reads of ldmatrix both fall into 32 different banks.
constexpr int kStagePitch = 36;
constexpr int kStageWords = kStripRows * kStagePitch;

// The compressed data one lane loads for one strip: 2 x 16 B of sign-mantissa bytes (tiles
// 0-1 and 2-3) and one 32-bit word of each code bit-plane.
struct LaneStrip {
  uint4 sm[2];
  unsigned planes[kPlanes];
};

// Coalesced loads: a warp reads 2 x 512 B of sign-mantissa and 3 x 128 B of planes per strip.
__device__ __forceinline__ LaneStrip load_lane_strip(const uint4* __restrict__ sign_mantissa,
                                                     const unsigned* __restrict__ planes,
                                                     long long strip, int lane) {
  LaneStrip d;
  const uint4* sm = sign_mantissa + strip * (kStripElems / 16);
  d.sm[0] = __ldg(sm + lane);
  d.sm[1] = __ldg(sm + 32 + lane);
  const unsigned* p = planes + strip * (kPlanes * kLanes);
#pragma unroll
  for (int i = 0; i < kPlanes; ++i) d.planes[i] = __ldg(p + i * kLanes + lane);
  return d;
}

// The same from pointers already at this lane's words of a strip (sign_mantissa + 64 s + lane,
// planes + 96 s + lane), for loops that advance pointers instead of recomputing addresses.
__device__ __forceinline__ LaneStrip load_lane_strip_at(const uint4* __restrict__ sm,
                                                        const unsigned* __restrict__ planes) {
  LaneStrip d;
  d.sm[0] = __ldg(sm);
  d.sm[1] = __ldg(sm + 32);
#pragma unroll
  for (int i = 0; i < kPlanes; ++i) d.planes[i] = __ldg(planes + i * kLanes);
  return d;
}

// Bits of a lane's elements that are fallbacks (code 0); bit b = r + 16e.
__device__ __forceinline__ unsigned fallback_mask(const LaneStrip& d) {
  return ~(d.planes[0] | d.planes[1] | d.planes[2]);
}

// prmt.b32 with sign replication: result byte = selected byte, or 0x00/0xFF from its top bit
// when the selector nibble's top bit is set. (__byte_perm ignores that bit.)
__device__ __forceinline__ unsigned prmt(unsigned a, unsigned sel) {
  unsigned r;
  asm("prmt.b32 %0, %1, 0, %2;" : "=r"(r) : "r"(a), "r"(sel));
  return r;
}

// ((x & mask) << shift) + acc, written in PTX so that the compiler keeps the AND before the
// shift (it would otherwise fold the per-strip pre-shift below into every pair); ptxas turns
// the power-of-two multiply-add into one shift-add (LEA / IMAD).
__device__ __forceinline__ unsigned and_shift_add(unsigned x, unsigned mask, int shift,
                                                  unsigned acc) {
  unsigned r;
  asm("{\n\t.reg .b32 t;\n\tand.b32 t, %1, %2;\n\tmad.lo.u32 %0, t, %3, %4;\n\t}"
      : "=r"(r) : "r"(x), "r"(mask), "r"(1u << shift), "r"(acc));
  return r;
}

// (a & m) | (b & ~m) in one LOP3: the truth table of "m ? a : b" over the operand patterns
// m = 0xF0, a = 0xCC, b = 0xAA is 0xCA.
__device__ __forceinline__ unsigned select_bits(unsigned m, unsigned a, unsigned b) {
  unsigned r;
  asm("lop3.b32 %0, %1, %2, %3, 0xCA;" : "=r"(r) : "r"(m), "r"(a), "r"(b));
  return r;
}

// Plane words pre-shifted once per strip so that every register pair r needs only left shifts:
// lo[p] = P_p serves r = 0..7 (bits r, r + 16), hi[p] = P_p >> 8 serves r = 8..15 (bits r - 8,
// r + 8). A left shift is an IMAD, which also adds, so the exponent fields cost one AND and one
// IMAD per plane and register pair, the base exponent included.
struct ShiftedPlanes {
  unsigned lo[kPlanes];
  unsigned hi[kPlanes];
};

__device__ __forceinline__ ShiftedPlanes shifted_planes(const LaneStrip& d) {
  ShiftedPlanes s;
#pragma unroll
  for (int p = 0; p < kPlanes; ++p) {
    s.lo[p] = d.planes[p];
    s.hi[p] = d.planes[p] >> 8;
  }
  return s;
}

// Decode register pair r (both BF16 halves) of a lane; call it from unrolled loops only, so
// that r is a constant (no register array is indexed at run time). base_pair = (base & 255) at
// bits 7 and 23. Fallback halves come out with exponent `base`: patch them afterwards.
__device__ __forceinline__ unsigned decode_pair(const LaneStrip& d, const ShiftedPlanes& sp,
                                                int r, unsigned base_pair) {
  // sign-mantissa bytes of pair r: bytes 2(r & 7) and 2(r & 7) + 1 of half r >> 3
  const uint4& v = d.sm[r >> 3];
  const int w = (r & 7) >> 1;
  const unsigned word = w == 0 ? v.x : w == 1 ? v.y : w == 2 ? v.z : v.w;
  // [b0, sign(b0) x 8, b1, sign(b1) x 8]: the signs land on bits 15 and 31, the mantissas on
  // 0-6 and 16-22; the bits in between are replaced by the exponents below.
  const unsigned sm = prmt(word, (r & 1) ? 0xB3A2u : 0x9180u);
  // codes: plane p's bits for pair r moved to bits 7 + p and 23 + p, plus the base exponent
  const unsigned* planes = r < 8 ? sp.lo : sp.hi;
  const int q = r & 7;
  const unsigned mask = 0x00010001u << q;
  unsigned exponent = base_pair;
  exponent = and_shift_add(planes[0], mask, 7 - q, exponent);
  exponent = and_shift_add(planes[1], mask, 8 - q, exponent);
  exponent = and_shift_add(planes[2], mask, 9 - q, exponent);  // carries past bits 14, 30 drop
  return select_bits(0x807F807Fu, sm, exponent);
}

__device__ __forceinline__ unsigned base_pair_of(int base) {
  const unsigned b = static_cast<unsigned>(base) & 0xFFu;
  return (b << 7) | (b << 23);
}

// Exclusive warp scan: fallbacks in lanes below this one (all 32 lanes must call it).
__device__ __forceinline__ int lanes_below(int count, int lane) {
  int inclusive = count;
#pragma unroll
  for (int d = 1; d < 32; d <<= 1) {
    const int y = __shfl_up_sync(0xFFFFFFFFu, inclusive, d);
    if (lane >= d) inclusive += y;
  }
  return inclusive - count;
}

// Position of a lane element inside its strip: register r = 4t + f, half e.
__device__ __forceinline__ int element_row(int lane, int r) { return (lane >> 2) + 8 * (r & 1); }
__device__ __forceinline__ int element_col(int lane, int r, int e) {
  return 16 * (r >> 2) + 8 * ((r >> 1) & 1) + 2 * (lane & 3) + e;
}

}  // namespace zipgen
