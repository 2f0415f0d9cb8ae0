"""Reading compiled cubins with cuobjdump (no GPU needed): registers, shared memory, spills."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path


def find_cuobjdump() -> str | None:
    """cuobjdump from PATH, CUDA_HOME or the nvidia-cuda-cuobjdump wheel; None when absent."""
    try:
        from cuda.pathfinder import find_nvidia_binary_utility
        return find_nvidia_binary_utility("cuobjdump")
    except Exception:  # pathfinder missing or too old: callers treat the data as optional
        return None


_FUNCTION = re.compile(r"^\s*Function\s+(\S+?):?\s*$")
_FIELD = re.compile(r"([A-Z]+(?:\[\d+\])?):(\d+)")


def resource_usage(tool: str, cubin_path: Path) -> dict[str, dict[str, int]]:
    """{kernel: {"REG": .., "STACK": .., "SHARED": .., "LOCAL": .., ...}} from
    `cuobjdump --dump-resource-usage`; empty when the tool fails."""
    try:
        out = subprocess.run([tool, "--dump-resource-usage", str(cubin_path)], capture_output=True,
                             text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    usage: dict[str, dict[str, int]] = {}
    current = None
    for line in out.splitlines():
        if m := _FUNCTION.match(line):
            current = m.group(1)
        elif current is not None and (fields := _FIELD.findall(line)):
            usage[current] = {k: int(v) for k, v in fields}
            current = None
    return usage


def named_barriers(tool: str, cubin_path: Path) -> int | None:
    """How many named barriers the cubin's kernel reserves (EIATTR_NUM_BARRIERS in
    `cuobjdump -elf`): the SM's barriers are shared by its resident CTAs, so this can cap
    occupancy. None when the tool fails or the attribute is absent."""
    try:
        out = subprocess.run([tool, "-elf", str(cubin_path)], capture_output=True, text=True,
                             timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"EIATTR_NUM_BARRIERS\s.*?Value:\s*0x([0-9a-f]+)", out, re.S)
    return int(m.group(1), 16) if m else None
