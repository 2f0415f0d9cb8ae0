"""Machine-code report of a generated kernel, without a GPU: registers, spills, shared memory,
and the instruction mix of the main loop (per strip of 1024 weights) from cuobjdump.

    python benchmarks/sass_report.py zipgemm sm_90 [warps token_tiles depth row_groups]
    python benchmarks/sass_report.py decode sm_90 [warps strips]
"""
from __future__ import annotations

import collections
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from cuda.pathfinder import find_nvidia_binary_utility

from zipgen.codegen import OPS, build_kernel

LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")


def sass_lines(cubin: bytes, tool: str):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "k.cubin"
        path.write_bytes(cubin)
        sass = subprocess.run([tool, "--dump-sass", str(path)], capture_output=True, text=True,
                              check=True).stdout
        usage = subprocess.run([tool, "--dump-resource-usage", str(path)], capture_output=True,
                               text=True, check=True).stdout
    rows = [(int(m.group(1), 16), m.group(3) if not m.group(2) else "@" + m.group(3), m.group(4))
            for m in LINE.finditer(sass)]  # predicated instructions keep an "@" prefix
    return rows, re.search(r"REG:\d+ STACK:\d+ SHARED:\d+ LOCAL:\d+", usage).group(0)


def main_loop(rows):
    """The instructions executed once per strip: the body of the longest backward branch that
    holds a strip's decode (16 PRMT), ignoring the out-of-line code after the
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


def main():
    op, arch, *numbers = sys.argv[1:]
    config = OPS[op](*map(int, numbers)) if numbers else OPS[op]()
    kernel = build_kernel(op, arch, config)
    tool = find_nvidia_binary_utility("cuobjdump")
    if tool is None:
        sys.exit("cuobjdump not found: pip install nvidia-cuda-cuobjdump")
    rows, usage = sass_lines(kernel.cubin, tool)
    body = main_loop(rows)
    mix = collections.Counter(op.lstrip("@").split(".")[0] for _, op, _ in body)
    print(f"{kernel.kernel_name}: {usage}; {len(rows)} instructions in all")
    print(f"per strip (1024 weights): {len(body)} instructions, static count: rarely taken "
          f"paths included, fallback-patch iterations counted once")
    for name, n in mix.most_common():
        print(f"  {name:8s} {n:4d}")


if __name__ == "__main__":
    main()
