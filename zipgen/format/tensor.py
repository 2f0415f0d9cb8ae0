"""CompressedTensor: one BF16 matrix in TCA-TBE format version 3 (docs/FORMAT.md)."""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..errors import FormatError
from .entries import entry_stream_bytes
from .layout import LANES, PLANES, STRIP_ELEMS, num_strips

FORMAT_VERSION = 3

# name -> dtype of each stream, in the order they are stored
STREAMS = {
    "sign_mantissa": torch.uint8,
    "planes": torch.int32,
    "fallback_entries": torch.uint8,
    "fallback_offsets": torch.int32,
}


@dataclass(frozen=True)
class CompressedTensor:
    """A compressed [N, K] BF16 matrix: four stream tensors plus shape and base exponent."""

    shape: tuple[int, int]
    base: int
    sign_mantissa: torch.Tensor  # uint8 [S * 1024]
    planes: torch.Tensor  # int32 [S, 3, 32]
    fallback_entries: torch.Tensor  # uint8: 18-bit (position, exponent) records, padded
    fallback_offsets: torch.Tensor  # int32 [S + 1]: first record of each strip, then the total
    format_version: int = FORMAT_VERSION

    def __post_init__(self):
        self.validate()

    @classmethod
    def trusted(cls, shape: tuple[int, int], base: int, **streams) -> "CompressedTensor":
        """Wrap streams that were validated before, without validate(): it reads
        fallback_offsets[-1], a device-to-host copy that breaks CUDA graph capture."""
        ct = object.__new__(cls)
        for name, value in dict(shape=tuple(shape), base=base, format_version=FORMAT_VERSION,
                                **streams).items():
            object.__setattr__(ct, name, value)  # the dataclass is frozen
        return ct

    # --- sizes and statistics -------------------------------------------------------------
    @property
    def num_strips(self) -> int:
        return num_strips(*self.shape)

    @property
    def numel(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def device(self) -> torch.device:
        return self.sign_mantissa.device

    @property
    def num_fallbacks(self) -> int:
        return int(self.fallback_offsets[-1])

    @property
    def nbytes(self) -> int:
        """Bytes of all streams, what a kernel reads (shape and base are a few bytes more)."""
        return sum(t.numel() * t.element_size() for t in self.streams().values())

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.nbytes / self.numel

    @property
    def ratio(self) -> float:
        """Compressed size over BF16 size."""
        return self.nbytes / (2 * self.numel)

    @property
    def coverage(self) -> float:
        """Share of weights whose exponent lies in the window (not fallbacks)."""
        return 1.0 - self.num_fallbacks / self.numel

    # --- conversions ----------------------------------------------------------------------
    def streams(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in STREAMS}

    def to(self, device, non_blocking: bool = False) -> "CompressedTensor":
        moved = {n: t.to(device, non_blocking=non_blocking) for n, t in self.streams().items()}
        return replace(self, **moved)

    def cuda(self) -> "CompressedTensor":
        return self.to("cuda")

    def cpu(self) -> "CompressedTensor":
        return self.to("cpu")

    def __repr__(self) -> str:
        return (f"CompressedTensor(shape={self.shape}, base={self.base}, "
                f"bits_per_weight={self.bits_per_weight:.3f}, device={self.device}, "
                f"format_version={self.format_version})")

    # --- checks ---------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise FormatError unless the streams have the sizes and types FORMAT.md requires.
        Cheap: looks at shapes, dtypes and the last offset only."""
        if self.format_version != FORMAT_VERSION:
            raise FormatError(f"format version {self.format_version} is not supported "
                              f"(this zipgen reads version {FORMAT_VERSION})")
        n, k = self.shape
        if n < 1 or k < 1:
            raise FormatError(f"shape {self.shape} is empty")
        if not 0 <= self.base <= 248:
            raise FormatError(f"base exponent {self.base} is outside 0..248")
        s = num_strips(n, k)
        expected = {
            "sign_mantissa": (s * STRIP_ELEMS,),
            "planes": (s, PLANES, LANES),
            "fallback_offsets": (s + 1,),
        }
        devices = set()
        for name, dtype in STREAMS.items():
            t = getattr(self, name)
            if not isinstance(t, torch.Tensor):
                raise FormatError(f"{name} is {type(t).__name__}, not a tensor")
            if t.dtype != dtype:
                raise FormatError(f"{name} has dtype {t.dtype}, expected {dtype}")
            if name in expected and tuple(t.shape) != expected[name]:
                raise FormatError(f"{name} has shape {tuple(t.shape)}, expected "
                                  f"{expected[name]} for a {n}x{k} matrix")
            devices.add(t.device)
        if len(devices) != 1:
            raise FormatError(f"streams live on several devices: {sorted(map(str, devices))}")
        entries = self.fallback_entries
        if entries.dim() != 1:
            raise FormatError(f"fallback_entries must be 1-D, got shape {tuple(entries.shape)}")
        total = int(self.fallback_offsets[-1])
        first = int(self.fallback_offsets[0])
        if first != 0 or not 0 <= total <= n * k or entries.numel() != entry_stream_bytes(total):
            raise FormatError(f"fallback_offsets run {first}..{total}, which does not fit a "
                              f"fallback entry stream of {entries.numel()} bytes "
                              f"({entry_stream_bytes(max(total, 0))} expected)")
