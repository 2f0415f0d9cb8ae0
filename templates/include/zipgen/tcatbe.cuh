// TCA-TBE format version 3 (docs/FORMAT.md): device-side decoding of one lane's share of a strip.
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
// 0-1 and 2-3) and the three 32-bit words of its codes.
struct LaneStrip {
  uint4 sm[2];
  unsigned planes[kPlanes];
};

// Coalesced loads from pointers already at this lane's words of a strip (sign_mantissa +
// 64 s + lane, planes + 96 s + lane): a warp reads 2 x 512 B of sign-mantissa and 3 x 128 B of
// planes per strip.
__device__ __forceinline__ LaneStrip load_lane_strip_at(const uint4* __restrict__ sm,
                                                        const unsigned* __restrict__ planes) {
  LaneStrip d;
  d.sm[0] = __ldg(sm);
  d.sm[1] = __ldg(sm + 32);
#pragma unroll
  for (int i = 0; i < kPlanes; ++i) d.planes[i] = __ldg(planes + i * kLanes);
  return d;
}

// The same from the streams' starts and a strip number.
__device__ __forceinline__ LaneStrip load_lane_strip(const uint4* __restrict__ sign_mantissa,
                                                     const unsigned* __restrict__ planes,
                                                     long long strip, int lane) {
  return load_lane_strip_at(sign_mantissa + strip * (kStripElems / 16) + lane,
                            planes + strip * (kPlanes * kLanes) + lane);
}

// prmt.b32 with sign replication: result byte = selected byte, or 0x00/0xFF from its top bit
// when the selector nibble's top bit is set. (__byte_perm ignores that bit.)
__device__ __forceinline__ unsigned prmt(unsigned a, unsigned sel) {
  unsigned r;
  asm("prmt.b32 %0, %1, 0, %2;" : "=r"(r) : "r"(a), "r"(sel));
  return r;
}

// ((x & mask) << shift) + acc, written in PTX so that the compiler keeps the AND before the
// shift (it would otherwise fold the per-strip regrouping below into every pair); ptxas turns
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

// (x & mask) >> shift, plus acc: the right-shift twin of and_shift_add, as a multiply-high by
// 2^(32 - shift) (ptxas makes it one LEA.HI or IMAD.HI).
__device__ __forceinline__ unsigned and_shift_right_add(unsigned x, unsigned mask, int shift,
                                                        unsigned acc) {
  unsigned r;
  asm("{\n\t.reg .b32 t;\n\tand.b32 t, %1, %2;\n\tmad.hi.u32 %0, t, %3, %4;\n\t}"
      : "=r"(r) : "r"(x), "r"(mask), "r"(1u << (32 - shift)), "r"(acc));
  return r;
}

// Format version 3 packs the codes by register pair (FORMAT.md §4): word r / 5 holds pair
// r < 15 in a slot at bit s = 3 (r % 5), half 0 at bits s .. s + 2 and half 1 at s + 16 ..
// s + 18; pair 15 takes the spare bits 15 and 31, bit p of its codes in word p. So a pair's
// exponent fields cost one AND and one shift-add straight from the loaded words (version 2's
// bit-planes needed 17 instructions per strip to regroup them first).
struct CodeWords {
  unsigned w[kPlanes];
};

__device__ __forceinline__ CodeWords code_words(const LaneStrip& d) {
  CodeWords c;
#pragma unroll
  for (int i = 0; i < kPlanes; ++i) c.w[i] = d.planes[i];
  return c;
}

// Both codes of pair r moved to bits 7 and 23, plus base_pair (base + code <= 255: no carry
// into the sign bits). r must be a constant (unrolled loops).
__device__ __forceinline__ unsigned exponent_pair(const CodeWords& c, int r, unsigned base_pair) {
  if (r < 15) {
    const int s = 3 * (r % 5);
    const unsigned word = c.w[r / 5];
    return s <= 7 ? and_shift_add(word, 0x00070007u << s, 7 - s, base_pair)
                  : and_shift_right_add(word, 0x00070007u << s, s - 7, base_pair);
  }
  // pair 15: bit p of both codes at bits 15 and 31 of word p, to bits 7 + p and 23 + p
  unsigned e = and_shift_right_add(c.w[0], 0x80008000u, 8, base_pair);
  e = and_shift_right_add(c.w[1], 0x80008000u, 7, e);
  return and_shift_right_add(c.w[2], 0x80008000u, 6, e);
}

// Decode register pair r (both BF16 halves) of a lane; call it from unrolled loops only, so
// that r is a constant (no register array is indexed at run time). base_pair = base at bits 7
// and 23. Fallbacks (code 0) come out with exponent `base`: patch them afterwards.
// Four instructions per two weights: PRMT, LOP3 (and), IMAD (shift-add), LOP3 (select).
__device__ __forceinline__ unsigned decode_pair(const LaneStrip& d, const CodeWords& c, int r,
                                                unsigned base_pair) {
  // sign-mantissa bytes of pair r: bytes 2(r & 7) and 2(r & 7) + 1 of half r >> 3
  const uint4& v = d.sm[r >> 3];
  const int w = (r & 7) >> 1;
  const unsigned word = w == 0 ? v.x : w == 1 ? v.y : w == 2 ? v.z : v.w;
  // [b0, sign(b0) x 8, b1, sign(b1) x 8]: the signs land on bits 15 and 31, the mantissas on
  // 0-6 and 16-22; the bits in between are replaced by the exponents below.
  const unsigned sm = prmt(word, (r & 1) ? 0xB3A2u : 0x9180u);
  const unsigned exponent = exponent_pair(c, r, base_pair);
  return select_bits(0x807F807Fu, sm, exponent);
}

__device__ __forceinline__ unsigned base_pair_of(int base) {
  const unsigned b = static_cast<unsigned>(base);
  return (b << 7) | (b << 23);
}

// Fallback entries (FORMAT.md §5): record j is the 18 bits at bit 18 j of the entry stream; bits
// 0-9 the position 32 lane + b in the strip (b = r + 16 e), bits 10-17 the exponent.
constexpr int kEntryBits = 18;

// Record `index` from the stream as 32-bit words (4-byte aligned; the stream's padding keeps
// the second word inside it for every record).
__device__ __forceinline__ unsigned entry_at(const unsigned* __restrict__ words, long long index) {
  const long long bit = index * kEntryBits;
  const long long w = bit >> 5;
  return __funnelshift_r(__ldg(words + w), __ldg(words + w + 1), static_cast<int>(bit & 31)) &
         ((1u << kEntryBits) - 1);
}
__device__ __forceinline__ unsigned entry_position(unsigned e) { return e & 1023u; }
__device__ __forceinline__ unsigned entry_exponent(unsigned e) { return e >> 10; }

// What to XOR into the register pair holding the element record e names, to turn the exponent
// `base` its decode left there (code 0) into the record's: (exponent ^ base) << 7 in the pair's
// low or high half. base_field = base << 7; b = the position's low 5 bits (register + 16 half).
__device__ __forceinline__ unsigned exponent_patch(unsigned e, unsigned base_field, unsigned b) {
  return (((entry_exponent(e) & 0xFFu) << 7) ^ base_field) << (b & 16u);
}

// Position of a lane element inside its strip: register r = 4t + f, half e.
__device__ __forceinline__ int element_row(int lane, int r) { return (lane >> 2) + 8 * (r & 1); }
__device__ __forceinline__ int element_col(int lane, int r, int e) {
  return 16 * (r >> 2) + 8 * ((r >> 1) & 1) + 2 * (lane & 3) + e;
}

}  // namespace zipgen
