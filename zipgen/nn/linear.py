"""ZipLinear: a drop-in nn.Linear whose BF16 weight is stored compressed (TCA-TBE).

The weight's storage, device moves and state dict are CompressedWeight's. forward() calls
torch.ops.zipgen.gemm: the fused ZipGEMM kernel on a GPU (decode + cuBLAS for many tokens), the
reference decoder + F.linear on the CPU.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError
from ..format import CompressedTensor, compress
from . import ops
from .compressed import CompressedWeight


class ZipLinear(CompressedWeight):
    """y = x W^T + b with W compressed. Build with from_linear() or from_compressed(); the
    constructor (nn.Linear's signature) makes an empty skeleton for load_state_dict()."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None,
                 dtype=None):
        if dtype not in (None, torch.bfloat16):
            raise InputError(f"ZipLinear computes in BF16 only, not {dtype}")
        super().__init__(out_features, in_features, device=device)
        self.in_features, self.out_features = in_features, out_features
        self.fused = ops.AUTO  # ops.FUSED / ops.DECODE force a GEMM path on CUDA
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_features, dtype=torch.bfloat16,
                                                 device=device), requires_grad=False)
        else:
            self.register_parameter("bias", None)

    # --- construction -----------------------------------------------------------------------
    @classmethod
    def from_compressed(cls, ct: CompressedTensor, bias: torch.Tensor | None = None) -> "ZipLinear":
        """Wrap a CompressedTensor (and an optional BF16 bias) without copying it."""
        if not isinstance(ct, CompressedTensor):
            raise InputError(f"expected a CompressedTensor, got {type(ct).__name__}")
        n, k = ct.shape
        module = cls(k, n, bias=bias is not None, device="meta")  # meta: no throwaway memory
        module.set_compressed(ct)
        if bias is not None:
            if bias.dtype != torch.bfloat16 or tuple(bias.shape) != (n,):
                raise InputError(f"bias must be BF16 of shape ({n},), got {bias.dtype} "
                                 f"{tuple(bias.shape)}")
            module.bias = nn.Parameter(bias.detach().to(ct.device), requires_grad=False)
        return module

    @classmethod
    def from_linear(cls, linear: nn.Linear, name: str = "linear") -> "ZipLinear":
        """Compress a BF16 nn.Linear (lossless), on the weight's device."""
        if not isinstance(linear, nn.Linear):
            raise InputError(f"{name}: expected an nn.Linear, got {type(linear).__name__}")
        w, b = linear.weight, linear.bias
        if w.dtype != torch.bfloat16 or (b is not None and b.dtype != torch.bfloat16):
            raise InputError(f"{name}: weight/bias are {w.dtype}/{getattr(b, 'dtype', None)}; "
                             f"ZipLinear compresses BF16 layers only (cast the model to BF16 "
                             f"first if that cast is acceptable; it is lossy for FP32)")
        return cls.from_compressed(compress(w.detach(), name=f"{name}.weight"),
                                   None if b is None else b.detach())

    # --- use --------------------------------------------------------------------------------
    def decompressed_weight(self) -> torch.Tensor:
        """The original BF16 weight [out, in], decoded on the module's device."""
        return ops.decompress_op(*self.streams(), self.out_features, self.in_features,
                                 self.base)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ops.check_input(x, self.out_features, self.in_features, self.bias)
        return ops.gemm_op(x, *self.streams(), self.out_features, self.in_features, self.base,
                           self.bias, self.fused)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, bits_per_weight={self.bits_per_weight:.2f}")
