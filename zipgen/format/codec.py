"""The TCA-TBE codec in plain torch ops (docs/FORMAT.md): compress and decompress.

No per-element Python: every step is a tensor op over the whole matrix, so the same code runs
on the CPU and, unchanged, on a CUDA device. Bytes are handled as uint8 where possible
(contiguous uint8 arithmetic is the fastest torch path on the CPU).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import torch

from ..errors import FormatError, InputError
from .entries import POSITION_BITS, POSITION_MASK, make_records, pack_entries, read_entries
from .layout import (CODE_SLOTS, LANES, PLANES, STRIP_ELEMS, WINDOW, from_lane_order,
                     num_strips, padded_shape, to_lane_order)
from .tensor import CompressedTensor
from .window import best_window, exponent_histogram


def _check_input(w: torch.Tensor, name: str) -> None:
    if not isinstance(w, torch.Tensor):
        raise InputError(f"{name}: expected a torch.Tensor, got {type(w).__name__}")
    if w.dtype != torch.bfloat16:
        raise InputError(f"{name}: dtype {w.dtype} is not torch.bfloat16; TCA-TBE stores BF16 "
                         f"only (cast first if a lossy cast is acceptable)")
    if w.dim() != 2:
        raise InputError(f"{name}: expected a 2-D matrix, got shape {tuple(w.shape)}")
    if w.numel() == 0:
        raise InputError(f"{name}: tensor of shape {tuple(w.shape)} is empty")


def _gather_codes(x: torch.Tensor) -> torch.Tensor:
    """int64 holding eight codes (< 8) in its bytes -> the same codes as 3-bit fields, code j
    at bits 3j .. 3j + 2 (three merge steps: byte pairs, then 16-bit, then 32-bit halves)."""
    x = (x & 0x00FF00FF00FF00FF) | ((x >> 5) & 0x0038003800380038)
    x = (x & 0x0000003F0000003F) | ((x >> 10) & 0x00000FC000000FC0)
    return (x & 0xFFF) | ((x >> 20) & 0xFFF000)


def _pack_planes(codes_lane: torch.Tensor) -> torch.Tensor:
    """codes uint8 [S, 32 lanes, 32] in position order (b = r + 16 e) -> the code words, int32
    [S, 3, 32], in format version 3's packing (layout.code_bit_locations): pairs 0-14 in
    slots of 3 bits, five per word; pair 15's bits in the words' spare bits 15 and 31."""
    s = codes_lane.shape[0]
    eight = codes_lane.contiguous().view(torch.int64).view(s, LANES, 2, 2)  # [S, L, e, 8 codes]
    low, high = _gather_codes(eight[..., 0]), _gather_codes(eight[..., 1])  # pairs 0-7, 8-15
    halves = torch.stack([
        low & 0x7FFF,                                        # word 0: pairs 0-4
        (low >> 15) | ((high & 0x3F) << 9),                  # word 1: pairs 5-9
        (high >> 6) & 0x7FFF], dim=-1)                        # word 2: pairs 10-14
    halves |= ((high >> 21).unsqueeze(-1) >> torch.arange(PLANES, device=halves.device) & 1) << 15
    words = halves[:, :, 0] | (halves[:, :, 1] << 16)  # [S, L, word]: half e at bits 16 e
    return words.to(torch.int32).transpose(1, 2).contiguous()


@lru_cache(maxsize=None)  # one per device: built once, not per chunk of every call
def _half_word_tables(device) -> torch.Tensor:
    """int64 [4, 2^16]: a code half-word's slots placed where they belong in the two 64-bit
    words (pairs 0-7, pairs 8-15) of a lane's codes in one half. Word 0's five slots are pairs
    0-4 (bytes 0-4 of the first); word 1's first three are pairs 5-7 (bytes 5-7 of the first),
    its last two pairs 8-9 (bytes 0-1 of the second), with its spare bit as bit 1 of pair 15;
    word 2's are pairs 10-14 (bytes 2-6 of the second), its spare bit bit 2 of pair 15."""
    half = torch.arange(1 << 16, dtype=torch.int64)
    slot = [(half >> (3 * j)) & 7 for j in range(CODE_SLOTS)]
    spare = (half >> 15) & 1
    word0 = sum(slot[j] << (8 * j) for j in range(5))
    word1_first = sum(slot[j] << (8 * (5 + j)) for j in range(3))
    word1_second = slot[3] | (slot[4] << 8) | (spare << 57)
    word2 = sum(slot[j] << (8 * (2 + j)) for j in range(5)) | (spare << 58)
    return torch.stack([word0, word1_first, word1_second, word2]).to(device)


def _unpack_codes(planes: torch.Tensor) -> torch.Tensor:
    """int32 [S, 3, 32] code words -> codes uint8 [S, 1024], lane-major, in position order
    (the inverse of _pack_planes): four table lookups per lane and half, each giving whole
    bytes of codes."""
    s = planes.shape[0]
    halves = planes.view(torch.int16).view(s, PLANES, LANES, 2).to(torch.int32) & 0xFFFF
    table = _half_word_tables(planes.device)
    codes = torch.empty((s, LANES, 2, 2), dtype=torch.int64, device=planes.device)

    def look(which, word):  # [S, L, half] int64
        return torch.index_select(table[which], 0, halves[:, word].reshape(-1)).view(
            s, LANES, 2)

    codes[..., 0] = look(0, 0) | look(1, 1)
    codes[..., 1] = look(2, 1) | look(3, 2) | ((halves[:, 0] >> 15).to(torch.int64) << 56)
    return codes.view(torch.uint8).view(s, STRIP_ELEMS)


def _to_bit_order(lane: torch.Tensor) -> torch.Tensor:
    """Lane order (element i = 2r + e) -> position order (b = r + 16e), as a strided view."""
    return lane.view(-1, 16, 2).transpose(1, 2)


def _to_element_order(bit_ordered: torch.Tensor) -> torch.Tensor:
    """Plane-bit order -> lane order [-1, 16, 2], as a strided view."""
    return bit_ordered.view(-1, 2, 16).transpose(1, 2)


def _lane_to_sm_order(x: torch.Tensor) -> torch.Tensor:
    """Per strip, lane order [32 lanes, 2 halves, 16] -> sign-mantissa order [2, 32, 16]."""
    return x.view(-1, LANES, 2, 16).transpose(1, 2).reshape(-1)


def _sm_to_lane_order(x: torch.Tensor) -> torch.Tensor:
    return x.view(-1, 2, LANES, 16).transpose(1, 2).reshape(-1)


# Rows per chunk on the CPU: ~2 MB of BF16 per chunk keeps the intermediates near the L2 cache,
# and two threads work on different chunks (torch ops release the GIL). Matrices under a few
# chunks are done in one piece: there the hand-off costs more than the second core gains.
_CPU_CHUNK_ELEMS = 1 << 20
_MIN_CHUNKS_FOR_THREADS = 4
_pool: ThreadPoolExecutor | None = None


def _row_chunks(n_rows_padded: int, kp: int, device: torch.device) -> list[tuple[int, int]]:
    if device.type != "cpu" or n_rows_padded * kp < _MIN_CHUNKS_FOR_THREADS * _CPU_CHUNK_ELEMS:
        return [(0, n_rows_padded)]
    rows = max(16, (_CPU_CHUNK_ELEMS // kp) // 16 * 16)
    return [(r, min(r + rows, n_rows_padded)) for r in range(0, n_rows_padded, rows)]


def _map_chunks(fn, chunks, device):
    global _pool
    if device.type == "cpu" and len(chunks) > 1 and torch.get_num_threads() > 1:
        if _pool is None:  # one pool per process: creating threads per call costs milliseconds
            _pool = ThreadPoolExecutor(max_workers=torch.get_num_threads(),
                                       thread_name_prefix="zipgen-codec")
        return list(_pool.map(fn, chunks))
    return [fn(c) for c in chunks]


def _histogram(bits: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The exponent histogram, per row chunk on the pool for large CPU matrices."""
    n, k = bits.shape
    if device.type != "cpu" or n * k < _MIN_CHUNKS_FOR_THREADS * _CPU_CHUNK_ELEMS:
        return exponent_histogram(bits)
    rows = max(1, _CPU_CHUNK_ELEMS // k)
    chunks = [(r, min(r + rows, n)) for r in range(0, n, rows)]
    return sum(_map_chunks(lambda c: exponent_histogram(bits[c[0]:c[1]]), chunks, device))


def _padded_rows(bits: torch.Tensor, r0: int, r1: int, kp: int, fill: int) -> torch.Tensor:
    """Rows r0..r1 of the matrix padded to [r1 - r0, Kp] with `fill` (FORMAT.md §3)."""
    n, k = bits.shape
    if r1 <= n and k == kp:
        return bits[r0:r1]
    out = bits.new_full((r1 - r0, kp), fill)
    out[: max(0, min(r1, n) - r0), :k] = bits[r0:min(r1, n)]
    return out


def compress(w: torch.Tensor, name: str = "tensor") -> CompressedTensor:
    """Compress a 2-D BF16 matrix of any shape, on its own device. Lossless: decompress()
    returns the same bits."""
    _check_input(w, name)
    n, k = w.shape
    device = w.device
    bits = w.contiguous().view(torch.int16)
    lo = best_window(_histogram(bits, device)).lo
    np_, kp = padded_shape(n, k)
    strips_per_row_group = kp // 64
    s = num_strips(n, k)

    sign_mantissa = torch.empty(s * STRIP_ELEMS, dtype=torch.uint8, device=device)
    planes = torch.empty((s, PLANES, LANES), dtype=torch.int32, device=device)

    def encode(rows):
        r0, r1 = rows
        s0, s1 = r0 // 16 * strips_per_row_group, r1 // 16 * strips_per_row_group
        lane = to_lane_order(_padded_rows(bits, r0, r1, kp, lo << 7))
        sign_mantissa[s0 * STRIP_ELEMS:s1 * STRIP_ELEMS] = _lane_to_sm_order(
            ((lane >> 8).to(torch.uint8) & 0x80) | (lane.to(torch.uint8) & 0x7F))
        # codes and positions are in position order: position = 32 lane + b
        exponent = _to_bit_order((lane >> 7).to(torch.uint8)).reshape(s1 - s0, STRIP_ELEMS)
        offset = exponent - lo  # uint8 arithmetic wraps: < 8 exactly inside the window
        outside = offset >= WINDOW
        planes[s0:s1] = _pack_planes(offset.masked_fill_(outside, 0).view(s1 - s0, LANES, 32))
        strip, position = outside.nonzero(as_tuple=True)  # by strip, then by position
        records = make_records(position, exponent[strip, position])
        return records, torch.bincount(strip, minlength=s1 - s0)

    parts = _map_chunks(encode, _row_chunks(np_, kp, device), device)
    records = torch.cat([r for r, _ in parts])
    if records.numel() >= 2**31:
        raise InputError(f"{name}: {records.numel()} fallbacks exceed the format's 2^31 limit; "
                         f"split the matrix")
    offsets = torch.zeros(s + 1, dtype=torch.int64, device=device)
    torch.cumsum(torch.cat([c for _, c in parts]), 0, out=offsets[1:])
    return CompressedTensor(
        shape=(n, k),
        base=lo,
        sign_mantissa=sign_mantissa,
        planes=planes,
        fallback_entries=pack_entries(records),
        fallback_offsets=offsets.to(torch.int32),
    )


def checked_entries(ct: CompressedTensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                  torch.Tensor]:
    """(offsets [S + 1], records [T], the strip of each record [T], its key strip * 1024 +
    position [T]), all int64, or FormatError when the offsets or the records break FORMAT.md
    §5: offsets never decrease, a strip's records have increasing positions (so the keys are
    sorted), each names an exponent outside the window. Reads values back to the host."""
    offsets = ct.fallback_offsets.to(torch.int64)
    counts = offsets[1:] - offsets[:-1]
    if bool((counts < 0).any()):
        raise FormatError("fallback_offsets decrease: the data is corrupt")
    records = read_entries(ct.fallback_entries, int(offsets[-1]))
    strip = torch.repeat_interleave(torch.arange(ct.num_strips, device=ct.device), counts)
    key = strip * STRIP_ELEMS + (records & POSITION_MASK)
    if bool((key[1:] <= key[:-1]).any()):
        raise FormatError("a strip's fallback entries are not in increasing position: the data "
                          "is corrupt")
    if bool((((records >> POSITION_BITS) - ct.base) & 0xFF < WINDOW).any()):
        raise FormatError("a fallback entry holds an exponent inside the window: the data is "
                          "corrupt")
    return offsets, records, strip, key


def decompress_reference(ct: CompressedTensor) -> torch.Tensor:
    """Decode with torch ops on the tensor's own device; the bit-exact reference that every
    GPU kernel is tested against. Raises FormatError if the streams contradict each other."""
    ct.validate()
    n, k = ct.shape
    np_, kp = padded_shape(n, k)
    strips_per_row_group = kp // 64
    device = ct.device
    offsets, records, record_strips, _ = checked_entries(ct)
    chunks = _row_chunks(np_, kp, device)
    bounds = offsets[[r // 16 * strips_per_row_group for c in chunks for r in c]].tolist()
    out = torch.empty((n, k), dtype=torch.int16, device=device)

    def decode(chunk_index):
        r0, r1 = chunks[chunk_index]
        s0, s1 = r0 // 16 * strips_per_row_group, r1 // 16 * strips_per_row_group
        f0, f1 = bounds[2 * chunk_index], bounds[2 * chunk_index + 1]
        codes = _unpack_codes(ct.planes[s0:s1]).view(-1)
        exponent = codes + ct.base  # uint8; then the entries overwrite the fallbacks'
        mine = records[f0:f1]
        where = (record_strips[f0:f1] - s0) * STRIP_ELEMS + (mine & POSITION_MASK)
        if bool((codes[where] != 0).any()):
            raise FormatError("a fallback's code is not 0: the data is corrupt")
        exponent[where] = (mine >> POSITION_BITS).to(torch.uint8)
        exponent = _to_element_order(exponent)
        sign_mantissa = _sm_to_lane_order(
            ct.sign_mantissa[s0 * STRIP_ELEMS:s1 * STRIP_ELEMS]).view(exponent.shape)
        # sign << 15 | exponent << 7 | mantissa, in int16 (faster than assembling byte pairs)
        sm16 = sign_mantissa.to(torch.int16)
        lane = ((sm16 & 0x80) << 8) | (exponent.to(torch.int16) << 7) | (sm16 & 0x7F)
        lane = lane.reshape(-1)
        rows = from_lane_order(lane, r1 - r0, kp)
        last = min(r1, n)
        if last > r0:
            out[r0:last] = rows[: last - r0, :k]

    _map_chunks(decode, range(len(chunks)), device)
    return out.view(torch.bfloat16)


def decompress(ct: CompressedTensor) -> torch.Tensor:
    """The original BF16 matrix, bit for bit, on the tensor's device (on a GPU through the
    generated decoder kernel)."""
    if not isinstance(ct, CompressedTensor):
        raise InputError(f"expected a CompressedTensor, got {type(ct).__name__}")
    if ct.device.type == "cuda":
        from ..runtime.decode import decompress_cuda
        return decompress_cuda(ct)
    return decompress_reference(ct)
