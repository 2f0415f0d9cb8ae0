"""Reading format version 2 (docs/FORMAT.md, "Earlier versions"): its code words were three
bit-planes (word p, bit b = bit p of the code at position b); version 3 packs the same codes
by register pair. Everything else is identical, so an upgrade repacks the code words and
loses nothing. Checkpoints and state dicts of version 2 are upgraded as they load."""
from __future__ import annotations

import torch

from ..errors import FormatError
from .codec import _pack_planes
from .tensor import FORMAT_VERSION

UPGRADABLE_VERSIONS = (2,)
READABLE_VERSIONS = (*UPGRADABLE_VERSIONS, FORMAT_VERSION)
_STRIPS_PER_CHUNK = 1 << 14  # bounds the int32 temporaries (32 per code) to ~200 MB


def code_words_from_v2(planes: torch.Tensor) -> torch.Tensor:
    """Version 2's bit-planes, int32 [S, 3, 32], as version 3's code words (same shape)."""
    out = torch.empty_like(planes)
    bit = torch.arange(32, dtype=torch.int32, device=planes.device)
    for s0 in range(0, planes.shape[0], _STRIPS_PER_CHUNK):
        chunk = planes[s0:s0 + _STRIPS_PER_CHUNK]
        bits = (chunk.unsqueeze(-1) >> bit) & 1  # [S, plane, lane, position]
        codes = bits[:, 0] | (bits[:, 1] << 1) | (bits[:, 2] << 2)  # [S, lane, position]
        out[s0:s0 + chunk.shape[0]] = _pack_planes(codes.to(torch.uint8))
    return out


def check_readable(version, where: str) -> None:
    """FormatError unless this zipgen reads `version` (itself or by upgrading)."""
    if version not in READABLE_VERSIONS:
        raise FormatError(f"{where}: format version {version} is not supported (this zipgen "
                          f"reads version {FORMAT_VERSION}, and upgrades "
                          f"{', '.join(map(str, UPGRADABLE_VERSIONS))} as it loads); "
                          f"re-compress with it")

