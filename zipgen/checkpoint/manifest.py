"""zipgen.json: the manifest of a compressed checkpoint folder (docs/FORMAT.md §7).

It is the last file written into a folder, so a folder without it is not a checkpoint."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import FormatError
from ..fileio import write_atomic
from ..format import FORMAT_VERSION
from ..format.upgrade import check_readable

MANIFEST_NAME = "zipgen.json"
COMPRESSED = "tca-tbe"
RAW = "raw"
STREAM_SUFFIX = ".zg."  # NAME.zg.sign_mantissa, ... in the safetensors files


@dataclass
class TensorEntry:
    kind: str  # COMPRESSED or RAW
    file: str  # safetensors file inside the folder
    shape: list[int]
    dtype: str  # dtype of the stored (decoded) tensor, e.g. "bfloat16"
    sha256: str  # of the decoded tensor's bytes
    nbytes: int  # bytes stored
    base: int | None = None  # COMPRESSED only
    coverage: float | None = None  # COMPRESSED only
    cast_from: str | None = None  # source dtype when --cast-bf16 changed it (lossy)


@dataclass
class Manifest:
    zipgen_version: str
    source: str
    tensors: dict[str, TensorEntry] = field(default_factory=dict)
    files: dict[str, int] = field(default_factory=dict)  # file -> size in bytes
    copied: list[str] = field(default_factory=list)  # non-weight files copied from the source
    format_version: int = FORMAT_VERSION

    def write(self, folder: Path) -> None:
        text = json.dumps(asdict(self), indent=1, sort_keys=True) + "\n"
        write_atomic(folder / MANIFEST_NAME, text.encode())

    @classmethod
    def read(cls, folder: Path) -> "Manifest":
        path = Path(folder) / MANIFEST_NAME
        if not path.is_file():
            raise FormatError(f"{folder}: no {MANIFEST_NAME}; not a zipgen checkpoint (or an "
                              f"interrupted one)")
        try:
            data = json.loads(path.read_text())
            check_readable(data.get("format_version"), str(path))  # 2: upgraded as it loads
            tensors = {name: TensorEntry(**entry) for name, entry in data.pop("tensors").items()}
            return cls(tensors=tensors, **data)
        except FormatError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise FormatError(f"{path}: unreadable manifest ({exc})") from exc
