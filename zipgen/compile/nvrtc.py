"""Compile CUDA C++ to a cubin with NVRTC, on a machine with or without a GPU.

Only cubins, for one explicitly named arch: PTX from a newer NVRTC fails to load on an older driver
(NVRTC 13.5 PTX does not load on driver 580), while a cubin built for the exact arch does.

NVRTC is called through cuda.bindings rather than cuda.core's Program: callers pass raw NVRTC flags
(which also go verbatim into the cache key) and ProgramOptions has no way to carry those. Nothing here
touches the driver, so it works on CPU-only machines.
"""
import functools
import hashlib
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cuda.bindings import nvrtc

from ..errors import CompileError, InputError
from .paths import bundled_headers_dir, failed_sources_dir

SUPPORTED_ARCHES = ("sm_80", "sm_86", "sm_89", "sm_90", "sm_90a")
# Flags every compile gets; part of the cache key, so changing them invalidates old cubins.
BASE_OPTIONS = ("-std=c++17",)
# NVRTC ships its own CUDA/CCCL headers and can unpack them from this version on.
_BUNDLED_HEADERS_SINCE = (13, 3)
_ARCH_FLAGS = ("-arch", "--gpu-architecture")


@dataclass(frozen=True)
class CompileResult:
    cubin: bytes
    log: str  # NVRTC's log; may hold warnings even on success
    arch: str
    nvrtc_version: tuple[int, int]
    options: tuple[str, ...]  # every flag NVRTC saw, in order
    lowered_names: Mapping[str, str] = field(default_factory=dict)  # name expression -> mangled symbol


def as_tuple(values: Iterable, what: str) -> tuple:
    """A sequence argument as a tuple; a lone string would otherwise be split into one-letter items."""
    if isinstance(values, (str, bytes, Path)):
        raise InputError(f"{what} must be a sequence, not the single value {values!r}: wrap it in a tuple")
    return tuple(values)


def check_arch(arch: str) -> None:
    if arch not in SUPPORTED_ARCHES:
        raise InputError(
            f"unknown arch {arch!r}: zipgen builds cubins for {', '.join(SUPPORTED_ARCHES)}. Name the GPU's "
            "exact arch (e.g. sm_90a for H100): a cubin built for one arch does not load on another.")


@functools.cache
def nvrtc_version() -> tuple[int, int]:
    major, minor = _call("nvrtcVersion", nvrtc.nvrtcVersion())
    return (major, minor)


def header_options() -> tuple[str, ...]:
    """Flags that let kernels include <cuda_bf16.h>, <cuda_pipeline.h> and the like."""
    if nvrtc_version() >= _BUNDLED_HEADERS_SINCE:
        # NVRTC unpacks the headers it was built with into this folder once, then reuses them.
        return (f"--use-bundled-headers={bundled_headers_dir(nvrtc_version())}",)
    from cuda.pathfinder import find_nvidia_header_directory  # the nvidia-cuda-runtime wheel's headers
    found = find_nvidia_header_directory("cudart")
    return (f"--include-path={found}",) if found else ()


def compile_cubin(source: str, arch: str, *, options: Iterable[str] = (), include_dirs: Iterable[str | Path] = (),
                  name_expressions: Iterable[str] = (), source_name: str = "kernel.cu") -> CompileResult:
    """Compile `source` to a cubin for `arch`; raise CompileError (with NVRTC's log) if it does not compile.

    options: raw NVRTC flags ("-lineinfo", "-DTILE=128", ...); the arch comes only from `arch`.
    include_dirs: extra folders searched for #include "..." (e.g. zipgen's kernel headers).
    name_expressions: template kernels to instantiate; their mangled names come back in `lowered_names`.
    """
    check_arch(arch)
    options = as_tuple(options, "options")
    name_expressions = as_tuple(name_expressions, "name_expressions")
    if any(opt.startswith(_ARCH_FLAGS) for opt in options):
        raise InputError(f"options {options} name an arch: pass it as `arch` instead")
    includes = []
    for folder in as_tuple(include_dirs, "include_dirs"):
        if not Path(folder).is_dir():
            raise InputError(f"include dir {str(folder)!r} is not a folder")
        includes.append(f"--include-path={folder}")
    flags = (f"-arch={arch}", *BASE_OPTIONS, *header_options(), *includes, *options)

    program = _call("nvrtcCreateProgram", nvrtc.nvrtcCreateProgram(source.encode(), source_name.encode(), 0, [], []))
    try:
        for expr in name_expressions:
            _call("nvrtcAddNameExpression", nvrtc.nvrtcAddNameExpression(program, expr.encode()))
        (status,) = nvrtc.nvrtcCompileProgram(program, len(flags), [f.encode() for f in flags])
        log = _program_log(program)
        if status != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            raise _compile_error(source, source_name, arch, flags, log, status)
        cubin = bytearray(_call("nvrtcGetCUBINSize", nvrtc.nvrtcGetCUBINSize(program)))
        _call("nvrtcGetCUBIN", nvrtc.nvrtcGetCUBIN(program, cubin))
        lowered = {expr: _call("nvrtcGetLoweredName", nvrtc.nvrtcGetLoweredName(program, expr.encode())).decode()
                   for expr in name_expressions}
    finally:
        nvrtc.nvrtcDestroyProgram(program)
    return CompileResult(bytes(cubin), log, arch, nvrtc_version(), flags, lowered)


def _call(what: str, result: tuple):
    """Unwrap a cuda.bindings (status, *values) tuple, raising on a bad status."""
    status, *values = result
    if status != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise CompileError(f"{what} failed: {_status_name(status)}")
    return values[0] if len(values) == 1 else tuple(values)


def _status_name(status) -> str:
    return nvrtc.nvrtcGetErrorString(status)[1].decode()


def _program_log(program) -> str:
    log = bytearray(_call("nvrtcGetProgramLogSize", nvrtc.nvrtcGetProgramLogSize(program)))
    _call("nvrtcGetProgramLog", nvrtc.nvrtcGetProgramLog(program, log))
    return log.rstrip(b"\0").decode(errors="replace")


def _compile_error(source, source_name, arch, flags, log, status) -> CompileError:
    saved = _save_failed_source(source, source_name, log)
    message = (f"NVRTC {'.'.join(map(str, nvrtc_version()))} could not compile {source_name} for {arch} "
               f"({_status_name(status)}).\nsource saved at: {saved}\nflags: {' '.join(flags)}\n{log}")
    return CompileError(message, log=log, source_path=saved)


def _save_failed_source(source: str, source_name: str, log: str) -> Path:
    """Write the source (and log) where the user can open it; the file name matches what the log cites."""
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    try:
        folder = failed_sources_dir() / digest
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:  # a read-only cache must not hide the compile error itself
        folder = Path(tempfile.mkdtemp(prefix="zipgen-nvrtc-"))
    path = folder / Path(source_name).name
    path.write_text(source)
    (folder / "nvrtc.log").write_text(log)
    return path
