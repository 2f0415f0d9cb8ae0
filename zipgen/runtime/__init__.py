"""The runtime: generated kernels loaded on the GPU and called with torch tensors."""
from .decode import decompress_cuda
from .gemm import FUSED_MAX_M, fused_config, gemm
from .kernels import device_arch, get_kernel, launch
from .workspace import workspace_bytes

__all__ = ["FUSED_MAX_M", "decompress_cuda", "fused_config", "gemm", "device_arch", "get_kernel", "launch",
           "workspace_bytes"]
