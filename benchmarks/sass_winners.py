"""Machine code of the tuned winners of the benchmark layers, without a GPU: per winner, its
registers, the instructions per strip of its main loop and how late its next strips' loads
are issued.

    python benchmarks/sass_winners.py [--db tuning_db] [--ms 1,8,16,32,64] --json out.json

"late" is the share of a strip's decode (its 16 PRMTs, one per register pair) that the
compiler placed before that strip's sign-mantissa loads for a later strip (LDG.E.128), averaged
over the loads: 0 when the loads go out before the decode, as the source orders them; near 1
when ptxas sank them behind it, which shortens the time they have to arrive. Run it in two
checkouts (or with another branch's templates checked out) to compare kernel trees; the
records' kernel headers are not checked, as in winners_ab.py.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from cuda.pathfinder import find_nvidia_binary_utility

from zipgen.codegen import build_kernel
from zipgen.compile.cuobjdump import resource_usage
from zipgen.compile.sass import main_loop, sass_rows, strips_in
from zipgen.tune import db, dispatch

from gemm import LAYERS

DECODES_PER_STRIP = 16  # PRMTs: one per register pair


def late_share(body) -> float:
    prmts, lates = 0, []
    for _, op, _ in body:
        name = op.lstrip("@")
        if name.startswith("PRMT"):
            prmts += 1
        elif name.startswith("LDG.E.128"):
            lates.append(prmts)
        elif name.startswith(("HMMA", "HGMMA")):  # a strip's multiply ends its decode
            prmts = 0
    return sum(lates) / max(1, len(lates)) / DECODES_PER_STRIP


def registers(cubin: bytes, name: str, tool: str) -> int | None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "k.cubin"
        path.write_bytes(cubin)
        return resource_usage(tool, path).get(name, {}).get("REG")


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--db", default="tuning_db")
    ap.add_argument("--device-name", default="NVIDIA H200")
    ap.add_argument("--arch", default="sm_90")
    ap.add_argument("--ms", default="1,8,16,32,64")
    ap.add_argument("--json", required=True)
    args = ap.parse_args()
    tool = find_nvidia_binary_utility("cuobjdump")
    index = db.winners(db.read_records([args.db]))
    cells = {}
    for model in ("8b", "70b"):
        for layer, n, k in LAYERS[model]:
            for m in map(int, args.ms.split(",")):
                cfg, _ = dispatch.lookup("zipgemm", args.device_name, args.arch, n, k, m,
                                         index=index)
                if cfg is not None:
                    cells.setdefault(cfg, []).append(f"{layer} M={m}")
    rows = []
    for cfg, where in cells.items():
        kernel = build_kernel("zipgemm", args.arch, cfg)
        body = main_loop(sass_rows(kernel.cubin, tool))
        rows.append(dict(config=cfg.as_dict(), cells=where,
                         registers=registers(kernel.cubin, kernel.kernel_name, tool),
                         per_strip=round(len(body) / strips_in(body), 1),
                         late=round(late_share(body), 2)))
        print(f"{cfg.describe()}: {rows[-1]['registers']} registers, {rows[-1]['per_strip']} per"
              f" strip, late {rows[-1]['late']} ({', '.join(where)})", flush=True)
    with open(args.json, "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
