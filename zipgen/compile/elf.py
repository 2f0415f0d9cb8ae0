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


_SHT_NOBITS = 8


def sections(cubin: bytes) -> dict[str, tuple[int, int, bytes]]:
    """Every section of a 64-bit little-endian ELF: name -> (type, size, contents; empty for
    NOBITS sections such as shared memory, which occupy no bytes in the file)."""
    if not cubin.startswith(ELF_MAGIC) or cubin[4] != 2:
        raise ValueError("not a cubin: no 64-bit ELF header")
    e_shoff, = struct.unpack_from("<Q", cubin, 0x28)
    e_shentsize, e_shnum, e_shstrndx = struct.unpack_from("<HHH", cubin, 0x3A)
    headers = [struct.unpack_from("<IIQQQQIIQQ", cubin, e_shoff + i * e_shentsize)
               for i in range(e_shnum)]
    names_at = headers[e_shstrndx][4]

    def name(offset: int) -> str:
        end = cubin.index(b"\0", names_at + offset)
        return cubin[names_at + offset:end].decode()

    out = {}
    for sh_name, sh_type, _, _, sh_offset, sh_size, *_ in headers:
        data = b"" if sh_type == _SHT_NOBITS else cubin[sh_offset:sh_offset + sh_size]
        out[name(sh_name)] = (sh_type, sh_size, data)
    return out


def kernel_sections(cubin: bytes, kernel: str) -> dict[str, tuple[int, int, bytes]]:
    """The sections that define one kernel's code and launch resources: its instructions
    (.text), their relocations, its attributes (.nv.info: registers, barriers, parameters),
    its shared memory and parameter bank. Symbol and string tables are left out: they name
    things (a helper's static constexpr members become device globals named after its
    template arguments) without changing what the kernel runs."""
    suffixes = (".text.", ".rela.text.", ".nv.info.", ".nv.shared.", ".nv.constant0.")
    out = {name: section for name, section in sections(cubin).items()
           if any(name == s + kernel for s in suffixes)}
    info = ".nv.info." + kernel
    if info in out:
        kind, size, data = out[info]
        out[info] = (kind, size, _without_symbol_indices(data))
    return out


_EIFMT_SVAL, _EIFMT_HVAL = 4, 3
_EIATTR_PARAM_CBANK = 0x0A  # value: u32 symbol index (of the parameter bank), u16 offset, u16 size


def _without_symbol_indices(info: bytes) -> bytes:
    """A kernel's .nv.info attributes with the symbol index of its parameter bank zeroed: the
    index moves when the symbol table does, the bank's offset and size are what the kernel
    uses."""
    out, i = bytearray(info), 0
    while i + 4 <= len(info):
        fmt, attr = info[i], info[i + 1]
        if fmt == _EIFMT_SVAL:
            (size,) = struct.unpack_from("<H", info, i + 2)
            if attr == _EIATTR_PARAM_CBANK and size >= 4:
                out[i + 4:i + 8] = bytes(4)
            i += 4 + size
        else:  # value in the 2 bytes after (HVAL / BVAL) or none (NVAL)
            i += 4
    return bytes(out)
