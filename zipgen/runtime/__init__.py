"""The runtime: generated kernels loaded on the GPU and called with torch tensors."""
from .decode import decompress_cuda
from .kernels import device_arch, get_kernel, launch

__all__ = ["decompress_cuda", "device_arch", "get_kernel", "launch"]
