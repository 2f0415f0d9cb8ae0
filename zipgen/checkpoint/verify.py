"""`zipgen verify DST [--against SRC]`: decode everything and check it bit for bit."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from tqdm import tqdm

from ..errors import FormatError
from ..format import CompressedTensor, decompress
from .digest import tensor_sha256
from .manifest import Manifest
from .reader import iter_tensors
from .source import list_tensors, safetensors_files


@dataclass
class VerifyReport:
    checked: int = 0
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


def verify_checkpoint(dst, against=None, *, device="cpu", progress=True) -> VerifyReport:
    """Decode every tensor, compare with its recorded SHA-256 and, with `against`, with the
    source checkpoint's tensor (cast to BF16 where the manifest says it was cast)."""
    report = VerifyReport()
    manifest = Manifest.read(Path(dst))
    sources = {}
    if against is not None:
        sources = {t.name: t for t in list_tensors(safetensors_files(Path(against)))}
        missing = sorted(set(manifest.tensors) ^ set(sources))
        if missing:
            report.failures.append(f"tensor sets differ between {dst} and {against}: "
                                   f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    bar = tqdm(total=len(manifest.tensors), desc="verifying", disable=not progress, leave=False)
    for name, entry, value in iter_tensors(dst, device):
        try:
            decoded = decompress(value) if isinstance(value, CompressedTensor) else value
        except FormatError as exc:
            report.failures.append(f"{name}: {exc}")
            continue
        if tensor_sha256(decoded) != entry.sha256:
            report.failures.append(f"{name}: checksum mismatch (decoded data differs from the "
                                   f"original)")
        if name in sources:
            src = sources[name]
            with safe_open(src.file, framework="pt") as f:
                original = f.get_tensor(name)
            if entry.cast_from:
                original = original.to(torch.bfloat16)
            if original.dtype != decoded.dtype or not torch.equal(
                    original.view(torch.uint8), decoded.cpu().contiguous().view(torch.uint8)):
                report.failures.append(f"{name}: differs from {src.file}")
        report.checked += 1
        bar.update(1)
    bar.close()
    return report
