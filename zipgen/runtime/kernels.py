"""Loading generated kernels onto the current CUDA device and launching them on torch's stream.

cuda.core does the driver work (module load, launch); cubins come from zipgen.bundle's lookup
(bundle, installed bundle, cubin cache, else NVRTC) once per (device, op, arch, config) and are
kept for the process."""
from __future__ import annotations

import threading

import numpy as np
import torch

from ..bundle.loader import resolve_kernel
from ..codegen import arch_for_capability, compile_arch
from ..errors import ZipgenError

_lock = threading.Lock()
_kernels: dict[tuple, object] = {}
_current_devices: set[tuple[int, int]] = set()


def device_arch(device: torch.device) -> str:
    """The arch string whose cubins run on this CUDA device, e.g. "sm_90"."""
    return arch_for_capability(torch.cuda.get_device_capability(device))


def _cuda_core():
    try:
        import cuda.core as cc
    except ImportError as exc:  # pragma: no cover - a broken install
        raise ZipgenError(f"cuda-python (cuda.core) is needed to launch zipgen kernels: {exc}")
    return cc


def _make_current(device_index: int) -> None:
    """cuda.core wants its Device current in this thread (torch uses the same primary context)."""
    key = (threading.get_ident(), device_index)
    if key not in _current_devices:
        _cuda_core().Device(device_index).set_current()
        _current_devices.add(key)


# Shared memory a kernel may use without opting in (every arch zipgen supports).
_STATIC_SMEM_LIMIT = 48 * 1024


def get_kernel(op: str, config, device: torch.device):
    """The loaded kernel for `config` on `device` (from a bundle, the cache, or NVRTC)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    arch = compile_arch(device_arch(torch.device("cuda", index)), config)
    key = (index, op, arch, config)
    kernel = _kernels.get(key)
    if kernel is None:
        with _lock:
            kernel = _kernels.get(key)
            if kernel is None:
                resolved = resolve_kernel(op, arch, config)
                _make_current(index)
                code = _cuda_core().ObjectCode.from_cubin(resolved.cubin)
                kernel = code.get_kernel(resolved.kernel_name)
                if config.dynamic_smem and config.smem_bytes > _STATIC_SMEM_LIMIT:
                    _allow_dynamic_smem(kernel, config.smem_bytes, index)
                if getattr(config, "stage_x", False):
                    _prefer_shared_memory(kernel, index)
                _kernels[key] = kernel
    return kernel


def _set_kernel_attribute(kernel, attribute, value: int, device_index: int, what: str) -> None:
    """cuKernelSetAttribute (library-loaded kernels, cuda.core) or cuFuncSetAttribute."""
    from cuda.bindings import driver

    handle = kernel.handle
    if isinstance(handle, driver.CUkernel):
        err, = driver.cuKernelSetAttribute(attribute, value, handle, device_index)
    else:
        err, = driver.cuFuncSetAttribute(handle, attribute, value)
    if err != driver.CUresult.CUDA_SUCCESS:
        raise ZipgenError(f"could not {what} for a kernel on cuda:{device_index}: {err.name}")


def _allow_dynamic_smem(kernel, nbytes: int, device_index: int) -> None:
    """Opt a kernel into more than 48 KB of dynamic shared memory on one device."""
    from cuda.bindings import driver

    _set_kernel_attribute(
        kernel, driver.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
        nbytes, device_index, f"allow {nbytes} B of dynamic shared memory")


def _prefer_shared_memory(kernel, device_index: int) -> None:
    """Ask for the largest shared-memory carveout (the rest of the SM's 256 KB stays L1). The
    staged ZipGEMM kernels are limited by it otherwise: the driver picked 100 KB for 22 KB per
    CTA, 4 CTAs per SM (Nsight Compute, H200, 2026-11-28)."""
    from cuda.bindings import driver

    _set_kernel_attribute(
        kernel, driver.CUfunction_attribute.CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT,
        100, device_index, "prefer the largest shared-memory carveout")


_streams: dict[int, object] = {}


def _stream_of(torch_stream: torch.cuda.Stream):
    """A cuda.core Stream for torch's stream (wrapping the handle; torch owns the stream)."""
    handle = torch_stream.cuda_stream
    wrapped = _streams.get(handle)
    if wrapped is None:
        wrapped = _streams[handle] = _cuda_core().Stream.from_handle(handle)
    return wrapped


def _kernel_argument(a):
    """Tensors and None become pointers (cuda.core passes a Python int as a pointer), Python
    ints int32 and floats float32 (never doubles: the kernels take 32-bit scalars); numpy
    scalars and TMA tensor maps pass as they are."""
    if isinstance(a, torch.Tensor):
        return a.data_ptr()
    if a is None:
        return 0
    if isinstance(a, np.generic):
        return a
    if isinstance(a, (bool, int)):
        return np.int32(a)
    if isinstance(a, float):
        return np.float32(a)
    if type(a).__name__ == "TensorMapDescriptor":
        return a  # a TMA tensor map (zipgen.runtime.tma): cuda.core passes it by value
    raise TypeError(f"cannot pass {type(a).__name__} to a kernel")


def launch(kernel, grid, block, args, *, device: torch.device, shared_bytes: int = 0) -> None:
    """Launch on the current torch stream of `device`; see _kernel_argument for the types."""
    cc = _cuda_core()
    index = device.index if device.index is not None else torch.cuda.current_device()
    _make_current(index)
    converted = [_kernel_argument(a) for a in args]
    config = cc.LaunchConfig(grid=grid, block=block, shmem_size=shared_bytes)
    stream = _stream_of(torch.cuda.current_stream(index))
    try:
        cc.launch(stream, config, kernel, *converted)
    except Exception as exc:
        raise ZipgenError(f"kernel launch failed (grid {grid}, block {block}): {exc}") from exc
