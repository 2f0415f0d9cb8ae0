"""Buffers the runtime keeps from call to call: split-K's FP32 workspaces and arrival counters,
and the decode + cuBLAS path's BF16 scratch.

A captured CUDA graph keeps pointing at them, so none is ever freed or replaced. Where they come
from matters:
* outside a capture, from the driver through cuda.core, stream-ordered on the current stream,
  and wrapped as torch tensors (__cuda_array_interface__) that torch's allocator never sees.
  torch.compile's CUDA-graph trees run their warm-up with every allocation routed to a private
  pool, and fail the step when a tensor made there outlives it ("tensors in the cudagraph pool
  not tracked as outputs"); driver memory is outside that pool.
* inside a plain capture (torch.cuda.graph), where the driver may not allocate, from torch, into
  the graph's pool. A warm-up call before the capture, which torch's documentation asks for,
  makes them outside it.
workspace_bytes() reports the driver memory, which torch.cuda.memory_allocated does not count.
"""
from __future__ import annotations

import threading

import torch

from .kernels import _cuda_core, _make_current, _stream_of

_lock = threading.Lock()
_scratch: dict[tuple, torch.Tensor] = {}
# split-K buffers per (device, stream): every pair ever made, smallest first
_split_k: dict[tuple, list[tuple[torch.Tensor, torch.Tensor]]] = {}
_driver_bytes: dict[int, int] = {}


class _DriverArray:
    """A cuda.core Buffer seen by torch.as_tensor (which keeps this object, so the buffer,
    alive as long as the tensor)."""

    def __init__(self, buffer, shape: tuple, typestr: str):
        self.buffer = buffer
        self.__cuda_array_interface__ = {"shape": shape, "typestr": typestr,
                                         "data": (int(buffer.handle), False), "version": 3,
                                         "strides": None, "stream": None}


# BF16 has no array-interface type: its bytes come in as int16 and are viewed as BF16
_TYPESTR = {torch.float32: "<f4", torch.int32: "<i4", torch.bfloat16: "<i2"}


def _index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def _allocate(device: torch.device, shape: tuple, dtype: torch.dtype, zero: bool) -> torch.Tensor:
    """A new tensor that lives for the process, on the current stream's order (see above)."""
    if torch.cuda.is_current_stream_capturing():
        make = torch.zeros if zero else torch.empty
        return make(shape, dtype=dtype, device=device)
    index = _index(device)
    _make_current(index)
    cc = _cuda_core()
    stream = _stream_of(torch.cuda.current_stream(index))
    nbytes = max(1, torch.Size(shape).numel()) * dtype.itemsize
    buffer = cc.Device(index).allocate(nbytes, stream=stream)
    if zero:
        buffer.fill(0, stream=stream)
    _driver_bytes[index] = _driver_bytes.get(index, 0) + nbytes
    tensor = torch.as_tensor(_DriverArray(buffer, shape, _TYPESTR[dtype]), device=device)
    return tensor.view(dtype) if dtype == torch.bfloat16 else tensor


def scratch(device: torch.device, n: int, k: int) -> torch.Tensor:
    """A BF16 [N, K] buffer reused by every decode + cuBLAS call of that shape on that device
    (stream order makes reuse safe; a side stream must not share it concurrently)."""
    key = (device, n, k)
    with _lock:
        buf = _scratch.get(key)
        if buf is None:
            buf = _scratch[key] = _allocate(device, (n, k), torch.bfloat16, zero=False)
    return buf


def split_k_buffers(device: torch.device, floats: int, tiles: int):
    """A workspace of at least `floats` FP32 and `tiles` arrival counters (zero) for a split-K
    launch on the current stream. Per stream, since two launches running at once would mix
    their counters; reused along a stream, since its launches run one after another and each
    leaves the counters at 0. Sizes grow in powers of two."""
    key = (device, torch.cuda.current_stream(device).cuda_stream)
    with _lock:
        pairs = _split_k.setdefault(key, [])
        for workspace, counters in pairs:
            if workspace.numel() >= floats and counters.numel() >= tiles:
                return workspace, counters
        size = max(1 << (floats - 1).bit_length(), pairs[-1][0].numel() if pairs else 0)
        count = max(1 << (tiles - 1).bit_length(), pairs[-1][1].numel() if pairs else 0)
        pair = (_allocate(device, (size,), torch.float32, zero=False),
                _allocate(device, (count,), torch.int32, zero=True))
        pairs.append(pair)
        return pair


def workspace_bytes(device: torch.device | int | None = None) -> int:
    """Bytes of driver memory the runtime holds on `device` (default: the current device) for
    its scratch buffers and split-K workspaces; torch.cuda.memory_allocated does not count it."""
    if device is None:
        index = torch.cuda.current_device()
    else:
        index = device if isinstance(device, int) else _index(torch.device(device))
    return _driver_bytes.get(index, 0)
