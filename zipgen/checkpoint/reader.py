"""Reading a folder written by `zipgen compress`: zipgen.load()."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import torch
from safetensors import safe_open

from ..errors import FormatError
from ..format import FORMAT_VERSION, CompressedTensor
from ..format.tensor import STREAMS
from ..format.upgrade import code_words_from_v2
from .manifest import COMPRESSED, STREAM_SUFFIX, Manifest, TensorEntry


def _check_files(folder: Path, manifest: Manifest) -> None:
    """Every shard is there with the size recorded: catches truncation before parsing."""
    for name, size in manifest.files.items():
        path = folder / name
        if not path.is_file():
            raise FormatError(f"{path}: missing (the manifest lists it)")
        actual = path.stat().st_size
        if actual != size:
            raise FormatError(f"{path}: {actual} bytes, the manifest says {size}: the file is "
                              f"truncated or was changed")


def _build(name: str, entry: TensorEntry, f, version: int) -> torch.Tensor | CompressedTensor:
    if entry.kind != COMPRESSED:
        t = f.get_tensor(name)
        if list(t.shape) != entry.shape:
            raise FormatError(f"tensor {name!r}: shape {list(t.shape)}, manifest says {entry.shape}")
        return t
    streams = {k: f.get_tensor(name + STREAM_SUFFIX + k) for k in STREAMS}
    if version != FORMAT_VERSION and streams["planes"].dtype == torch.int32:
        # an older checkpoint (a malformed stream is left for CompressedTensor to report)
        streams["planes"] = code_words_from_v2(streams["planes"])
    try:
        return CompressedTensor(shape=tuple(entry.shape), base=entry.base, **streams)
    except FormatError as exc:
        raise FormatError(f"tensor {name!r} in {entry.file}: {exc}") from exc


def iter_tensors(path, device="cpu") -> Iterator[tuple[str, TensorEntry, object]]:
    """(name, manifest entry, CompressedTensor or tensor) for each tensor, file by file."""
    folder = Path(path)
    manifest = Manifest.read(folder)
    _check_files(folder, manifest)
    by_file: dict[str, list[str]] = {}
    for name, entry in manifest.tensors.items():
        by_file.setdefault(entry.file, []).append(name)
    for file, names in by_file.items():
        try:
            with safe_open(folder / file, framework="pt", device=str(device)) as f:
                for name in names:
                    yield name, manifest.tensors[name], _build(name, manifest.tensors[name], f,
                                                                manifest.format_version)
        except FormatError:
            raise
        except Exception as exc:  # safetensors' own errors for corrupt headers / missing keys
            raise FormatError(f"{folder / file}: cannot read ({exc})") from exc


def load(path, device="cpu") -> dict[str, torch.Tensor | CompressedTensor]:
    """{name: CompressedTensor or raw torch.Tensor} for a compressed checkpoint folder."""
    return {name: value for name, _, value in iter_tensors(path, device)}
