"""Reading a kernel's machine code without a GPU: its SASS instructions (cuobjdump --dump-sass)
and the main loop a strip of 1024 weights runs through, for instruction budgets."""
from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path

_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")


def sass_rows(cubin: bytes, tool: str) -> list[tuple[int, str, str]]:
    """(address, opcode, operands) per instruction; predicated opcodes keep an "@" prefix."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "k.cubin"
        path.write_bytes(cubin)
        sass = subprocess.run([tool, "--dump-sass", str(path)], capture_output=True, text=True,
                              check=True, timeout=120).stdout
    return [(int(m.group(1), 16), m.group(3) if not m.group(2) else "@" + m.group(3), m.group(4))
            for m in _LINE.finditer(sass)]


def main_loop(rows):
    """The instructions of the strip loop: the body of the longest backward branch that holds a
    strip's decode (16 PRMT, one per register pair), ignoring the out-of-line code after the
    first EXIT; a kernel without such a loop (one strip per warp) counts up to that EXIT."""
    first_exit = next((a for a, op, _ in rows if op == "EXIT"), rows[-1][0])  # unpredicated
    best = []
    for addr, op, args in rows:
        m = re.search(r"0x([0-9a-f]+)", args)
        if op.lstrip("@").startswith("BRA") and m and int(m.group(1), 16) < addr <= first_exit:
            body = [r for r in rows if int(m.group(1), 16) <= r[0] <= addr]
            if sum(r[1].lstrip("@").startswith("PRMT") for r in body) >= 16 and len(body) > len(best):
                best = body
    return best or [r for r in rows if r[0] <= first_exit]


def strips_in(body) -> int:
    """How many strips an (unrolled) loop body decodes: 16 PRMT each."""
    return max(1, sum(op.lstrip("@").startswith("PRMT") for _, op, _ in body) // 16)
