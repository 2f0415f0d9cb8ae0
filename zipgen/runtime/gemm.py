"""zipgen.runtime.gemm: y = x @ W^T (+ bias) with W a TCA-TBE CompressedTensor, like F.linear.

Small M runs the fused ZipGEMM kernel (decode in registers/shared memory, tensor cores); large M
decodes W once into a reusable scratch buffer with the GPU decoder and calls cuBLAS. Nothing on
the hot path synchronises with the host, so calls can be captured in CUDA graphs.
"""
from __future__ import annotations

import torch

from ..codegen import ARCHES, ZipGemmConfig
from ..errors import InputError
from ..format import CompressedTensor
from ..format.layout import padded_shape
from ..tune import dispatch
from .decode import check_stream_alignment, decompress_cuda
from .kernels import get_kernel, launch
from .tma import x_tensor_map
from .workspace import scratch, split_k_buffers

# Largest M for which the fused kernel is used; above it, decode + cuBLAS. From the fused vs
# decode+cuBLAS columns of benchmarks/gemm.py on an H200 (BENCHMARKS.md: fused wins at M = 32 on
# every Llama layer but the 8B qkv, loses at 64); the tuned switch point of the device and shape
# replaces it when the tuning database has one (zipgen.tune.dispatch).
FUSED_MAX_M = 32


def fused_config(m: int, n: int, k: int) -> ZipGemmConfig:
    """The default fused-kernel configuration for M tokens and an N x K weight, used when the
    tuning database has nothing for the shape (zipgen.tune.dispatch): the winners of
    benchmarks/gemm_sweep.py on an H200 (2026-11-28) for the Llama-3.1 shapes, generalised by
    shape class."""
    tiles = 1 if m <= 8 else 2 if m <= 16 else 4 if m <= 32 else 8
    if m == 1:  # one token row: each lane loads its own B fragments (direct)
        if k >= 8192:  # long rows (down_proj): more warps per row, two row groups
            candidates = [ZipGemmConfig(16, 1, 1, 2, False), ZipGemmConfig(8, 1, 1, 2, False)]
        elif n >= 16384:  # many rows (gate_up): small CTAs, many resident
            candidates = [ZipGemmConfig(4, 1, 1, 1, False)]
        else:
            candidates = [ZipGemmConfig(16, 1, 1, 1, False), ZipGemmConfig(8, 1, 1, 1, False)]
    else:  # activations staged in shared memory, shared by the row groups of a K slice
        if k >= 8192:
            candidates = [ZipGemmConfig(16, tiles, 1, 2 if tiles == 1 else 4, True)]
        elif n >= 16384:
            candidates = [ZipGemmConfig(8, tiles, 1, 2 if tiles == 1 else 4, True)]
        else:
            candidates = [ZipGemmConfig(8, tiles, 1, 1, True)]
    candidates.append(ZipGemmConfig(4, tiles, 1, 1, m > 1))  # the smallest: fits every arch
    # the first that every arch can run (sm_86 / sm_89 allow the least shared memory)
    return next(c for c in candidates if not any(c.problems(a) for a in ARCHES.values()))


def check_gemm_inputs(x: torch.Tensor, w: CompressedTensor, bias, out):
    """Clear errors for a GEMM's arguments (out: [..., N]; None to check it with check_out)."""
    if not isinstance(w, CompressedTensor):
        raise InputError(f"w must be a zipgen.CompressedTensor, got {type(w).__name__}")
    if not isinstance(x, torch.Tensor) or x.dtype != torch.bfloat16:
        raise InputError(f"x must be a torch.bfloat16 tensor, got "
                         f"{getattr(x, 'dtype', type(x).__name__)}")
    n, k = w.shape
    if x.dim() < 1 or x.shape[-1] != k:
        raise InputError(f"x has shape {tuple(x.shape)}; its last dimension must be K = {k}")
    if x.device.type != "cuda" or x.device != w.device:
        raise InputError(f"x is on {x.device} and w on {w.device}; both must be on the same "
                         f"CUDA device (move w with w.to(device))")
    if bias is not None and (bias.dtype != torch.bfloat16 or tuple(bias.shape) != (n,)
                             or bias.device != x.device):
        raise InputError(f"bias must be a BF16 tensor of shape ({n},) on {x.device}, got "
                         f"{bias.dtype} {tuple(bias.shape)} on {bias.device}")
    check_stream_alignment(w)
    check_out(out, tuple(x.shape[:-1]) + (n,), x.device)


def check_out(out, expected: tuple, device: torch.device) -> None:
    """An `out` argument (or None) must be a contiguous BF16 tensor of the expected shape."""
    if out is not None and (out.dtype != torch.bfloat16 or tuple(out.shape) != expected
                            or out.device != device or not out.is_contiguous()):
        raise InputError(f"out must be a contiguous BF16 tensor of shape {expected} on "
                         f"{device}, got {out.dtype} {tuple(out.shape)} on {out.device}")


def gemm(x: torch.Tensor, w: CompressedTensor, bias: torch.Tensor | None = None,
         out: torch.Tensor | None = None, *, config: ZipGemmConfig | None = None,
         fused: bool | None = None) -> torch.Tensor:
    """y = x @ W^T (+ bias), W decoded on the fly. x: BF16 [..., K] on W's device; returns BF16
    [..., N]. `fused` forces (True) or forbids (False) the fused kernel (default: the tuned
    switch point, else M <= FUSED_MAX_M); `config` picks its tile configuration (default: the
    tuned winner, else fused_config)."""
    check_gemm_inputs(x, w, bias, out)
    n, k = w.shape
    x2 = token_rows(x, k)
    m = x2.shape[0]
    y = out if out is not None else torch.empty(tuple(x.shape[:-1]) + (n,), dtype=torch.bfloat16,
                                                device=x.device)
    if m == 0:
        return y
    y2 = y.view(m, n)
    if use_fused(x.device, m, n, k, fused):
        # the tuned winner for (device, N, K, M bucket), else fused_config; cached per key
        launch_fused(config or dispatch.choose("zipgemm", x.device, n, k, m, fused_config), w, x2,
                     bias, y2)
    else:
        weight = decompress_cuda(w, out=scratch(x.device, n, k))
        # the calls F.linear makes, so that this path equals F.linear on the original weights
        if bias is not None:
            torch.addmm(bias, x2, weight.t(), out=y2)
        else:
            torch.mm(x2, weight.t(), out=y2)
    return y


def token_rows(x: torch.Tensor, k: int) -> torch.Tensor:
    """x as [M, K] rows, contiguous and 16-byte aligned (a fresh copy where it is not)."""
    x2 = x.reshape(-1, k)
    if not x2.is_contiguous() or x2.data_ptr() % 16:
        x2 = x2.clone(memory_format=torch.contiguous_format)
    return x2


def use_fused(device: torch.device, m: int, n: int, k: int, fused: bool | None) -> bool:
    """Whether a call runs the fused kernel: `fused` if given (True needs K % 8 == 0, for
    aligned 4-byte activation loads), else the tuned switch point, cached per (device, N, K)."""
    if fused is None:
        return m <= dispatch.fused_max_m(device, n, k, FUSED_MAX_M) and k % 8 == 0
    if fused and k % 8:
        raise InputError(f"the fused kernel needs K % 8 == 0 (K = {k}); use fused=None")
    return fused


def launch_fused(cfg: ZipGemmConfig, w: CompressedTensor, x2: torch.Tensor, bias, y2) -> None:
    """The fused kernel of `cfg` on x2 [M, K] into y2 (its [M, N] output, or [M, N / 2] for
    cfg.silu_mul)."""
    n, k = w.shape
    m = x2.shape[0]
    kernel = get_kernel("zipgemm", cfg, x2.device)
    args = (w.sign_mantissa, w.planes, w.fallback_entries, w.fallback_offsets, x2, bias, y2,
            m, n, k, padded_shape(n, k)[1] // 64, w.fallback_entries.numel() // 4, w.base)
    if cfg.takes_x_map:  # its activations come through the TMA
        args += (x_tensor_map(x2, cfg.tokens),)
    if cfg.k_splits > 1:
        args += split_k_buffers(x2.device, *cfg.split_k_sizes(n, m))
    launch(kernel, grid=cfg.grid(n, m), block=(cfg.threads,), shared_bytes=cfg.smem_bytes,
           args=args, device=x2.device)
