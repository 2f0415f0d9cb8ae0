"""The fused GEMM on format-version-2 weights (zipgen/format/codec_v2.py), for measuring the
proposed format against version 1; not yet behind zipgen.runtime.gemm or the tuner."""
from __future__ import annotations

import dataclasses

import torch

from ..codegen import ZipGemmConfig
from ..errors import InputError
from ..format.codec_v2 import CompressedTensorV2
from ..format.layout import padded_shape
from .gemm import fused_config
from .kernels import get_kernel, launch


def gemm_v2(x: torch.Tensor, w: CompressedTensorV2, bias: torch.Tensor | None = None,
            out: torch.Tensor | None = None, *, config: ZipGemmConfig | None = None
            ) -> torch.Tensor:
    """y = x @ W^T (+ bias) with the fused kernel; x BF16 [..., K] on W's device."""
    if not isinstance(w, CompressedTensorV2):
        raise InputError(f"w must be a CompressedTensorV2, got {type(w).__name__}")
    n, k = w.shape
    if x.dtype != torch.bfloat16 or x.shape[-1] != k or x.device != w.device or k % 8:
        raise InputError(f"x must be BF16 [..., {k}] on {w.device} with K % 8 == 0, got "
                         f"{x.dtype} {tuple(x.shape)} on {x.device}")
    if bias is not None and (bias.dtype != torch.bfloat16 or tuple(bias.shape) != (n,)):
        raise InputError(f"bias must be a BF16 tensor of shape ({n},)")
    x2 = x.reshape(-1, k).contiguous()
    m = x2.shape[0]
    y = out if out is not None else torch.empty(tuple(x.shape[:-1]) + (n,), dtype=torch.bfloat16,
                                                device=x.device)
    if m == 0:
        return y
    cfg = dataclasses.replace(config or fused_config(m, n, k), format_version=2)
    kernel = get_kernel("zipgemm", cfg, x.device)
    launch(kernel, grid=cfg.grid(n, m), block=(cfg.threads,), shared_bytes=cfg.smem_bytes,
           args=(w.sign_mantissa, w.planes, w.entries, w.offsets, x2, bias, y.view(m, n),
                 m, n, k, padded_shape(n, k)[1] // 64, w.entries.numel(), w.base),
           device=x.device)
    return y
