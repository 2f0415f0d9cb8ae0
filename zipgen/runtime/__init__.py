"""The runtime: generated kernels loaded on the GPU and called with torch tensors."""
from .decode import decompress_cuda
from .gated import gemm_silu_mul
from .gemm import FUSED_MAX_M, fused_config, gemm
from .kernels import device_arch, get_kernel, launch
from .rows import decode_rows_cuda
from .workspace import workspace_bytes

__all__ = ["FUSED_MAX_M", "decode_rows_cuda", "decompress_cuda", "fused_config", "gemm", "gemm_silu_mul", "device_arch", "get_kernel", "launch",
           "workspace_bytes"]
