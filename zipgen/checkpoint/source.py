"""Reading a source checkpoint: one safetensors file, or a folder of (sharded) safetensors."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from safetensors import safe_open

from ..errors import InputError

INDEX_SUFFIX = ".safetensors.index.json"
# Weights in other formats are not copied: they would duplicate what we compress.
OTHER_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".gguf")


@dataclass(frozen=True)
class SourceTensor:
    name: str
    file: Path
    dtype: str  # safetensors dtype string: "BF16", "F32", ...
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        size = {"BF16": 2, "F16": 2, "F32": 4, "F64": 8, "I64": 8, "I32": 4, "I16": 2,
                "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}.get(self.dtype, 0)
        count = 1
        for d in self.shape:
            count *= d
        return count * size


def safetensors_files(src: Path) -> list[Path]:
    """The safetensors files of a source: the file itself, the shards an index names, or
    every *.safetensors in the folder."""
    src = Path(src)
    if not src.exists():
        raise InputError(f"{src}: no such file or folder")
    if src.is_file():
        if src.suffix != ".safetensors":
            raise InputError(f"{src}: not a .safetensors file")
        return [src]
    indexes = sorted(src.glob("*" + INDEX_SUFFIX))
    if indexes:
        files = set()
        for index in indexes:
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (ValueError, KeyError) as exc:
                raise InputError(f"{index}: unreadable index ({exc})") from exc
            files.update(weight_map.values())
        missing = [f for f in sorted(files) if not (src / f).is_file()]
        if missing:
            raise InputError(f"{src}: the index names missing shards: {', '.join(missing)}")
        return [src / f for f in sorted(files)]
    files = sorted(src.glob("*.safetensors"))
    if not files:
        raise InputError(f"{src}: no .safetensors files (other weight formats are not read)")
    return files


def list_tensors(files: list[Path]) -> list[SourceTensor]:
    """Every tensor's name, file, dtype and shape, read from the headers only."""
    out, seen = [], {}
    for file in files:
        try:
            with safe_open(file, framework="pt") as f:
                for name in f.keys():
                    sl = f.get_slice(name)
                    if name in seen:
                        raise InputError(f"tensor {name!r} is in both {seen[name]} and {file}")
                    seen[name] = file
                    out.append(SourceTensor(name, file, sl.get_dtype(), tuple(sl.get_shape())))
        except InputError:
            raise
        except Exception as exc:  # safetensors raises its own error types for bad headers
            raise InputError(f"{file}: cannot read safetensors header ({exc})") from exc
    return out


def other_files(src: Path) -> tuple[list[Path], list[Path]]:
    """(files to copy, weight files in other formats that are skipped), relative to src."""
    src = Path(src)
    if src.is_file():
        return [], []
    copy, skipped = [], []
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if not path.is_file() or any(part.startswith(".") for part in rel.parts):
            continue
        if path.name.endswith(".safetensors") or path.name.endswith(INDEX_SUFFIX):
            continue
        (skipped if path.suffix in OTHER_WEIGHT_SUFFIXES else copy).append(rel)
    return copy, skipped
