"""What each supported GPU architecture offers the generated kernels."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError


@dataclass(frozen=True)
class ArchTraits:
    name: str  # NVRTC arch string, e.g. "sm_90"
    capability: tuple[int, int]
    max_smem_per_block: int  # bytes, with the opt-in attribute
    max_smem_static: int  # bytes without it
    max_threads_per_sm: int
    max_regs_per_thread: int
    cp_async: bool  # cp.async (sm_80+)
    tma: bool  # cp.async.bulk.tensor (sm_90+)
    wgmma: bool  # warpgroup MMA (sm_90a only)

    @property
    def short(self) -> str:
        """"sm90", for kernel names."""
        return self.name.replace("_", "")


ARCHES: dict[str, ArchTraits] = {a.name: a for a in [
    ArchTraits("sm_80", (8, 0), 163 * 1024, 48 * 1024, 2048, 255, True, False, False),
    ArchTraits("sm_86", (8, 6), 99 * 1024, 48 * 1024, 1536, 255, True, False, False),
    ArchTraits("sm_89", (8, 9), 99 * 1024, 48 * 1024, 1536, 255, True, False, False),
    ArchTraits("sm_90", (9, 0), 227 * 1024, 48 * 1024, 2048, 255, True, True, False),
    ArchTraits("sm_90a", (9, 0), 227 * 1024, 48 * 1024, 2048, 255, True, True, True),
]}
# The arches `zipgen gen` renders by default: one cubin each covers every GPU of that family
# (an sm_80 cubin also runs on sm_86 / sm_87 / sm_89).
DEFAULT_ARCHES = ("sm_80", "sm_86", "sm_89", "sm_90")


def arch_traits(arch: str) -> ArchTraits:
    try:
        return ARCHES[arch]
    except KeyError:
        raise InputError(f"unknown arch {arch!r}; supported: {', '.join(ARCHES)}") from None


def arch_for_capability(capability: tuple[int, int]) -> str:
    """The best supported arch whose cubins run on a GPU of this compute capability: the same
    major version and the highest minor version not above it (sm_90a is never chosen: its
    cubins are opted into per kernel)."""
    major, minor = capability
    candidates = [a for a in ARCHES.values()
                  if not a.wgmma and a.capability[0] == major and a.capability[1] <= minor]
    if not candidates:
        raise InputError(f"no supported arch runs on compute capability {major}.{minor}; "
                         f"zipgen supports {', '.join(ARCHES)}")
    return max(candidates, key=lambda a: a.capability).name


def compile_arch(arch: str, config) -> str:
    """The arch a config's kernel is compiled for on a GPU of `arch`: configurations that use
    Hopper-only instructions (ZipGemmConfig.wgmma) become sm_90a cubins, which load on compute
    capability 9.0 only; everything else keeps `arch`."""
    return "sm_90a" if arch == "sm_90" and getattr(config, "wgmma", False) else arch
