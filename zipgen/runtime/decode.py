"""The GPU decoder: CompressedTensor on a CUDA device -> BF16 matrix, bit-exact."""
from __future__ import annotations

import torch

from ..codegen import DecodeConfig
from ..errors import InputError
from ..format import CompressedTensor
from ..format.layout import padded_shape
from ..tune import dispatch
from .kernels import get_kernel, launch


def _default_config(m, n, k) -> DecodeConfig:
    return DecodeConfig()


# Alignment the kernels' vector and word loads need, per stream.
_STREAM_ALIGNMENT = {"sign_mantissa": 16, "planes": 4, "fallback_entries": 4, "fallback_offsets": 4}


def check_stream_alignment(ct: CompressedTensor) -> None:
    """InputError unless each stream starts where the kernels' loads need (freshly allocated
    tensors always do; a view into a larger buffer may not: .clone() fixes it)."""
    for name, alignment in _STREAM_ALIGNMENT.items():
        if getattr(ct, name).data_ptr() % alignment:
            raise InputError(f"{name} must be {alignment}-byte aligned for the GPU kernels' "
                             f"loads (clone the tensor to realign it)")


def decompress_cuda(ct: CompressedTensor, out: torch.Tensor | None = None,
                    config: DecodeConfig | None = None) -> torch.Tensor:
    """Decode `ct` (on a CUDA device) into `out` (BF16 [N, K] on the same device, made if
    None) with the generated decoder, on torch's current stream. `config` defaults to the
    tuning database's winner for the device and shape, else DecodeConfig()."""
    if ct.device.type != "cuda":
        raise InputError(f"decompress_cuda needs a CompressedTensor on a CUDA device, not {ct.device}")
    n, k = ct.shape
    if out is None:
        out = torch.empty((n, k), dtype=torch.bfloat16, device=ct.device)
    elif (out.dtype != torch.bfloat16 or tuple(out.shape) != (n, k) or out.device != ct.device
          or not out.is_contiguous()):
        raise InputError(f"out must be a contiguous BF16 tensor of shape {(n, k)} on {ct.device}, "
                         f"got {out.dtype} {tuple(out.shape)} on {out.device}")
    if out.data_ptr() % 16:
        raise InputError("out must be 16-byte aligned for the decoder's vector stores")
    check_stream_alignment(ct)
    # the tuned winner for (device, N, K), else the default; cached per key
    cfg = config or dispatch.choose("decode", ct.device, n, k, None, _default_config)
    kernel = get_kernel("decode", cfg, ct.device)
    strips_per_row_group = padded_shape(n, k)[1] // 64
    launch(kernel, grid=(cfg.grid(ct.num_strips),), block=(cfg.threads,),
           args=(ct.sign_mantissa, ct.planes, ct.fallback_entries, ct.fallback_offsets, out,
                 n, k, strips_per_row_group, ct.num_strips, ct.base),
           device=ct.device)
    return out
