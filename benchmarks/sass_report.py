"""Machine-code report of a generated kernel, without a GPU: registers, spills, shared memory,
and the instruction mix of the main loop (per strip of 1024 weights) from cuobjdump.

    python benchmarks/sass_report.py zipgemm sm_90 [warps token_tiles depth row_groups stage_x] [--lines]
    python benchmarks/sass_report.py decode sm_90 [warps strips] [--lines]

--lines also attributes the main loop's instructions to source lines (nvdisasm -g on the
-lineinfo cubin): where the issue slots of a strip go.
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
from zipgen.compile.cuobjdump import resource_usage
from zipgen.compile.sass import main_loop, sass_rows, strips_in


def usage_line(cubin: bytes, name: str, tool: str) -> str:
    """cuobjdump's resource usage of the kernel, as "REG:64 STACK:0 SHARED:1024 LOCAL:0"."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "k.cubin"
        path.write_bytes(cubin)
        usage = resource_usage(tool, path).get(name, {})
    return " ".join(f"{k}:{usage.get(k, '?')}" for k in ("REG", "STACK", "SHARED", "LOCAL"))


def source_lines(cubin: bytes, lo: int, hi: int) -> list[tuple[int, str, str]]:
    """(instructions, file:line, source text) for the SASS at addresses lo..hi."""
    tool = find_nvidia_binary_utility("nvdisasm")
    if tool is None:
        sys.exit("nvdisasm not found: pip install nvidia-cuda-nvdisasm")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "k.cubin"
        path.write_bytes(cubin)
        listing = subprocess.run([tool, "-c", "-g", str(path)], capture_output=True, text=True,
                                 check=True).stdout
    where, counts = None, collections.Counter()
    for line in listing.splitlines():
        if m := re.match(r'\s*//## File "(.*)", line (\d+)', line):
            where = (m.group(1), int(m.group(2)))
        elif (m := re.match(r"\s*/\*([0-9a-f]{4,})\*/", line)) and lo <= int(m.group(1), 16) <= hi:
            counts[where] += 1
    out = []
    for (file, number), n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        text = ""
        if Path(file).is_file():
            text = Path(file).read_text().splitlines()[number - 1].strip()
        out.append((n, f"{Path(file).name}:{number}", text))
    return out


def main():
    show_lines = "--lines" in sys.argv
    op, arch, *numbers = [a for a in sys.argv[1:] if a != "--lines"]
    config = OPS[op].from_numbers(numbers)
    kernel = build_kernel(op, arch, config)
    tool = find_nvidia_binary_utility("cuobjdump")
    if tool is None:
        sys.exit("cuobjdump not found: pip install nvidia-cuda-cuobjdump")
    rows, usage = sass_rows(kernel.cubin, tool), usage_line(kernel.cubin, kernel.kernel_name, tool)
    body = main_loop(rows)
    mix = collections.Counter(op.lstrip("@").split(".")[0] for _, op, _ in body)
    strips = strips_in(body)  # the loop body is unrolled over `strips` strips
    print(f"{kernel.kernel_name}: {usage}; {len(rows)} instructions in all")
    print(f"main loop: {len(body)} instructions for {strips} strip(s) of 1024 weights = "
          f"{len(body) / strips:.1f} per strip (static count: rarely taken paths included, "
          f"fallback-patch iterations counted once)")
    for name, n in mix.most_common():
        print(f"  {name:8s} {n / strips:6.1f}")
    if show_lines:
        print("\nper source line (whole loop body):")
        for n, where, text in source_lines(kernel.cubin, body[0][0], body[-1][0]):
            print(f"  {n:4d}  {where:28s} {text[:70]}")


if __name__ == "__main__":
    main()
