"""zipgen.runtime.gemm_silu_mul: a Llama-style MLP's gated activation, silu(x @ Wg^T) * (x @ Wu^T),
with the gate and up projections stacked in one compressed weight W = [Wg; Wu].

Where the tuned kernel for the shape and M is the paired-strip kernel with 2 or 4 row groups
(M = 1 on an H200), the product is taken in its epilogue (ZipGemmConfig.silu_mul), which saves
the separate elementwise launch between the GEMM and the down projection. Elsewhere it is the
GEMM followed by F.silu and the product. Both give the bits of eager PyTorch's
act_fn(gate) * up on the GEMM's BF16 outputs.
"""
from __future__ import annotations

import dataclasses
import warnings

import torch
import torch.nn.functional as F

from ..errors import InputError, MissingKernelError
from ..format import CompressedTensor
from ..tune import dispatch
from .gemm import (check_gemm_inputs, check_out, fused_config, gemm, launch_fused,
                   token_rows, use_fused)

_missing: set = set()  # (device, config) of epilogue kernels that could not be had


def fuses_silu_mul(cfg, n: int) -> bool:
    """Whether `cfg` can take the product in its epilogue for a stacked N-row weight: the paired
    kernel with 2 or 4 row groups, and whole strip rows in each half."""
    return cfg.takes_silu_mul and n % 32 == 0


def gemm_silu_mul(x: torch.Tensor, w: CompressedTensor, out: torch.Tensor | None = None, *,
                  fused: bool | None = None) -> torch.Tensor:
    """silu(x @ Wg^T) * (x @ Wu^T) for W = [Wg; Wu] (N rows, N even): BF16 [..., N / 2]. `fused`
    as for gemm(); the epilogue is used where the fused kernel's tuned configuration allows."""
    check_gemm_inputs(x, w, None, None)
    n, k = w.shape
    if n % 2:
        raise InputError(f"a stacked gate / up weight has an even number of rows, not {n}")
    half = n // 2
    expected = tuple(x.shape[:-1]) + (half,)
    check_out(out, expected, x.device)
    y = out if out is not None else torch.empty(expected, dtype=torch.bfloat16, device=x.device)
    x2 = token_rows(x, k)
    m = x2.shape[0]
    if m == 0:
        return y
    if use_fused(x.device, m, n, k, fused):
        cfg = dispatch.choose("zipgemm", x.device, n, k, m, fused_config)
        gated = dataclasses.replace(cfg, silu_mul=True) if fuses_silu_mul(cfg, n) else None
        if gated is not None and (x.device, gated) not in _missing:
            try:
                launch_fused(gated, w, x2, None, y.view(m, half))
                return y
            except MissingKernelError:  # raised before any launch: nothing was written
                # a bundle without the variant and no NVRTC (ZIPGEN_DISABLE_JIT): the GEMM and
                # PyTorch's product give the same bits; warned once, not looked up again
                _missing.add((x.device, gated))
                warnings.warn(f"zipgen: no kernel for the gated-MLP epilogue "
                              f"({gated.describe()}) and compiling is disabled; running the "
                              f"GEMM and the product separately", stacklevel=2)
    both = gemm(x2, w, fused=fused)
    torch.mul(F.silu(both[:, :half]), both[:, half:], out=y.view(m, half))
    return y
