"""Read which GPU a cubin was built for, from its ELF header, without a driver."""
import struct

ELF_MAGIC = b"\x7fELF"
_EI_ABIVERSION = 8
_E_FLAGS_OFFSET = 48  # in the 64-bit ELF header, which every cubin for sm_80+ has


def cubin_sm(cubin: bytes) -> int:
    """The SM number a cubin targets (80 for sm_80; sm_90a also reads 90).

    CUDA's ELF ABI version 8 keeps the SM in bits 8-15 of e_flags; older versions kept it in bits 0-7.
    """
    if len(cubin) < _E_FLAGS_OFFSET + 4 or not cubin.startswith(ELF_MAGIC):
        raise ValueError("not a cubin: no 64-bit ELF header")
    (e_flags,) = struct.unpack_from("<I", cubin, _E_FLAGS_OFFSET)
    if cubin[_EI_ABIVERSION] >= 8:
        return (e_flags >> 8) & 0xFF
    return e_flags & 0xFF
