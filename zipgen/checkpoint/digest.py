"""Checksums of tensors: SHA-256 of the raw bytes, row-major, little-endian."""
from __future__ import annotations

import hashlib

import torch


def tensor_sha256(t: torch.Tensor) -> str:
    """Hex SHA-256 of a tensor's bytes; dtype-agnostic (hashes the bit patterns)."""
    t = t.detach().contiguous().cpu()
    raw = t.view(torch.uint8) if t.numel() else torch.empty(0, dtype=torch.uint8)
    return hashlib.sha256(memoryview(raw.reshape(-1).numpy())).hexdigest()
