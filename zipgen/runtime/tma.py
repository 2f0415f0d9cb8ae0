"""TMA tensor maps of the activations, for ZipGEMM's wgmma kernels (sm_90a).

The kernel asks the Tensor Memory Accelerator for boxes of `tokens` rows x 64 columns of
x [M, K] (BF16, row-major) in the 128-byte swizzle layout (templates/include/zipgen/
tma_activations.cuh); rows past M and columns past K come back as zeros. The map holds the
address, shape and strides only, so one is kept per (device, address, M, K, tokens).
"""
from __future__ import annotations

import ctypes
import threading
from collections import OrderedDict

import numpy as np
import torch

from ..errors import ZipgenError

_BOX_COLUMNS = 64  # one strip: 128 bytes, the swizzle span
_CACHE_SIZE = 1024
_lock = threading.Lock()
_cache: OrderedDict = OrderedDict()


def x_tensor_map(x2: torch.Tensor, tokens: int):
    """A kernel argument holding the tensor map of the contiguous, 16-byte aligned BF16 [M, K]
    matrix x2 for boxes of `tokens` x 64 (K % 8 == 0: row strides are multiples of 16 bytes)."""
    m, k = x2.shape
    key = (x2.device.index, x2.data_ptr(), m, k, tokens)
    with _lock:
        found = _cache.get(key)
        if found is not None:
            _cache.move_to_end(key)
            return found
    made = _encode(x2, tokens)
    with _lock:
        _cache[key] = made
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return made


def _encode(x2: torch.Tensor, tokens: int):
    """cuda.core's TensorMapDescriptor where this cuda.core has it, else the driver's
    cuTensorMapEncodeTiled, passed as its 128 raw bytes."""
    try:
        return _encode_cuda_core(x2, tokens)
    except (ImportError, AttributeError):
        return _encode_driver(x2, tokens)


def _encode_cuda_core(x2: torch.Tensor, tokens: int):
    from cuda.core._tensor_map import TensorMapOOBFill, TensorMapSwizzle
    from cuda.core.utils import StridedMemoryView

    view = StridedMemoryView.from_dlpack(x2.view(torch.int16), stream_ptr=-1)
    return view.as_tensor_map(box_dim=(tokens, _BOX_COLUMNS), data_type=np.dtype(np.uint16),
                              swizzle=TensorMapSwizzle.SWIZZLE_128B,
                              oob_fill=TensorMapOOBFill.NONE)


def _encode_driver(x2: torch.Tensor, tokens: int):
    from cuda.bindings import driver

    m, k = x2.shape
    err, tensor_map = driver.cuTensorMapEncodeTiled(
        driver.CUtensorMapDataType.CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, x2.data_ptr(),
        [k, m], [k * 2], [_BOX_COLUMNS, tokens], [1, 1],
        driver.CUtensorMapInterleave.CU_TENSOR_MAP_INTERLEAVE_NONE,
        driver.CUtensorMapSwizzle.CU_TENSOR_MAP_SWIZZLE_128B,
        driver.CUtensorMapL2promotion.CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
        driver.CUtensorMapFloatOOBfill.CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE)
    if err != driver.CUresult.CUDA_SUCCESS:
        raise ZipgenError(f"cuTensorMapEncodeTiled failed for x {m} x {k}, box {tokens} x "
                          f"{_BOX_COLUMNS}: {err.name}")
    return (ctypes.c_uint64 * 16)(*tensor_map.opaque)
