"""ZipLinear: a drop-in nn.Linear whose BF16 weight is stored compressed (TCA-TBE).

The four streams are buffers, so `.to(device)`, `.cuda()`, `state_dict()` and
`load_state_dict()` work as for any module; shape and base exponent travel in the state dict as
the module's extra state. forward() calls torch.ops.zipgen.gemm: the fused ZipGEMM kernel on a
GPU (decode + cuBLAS for many tokens), the reference decoder + F.linear on the CPU.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import FormatError, InputError
from ..format import FORMAT_VERSION, CompressedTensor, compress
from ..format.layout import LANES, PLANES, STRIP_ELEMS, num_strips
from ..format.tensor import STREAMS
from . import ops


class ZipLinear(nn.Module):
    """y = x W^T + b with W compressed. Build with from_linear() or from_compressed(); the
    constructor (nn.Linear's signature) makes an empty skeleton for load_state_dict()."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None,
                 dtype=None):
        super().__init__()
        if dtype not in (None, torch.bfloat16):
            raise InputError(f"ZipLinear computes in BF16 only, not {dtype}")
        self.in_features, self.out_features = in_features, out_features
        self.base = 0
        self.fused = ops.AUTO  # ops.FUSED / ops.DECODE force a GEMM path on CUDA
        s = num_strips(out_features, in_features)
        # streams of the right sizes for (out, in) with no fallbacks; load_state_dict resizes
        shapes = {"sign_mantissa": (s * STRIP_ELEMS,), "planes": (s, PLANES, LANES),
                  "fallback_exponents": (0,), "fallback_offsets": (s + 1,)}
        for name, stream_dtype in STREAMS.items():
            self.register_buffer(name, torch.zeros(shapes[name], dtype=stream_dtype,
                                                   device=device))
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

    def set_compressed(self, ct: CompressedTensor) -> None:
        """Replace the weight by `ct` (validated; shape must be (out_features, in_features))."""
        ct.validate()
        if tuple(ct.shape) != (self.out_features, self.in_features):
            raise InputError(f"compressed weight is {ct.shape[0]} x {ct.shape[1]}, this layer "
                             f"needs {self.out_features} x {self.in_features}")
        for name, t in ct.streams().items():
            self._buffers[name] = t
        self.base = ct.base

    # --- use --------------------------------------------------------------------------------
    def streams(self) -> list[torch.Tensor]:
        return [self._buffers[name] for name in STREAMS]

    def compressed(self) -> CompressedTensor:
        """The weight as a (validated) CompressedTensor sharing this module's buffers."""
        return CompressedTensor((self.out_features, self.in_features), self.base,
                                *self.streams())

    def decompressed_weight(self) -> torch.Tensor:
        """The original BF16 weight [out, in], decoded on the module's device."""
        return ops.decompress_op(*self.streams(), self.out_features, self.in_features,
                                 self.base)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ops.check_input(x, self.out_features, self.in_features, self.bias)
        return ops.gemm_op(x, *self.streams(), self.out_features, self.in_features, self.base,
                           self.bias, self.fused)

    @property
    def nbytes(self) -> int:
        """Bytes of the compressed weight (bias not included)."""
        return sum(t.numel() * t.element_size() for t in self.streams())

    def extra_repr(self) -> str:
        bits = 8 * self.nbytes / (self.in_features * self.out_features)
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, bits_per_weight={bits:.2f}")

    # --- state dict: streams are buffers; shape and base are the extra state -----------------
    def get_extra_state(self) -> torch.Tensor:
        # a tensor (not a dict) so that state dicts stay savable with safetensors
        return torch.tensor([FORMAT_VERSION, self.out_features, self.in_features, self.base],
                            dtype=torch.int64)

    def set_extra_state(self, state: torch.Tensor) -> None:
        version, n, k, base = (int(v) for v in state.tolist())
        if version != FORMAT_VERSION:
            raise FormatError(f"state dict holds TCA-TBE format version {version}; this zipgen "
                              f"reads version {FORMAT_VERSION}")
        if (n, k) != (self.out_features, self.in_features):
            raise InputError(f"state dict holds a {n} x {k} weight, this layer is "
                             f"{self.out_features} x {self.in_features}")
        self.base = base
        if self.sign_mantissa.device.type != "meta":  # torch sets buffers before extra state
            self.compressed()  # validates: a bad state dict fails here, not in a kernel

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The fallback stream's length differs from weight to weight: take the incoming size
        # (load_state_dict would otherwise reject it as a shape mismatch).
        for name in STREAMS:
            incoming, current = state_dict.get(prefix + name), self._buffers[name]
            if isinstance(incoming, torch.Tensor) and incoming.shape != current.shape:
                self._buffers[name] = torch.empty(incoming.shape, dtype=current.dtype,
                                                  device=current.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
