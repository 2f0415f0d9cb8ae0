"""The part of ZipLinear and ZipEmbedding that holds one TCA-TBE weight.

The four streams are buffers, so `.to(device)`, `.cuda()`, `state_dict()` and
`load_state_dict()` work as for any module; the shape and base exponent travel in the state dict
as the module's extra state.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError
from ..format import FORMAT_VERSION, CompressedTensor
from ..format.upgrade import check_readable, code_words_from_v2
from ..format.layout import LANES, PLANES, STRIP_ELEMS, num_strips
from ..format.entries import entry_stream_bytes
from ..format.tensor import STREAMS


class CompressedWeight(nn.Module):
    """A module whose weight [rows, cols] is a CompressedTensor kept as four buffers."""

    def __init__(self, rows: int, cols: int, device=None):
        super().__init__()
        self.weight_shape = (rows, cols)
        self.base = 0
        s = num_strips(rows, cols)
        # streams of the right sizes for (rows, cols) with no fallbacks; load_state_dict resizes
        shapes = {"sign_mantissa": (s * STRIP_ELEMS,), "planes": (s, PLANES, LANES),
                  "fallback_entries": (entry_stream_bytes(0),), "fallback_offsets": (s + 1,)}
        for name, stream_dtype in STREAMS.items():
            self.register_buffer(name, torch.zeros(shapes[name], dtype=stream_dtype,
                                                   device=device))

    def set_compressed(self, ct: CompressedTensor) -> None:
        """Replace the weight by `ct` (validated; its shape must be this module's)."""
        ct.validate()
        if tuple(ct.shape) != self.weight_shape:
            raise InputError(f"compressed weight is {ct.shape[0]} x {ct.shape[1]}, this "
                             f"{type(self).__name__} needs {self.weight_shape[0]} x "
                             f"{self.weight_shape[1]}")
        for name, t in ct.streams().items():
            self._buffers[name] = t
        self.base = ct.base

    def streams(self) -> list[torch.Tensor]:
        return [self._buffers[name] for name in STREAMS]

    def compressed(self) -> CompressedTensor:
        """The weight as a (validated) CompressedTensor sharing this module's buffers."""
        return CompressedTensor(self.weight_shape, self.base, *self.streams())

    def compressed_unchecked(self) -> CompressedTensor:
        """The weight as a CompressedTensor without re-validating the streams: they were checked
        when they were set, and validation reads a tensor back to the host, which a call inside
        a CUDA graph must not do."""
        return CompressedTensor.trusted(self.weight_shape, self.base,
                                        **{name: self._buffers[name] for name in STREAMS})

    @property
    def nbytes(self) -> int:
        """Bytes of the compressed weight, and of any index kept next to it (index_bytes)."""
        return sum(t.numel() * t.element_size() for t in self.streams()) + self.index_bytes

    @property
    def index_bytes(self) -> int:
        """Bytes of derived data a subclass keeps beside the streams (not in the state dict)."""
        return 0

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.nbytes / (self.weight_shape[0] * self.weight_shape[1])

    # --- state dict: streams are buffers; shape and base are the extra state -----------------
    def get_extra_state(self) -> torch.Tensor:
        # a tensor (not a dict) so that state dicts stay savable with safetensors
        return torch.tensor([FORMAT_VERSION, *self.weight_shape, self.base], dtype=torch.int64)

    def set_extra_state(self, state: torch.Tensor) -> None:
        version, n, k, base = (int(v) for v in state.tolist())
        check_readable(version, "state dict")
        if (n, k) != self.weight_shape:
            raise InputError(f"state dict holds a {n} x {k} weight, this "
                             f"{type(self).__name__} is {self.weight_shape[0]} x "
                             f"{self.weight_shape[1]}")
        self.base = base
        if version != FORMAT_VERSION and self.planes.device.type != "meta":
            self.planes = code_words_from_v2(self.planes)  # an older state dict, upgraded
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
