"""Compile generated CUDA kernels to cubins with NVRTC (no GPU needed) and cache them on disk."""
from .cache import CubinCache, CubinEntry, get_or_compile
from .elf import cubin_sm
from .key import CacheKey, cache_key
from .nvrtc import SUPPORTED_ARCHES, CompileResult, compile_cubin, nvrtc_version
from .paths import cache_root

__all__ = ["SUPPORTED_ARCHES", "CacheKey", "CompileResult", "CubinCache", "CubinEntry", "cache_key", "cache_root",
           "compile_cubin", "cubin_sm", "get_or_compile", "nvrtc_version"]
