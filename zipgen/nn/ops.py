"""The TCA-TBE GEMM and decoders as torch custom ops: `torch.ops.zipgen.gemm`,
`torch.ops.zipgen.gemm_silu_mul` (a gated MLP's stacked gate / up projection and its activation),
`torch.ops.zipgen.decompress` and `torch.ops.zipgen.decode_rows` (an embedding lookup).

Custom ops take tensors and scalars, not dataclasses, so a CompressedTensor travels as its four
stream tensors plus (n, k, base). Each op has a CUDA kernel (the generated kernels of
zipgen.runtime), a CPU kernel (the torch-op reference decoder + F.linear: slow, exact, for tests
and CPU inference) and a fake kernel (output shape and dtype only) so that torch.compile can
trace through it and CUDA graphs can capture it. The GEMM has a backward for the activations
(grad_x = grad_y @ W), so adapters can be trained on top of compressed layers; the compressed
weight itself is frozen.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import InputError
from ..format import CompressedTensor, decompress_reference
from ..format.rows import check_indices, decode_rows
from ..format.tensor import STREAMS

# Values of the GEMM op's `fused` argument (an int keeps the schema plain):
AUTO, FUSED, DECODE = -1, 1, 0


def unchecked(n: int, k: int, base: int, sign_mantissa, planes, fallback_entries,
              fallback_offsets) -> CompressedTensor:
    """The op's streams as a CompressedTensor, without validation (CompressedTensor.trusted):
    they were validated when their ZipLinear was built or loaded."""
    return CompressedTensor.trusted((n, k), base, sign_mantissa=sign_mantissa, planes=planes,
                                    fallback_entries=fallback_entries,
                                    fallback_offsets=fallback_offsets)


def check_input(x: torch.Tensor, n: int, k: int, bias) -> None:
    """The errors F.linear would give, worded for a compressed layer."""
    if x.dtype != torch.bfloat16:
        raise InputError(f"zipgen GEMM: input dtype {x.dtype} is not torch.bfloat16; compressed "
                         f"layers compute in BF16 (cast the input or the model to BF16)")
    if x.dim() < 1 or x.shape[-1] != k:
        raise InputError(f"zipgen GEMM: input shape {tuple(x.shape)} does not end in "
                         f"in_features = {k} (weight is {n} x {k})")
    if bias is not None and (bias.dtype != torch.bfloat16 or tuple(bias.shape) != (n,)):
        raise InputError(f"zipgen GEMM: bias must be BF16 of shape ({n},), got {bias.dtype} "
                         f"{tuple(bias.shape)}")


# --- zipgen::decompress ------------------------------------------------------------------------

# Explicit schemas: `int`, not the inferred SymInt, so shapes and base stay compile-time constants.
@torch.library.custom_op("zipgen::decompress", mutates_args=(), device_types="cpu",
                         schema="(Tensor sign_mantissa, Tensor planes, Tensor fallback_entries, "
                                "Tensor fallback_offsets, int n, int k, int base) -> Tensor")
def decompress_op(sign_mantissa: torch.Tensor, planes: torch.Tensor,
                  fallback_entries: torch.Tensor, fallback_offsets: torch.Tensor,
                  n: int, k: int, base: int) -> torch.Tensor:
    """The BF16 [n, k] matrix the streams encode (CPU: the reference decoder)."""
    return decompress_reference(CompressedTensor((n, k), base, sign_mantissa, planes,
                                                 fallback_entries, fallback_offsets))


@decompress_op.register_kernel("cuda")
def _decompress_cuda(sign_mantissa, planes, fallback_entries, fallback_offsets, n, k, base):
    from ..runtime.decode import decompress_cuda  # CUDA-only imports stay off the CPU path
    return decompress_cuda(unchecked(n, k, base, sign_mantissa, planes, fallback_entries,
                                     fallback_offsets))


@decompress_op.register_fake
def _decompress_fake(sign_mantissa, planes, fallback_entries, fallback_offsets, n, k, base):
    return sign_mantissa.new_empty((n, k), dtype=torch.bfloat16)


# --- zipgen::decode_rows -------------------------------------------------------------------------

@torch.library.custom_op("zipgen::decode_rows", mutates_args=(), device_types="cpu",
                         schema="(Tensor ids, Tensor sign_mantissa, Tensor planes, "
                                "Tensor fallback_entries, Tensor fallback_offsets, int n, int k, "
                                "int base, Tensor? keys) -> Tensor")
def decode_rows_op(ids: torch.Tensor, sign_mantissa: torch.Tensor, planes: torch.Tensor,
                   fallback_entries: torch.Tensor, fallback_offsets: torch.Tensor, n: int, k: int,
                   base: int, keys: torch.Tensor | None) -> torch.Tensor:
    """BF16 [*ids.shape, k]: rows `ids` of the matrix, bit for bit. CPU: gathers
    (zipgen.format.rows.decode_rows; `keys`, its entry_keys(), makes them fast). CUDA: the
    generated row decoder, one launch (keys unused)."""
    check_indices(ids, sign_mantissa.device)
    return decode_rows(unchecked(n, k, base, sign_mantissa, planes, fallback_entries,
                                 fallback_offsets), ids, keys)


@decode_rows_op.register_kernel("cuda")
def _decode_rows_cuda(ids, sign_mantissa, planes, fallback_entries, fallback_offsets, n, k, base,
                      keys):
    from ..runtime.rows import decode_rows_cuda  # checks the indices itself
    return decode_rows_cuda(unchecked(n, k, base, sign_mantissa, planes, fallback_entries,
                                      fallback_offsets), ids)


@decode_rows_op.register_fake
def _decode_rows_fake(ids, sign_mantissa, planes, fallback_entries, fallback_offsets, n, k, base,
                      keys):
    check_indices(ids, sign_mantissa.device)
    return sign_mantissa.new_empty(tuple(ids.shape) + (k,), dtype=torch.bfloat16)


# --- zipgen::gemm ------------------------------------------------------------------------------

@torch.library.custom_op("zipgen::gemm", mutates_args=(), device_types="cpu",
                         schema="(Tensor x, Tensor sign_mantissa, Tensor planes, "
                                "Tensor fallback_entries, Tensor fallback_offsets, int n, int k, "
                                "int base, Tensor? bias, int fused) -> Tensor")
def gemm_op(x: torch.Tensor, sign_mantissa: torch.Tensor, planes: torch.Tensor,
            fallback_entries: torch.Tensor, fallback_offsets: torch.Tensor, n: int, k: int,
            base: int, bias: torch.Tensor | None, fused: int) -> torch.Tensor:
    """y = x @ W^T (+ bias), like F.linear. CPU: decode W with the reference decoder, then
    F.linear, so the result equals F.linear on the original weight bit for bit. `fused`
    (AUTO, FUSED, DECODE) matters on CUDA only."""
    check_input(x, n, k, bias)
    w = decompress_op(sign_mantissa, planes, fallback_entries, fallback_offsets, n, k, base)
    return F.linear(x, w, bias)


@gemm_op.register_kernel("cuda")
def _gemm_cuda(x, sign_mantissa, planes, fallback_entries, fallback_offsets, n, k, base,
               bias, fused):
    from ..runtime.gemm import gemm
    ct = unchecked(n, k, base, sign_mantissa, planes, fallback_entries, fallback_offsets)
    return gemm(x, ct, bias, fused=None if fused == AUTO else bool(fused))


@gemm_op.register_fake
def _gemm_fake(x, sign_mantissa, planes, fallback_entries, fallback_offsets, n, k, base,
               bias, fused):
    check_input(x, n, k, bias)
    return x.new_empty(tuple(x.shape[:-1]) + (n,))


def _gemm_setup_context(ctx, inputs, output):
    x, sm, planes, fb, offsets, n, k, base, bias, fused = inputs
    ctx.save_for_backward(sm, planes, fb, offsets)
    ctx.nkb = (n, k, base)
    ctx.has_bias = bias is not None


def _gemm_backward(ctx, grad):
    """grad_x = grad_y @ W (W decoded once more); grad_bias = grad_y summed over tokens. The
    streams are integer tensors and get no gradient."""
    w = decompress_op(*ctx.saved_tensors, *ctx.nkb)
    grad_x = grad @ w if ctx.needs_input_grad[0] else None
    grad_bias = (grad.reshape(-1, grad.shape[-1]).sum(0)
                 if ctx.has_bias and ctx.needs_input_grad[8] else None)
    return grad_x, None, None, None, None, None, None, None, grad_bias, None


gemm_op.register_autograd(_gemm_backward, setup_context=_gemm_setup_context)


# --- zipgen::gemm_silu_mul ------------------------------------------------------------------

def check_stacked(x: torch.Tensor, n: int, k: int) -> None:
    check_input(x, n, k, None)
    if n % 2:
        raise InputError(f"a stacked gate / up weight has an even number of rows, not {n}")


@torch.library.custom_op("zipgen::gemm_silu_mul", mutates_args=(), device_types="cpu",
                         schema="(Tensor x, Tensor sign_mantissa, Tensor planes, "
                                "Tensor fallback_entries, Tensor fallback_offsets, int n, int k, "
                                "int base, int fused) -> Tensor")
def gemm_silu_mul_op(x: torch.Tensor, sign_mantissa: torch.Tensor, planes: torch.Tensor,
                     fallback_entries: torch.Tensor, fallback_offsets: torch.Tensor, n: int,
                     k: int, base: int, fused: int) -> torch.Tensor:
    """silu(x @ Wg^T) * (x @ Wu^T) for the stacked W = [Wg; Wu] (n rows): what a gated MLP's
    `act_fn(gate_proj(x)) * up_proj(x)` gives on the stacked GEMM's output, bit for bit. CPU:
    the reference decoder, F.linear, F.silu and the product. Inference only (no backward)."""
    check_stacked(x, n, k)
    y = gemm_op(x, sign_mantissa, planes, fallback_entries, fallback_offsets, n, k, base, None,
                fused)
    return F.silu(y[..., : n // 2]) * y[..., n // 2:]


@gemm_silu_mul_op.register_kernel("cuda")
def _gemm_silu_mul_cuda(x, sign_mantissa, planes, fallback_entries, fallback_offsets, n, k,
                        base, fused):
    from ..runtime.gated import gemm_silu_mul
    ct = unchecked(n, k, base, sign_mantissa, planes, fallback_entries, fallback_offsets)
    return gemm_silu_mul(x, ct, fused=None if fused == AUTO else bool(fused))


@gemm_silu_mul_op.register_fake
def _gemm_silu_mul_fake(x, sign_mantissa, planes, fallback_entries, fallback_offsets, n, k,
                        base, fused):
    check_stacked(x, n, k)
    return x.new_empty(tuple(x.shape[:-1]) + (n // 2,))


def gemm(x: torch.Tensor, ct: CompressedTensor, bias: torch.Tensor | None = None,
         fused: int = AUTO) -> torch.Tensor:
    """torch.ops.zipgen.gemm for a CompressedTensor (a convenience for callers with one)."""
    return gemm_op(x, *(ct.streams()[s] for s in STREAMS), ct.shape[0], ct.shape[1], ct.base,
                   bias, fused)
