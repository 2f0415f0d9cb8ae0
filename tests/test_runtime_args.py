"""Kernel argument conversion (CPU): pointer-sized values for tensors and None, 32-bit scalars."""
import numpy as np
import pytest
import torch

from zipgen.runtime.kernels import _kernel_argument


def test_pointers_and_scalars():
    t = torch.zeros(4)
    assert _kernel_argument(t) == t.data_ptr() and isinstance(_kernel_argument(t), int)
    assert _kernel_argument(None) == 0 and type(_kernel_argument(None)) is int  # a null pointer
    assert _kernel_argument(7).dtype == np.int32
    assert _kernel_argument(True).dtype == np.int32
    assert _kernel_argument(0.5).dtype == np.float32  # a double would shift every later argument
    assert _kernel_argument(np.uint64(3)).dtype == np.uint64
    with pytest.raises(TypeError):
        _kernel_argument("x")
