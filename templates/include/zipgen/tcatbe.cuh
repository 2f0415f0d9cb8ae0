// TCA-TBE format version 2 (docs/FORMAT.md): device-side decoding of one lane's share of a strip.
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

// The three code bits of each register pair brought next to each other, once per strip: after
// this, a pair's exponent fields cost one AND and one shift-add instead of three of each.
// Register pair r's codes sit at bits r (half 0) and r + 16 (half 1) of the three planes. Shift
// plane p left by p, and bit p of the code of pair r lands at bit r + p, where it collides with
// plane p' of pair r + p - p'. So keep, at each position, the plane that pair r = position -
// class needs, for pairs of one residue r mod 3 at a time (three words, masks below), and do it
// twice: for pairs 0-7 (planes as they are) and for pairs 8-15 (planes shifted right by 8).
// Word z[3h + (r & 7) % 3] then holds pair r = 8h + (r & 7) at bits (r & 7) .. +2 and +16 .. +18;
// the positions no pair of that word uses hold bits of other pairs, masked away per pair.
struct CodeWords {
  unsigned z[6];
};

// Bits p (and p + 16) with p % 3 == 0, 1, 2; word k keeps plane c at the bits with
// (p - k) % 3 == c, i.e. mask kClass[(k + c) % 3].
constexpr unsigned kClass[3] = {0x92499249u, 0x24922492u, 0x49244924u};

// (a & M) | (b & ~M) with M an immediate, as one LOP3 (the compiler would fold the known zero
// bits of a shifted operand into a second mask and emit two).
template <unsigned M>
__device__ __forceinline__ unsigned select_imm(unsigned a, unsigned b) {
  unsigned r;
  asm("lop3.b32 %0, %1, %2, %3, 0xE4;" : "=r"(r) : "r"(a), "r"(b), "n"(M));
  return r;
}

template <int k>
__device__ __forceinline__ unsigned group_code(unsigned p0, unsigned p1_up1, unsigned p2_up2) {
  const unsigned t = select_imm<kClass[k % 3]>(p0, p1_up1);
  return select_imm<kClass[(k + 2) % 3]>(p2_up2, t);
}

__device__ __forceinline__ void group_codes(unsigned p0, unsigned p1_up1, unsigned p2_up2,
                                            unsigned* z) {
  z[0] = group_code<0>(p0, p1_up1, p2_up2);
  z[1] = group_code<1>(p0, p1_up1, p2_up2);
  z[2] = group_code<2>(p0, p1_up1, p2_up2);
}

__device__ __forceinline__ CodeWords code_words(const LaneStrip& d) {
  CodeWords c;
  group_codes(d.planes[0], d.planes[1] << 1, d.planes[2] << 2, c.z);
  group_codes(d.planes[0] >> 8, d.planes[1] >> 7, d.planes[2] >> 6, c.z + 3);
  return c;
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
  // both 3-bit codes moved to bits 7 and 23, plus the base exponent (base + code <= 255: no
  // carry into the sign bits)
  const int q = r & 7;
  const unsigned exponent = and_shift_add(c.z[3 * (r >> 3) + q % 3], 0x00070007u << q, 7 - q,
                                          base_pair);
  return select_bits(0x807F807Fu, sm, exponent);
}

__device__ __forceinline__ unsigned base_pair_of(int base) {
  const unsigned b = static_cast<unsigned>(base);
  return (b << 7) | (b << 23);
}

// Fallback entries (FORMAT.md §5): record j is the 18 bits at bit 18 j of the entry stream; bits
// 0-9 the position 32 lane + b in the strip (b = plane bit r + 16 e), bits 10-17 the exponent.
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

// Position of a lane element inside its strip: register r = 4t + f, half e.
__device__ __forceinline__ int element_row(int lane, int r) { return (lane >> 2) + 8 * (r & 1); }
__device__ __forceinline__ int element_col(int lane, int r, int e) {
  return 16 * (r >> 2) + 8 * ((r >> 1) & 1) + 2 * (lane & 3) + e;
}

}  // namespace zipgen
