"""TMA tensor maps of the activations, for ZipGEMM's wgmma kernels (sm_90a).

The kernel asks the Tensor Memory Accelerator for boxes of `tokens` rows x 64 columns of
x [M, K] (BF16, row-major) in the 128-byte swizzle layout (templates/include/zipgen/
tma_activations.cuh); rows past M and columns past K come back as zeros.
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import ZipgenError

_BOX_COLUMNS = 64  # one strip: 128 bytes, the swizzle span


def x_tensor_map(x2: torch.Tensor, tokens: int):
    """A kernel argument holding the tensor map of the contiguous, 16-byte aligned BF16 [M, K]
    matrix x2 for boxes of `tokens` x 64 (K % 8 == 0: row strides are multiples of 16 bytes):
    cuda.core's TensorMapDescriptor (cuda.core >= 1.2), which cuda.core.launch passes by value.
    Made per call: a descriptor holds a reference to its tensor, so a cache of them would keep
    activations alive, and the launch copies it by value (a CUDA graph keeps that copy). x2 goes
    in as int16 (DLPack has no portable BF16) with a 16-bit data type: the TMA only moves the
    bits."""
    try:
        from cuda.core._tensor_map import TensorMapOOBFill, TensorMapSwizzle
        from cuda.core.utils import StridedMemoryView
    except ImportError as exc:
        raise ZipgenError(f"the wgmma kernels need cuda-core >= 1.2 for TMA tensor maps "
                          f"({exc}); upgrade cuda-core or use a configuration without wgmma")
    view = StridedMemoryView.from_dlpack(x2.view(torch.int16), stream_ptr=-1)
    return view.as_tensor_map(box_dim=(tokens, _BOX_COLUMNS), data_type=np.dtype(np.uint16),
                              swizzle=TensorMapSwizzle.SWIZZLE_128B,
                              oob_fill=TensorMapOOBFill.NONE)
