"""Entry point of the `zipgen` console script."""
from __future__ import annotations

import argparse
import sys

from .. import __version__
from ..errors import ZipgenError
from . import bundle_cmd, checkpoint_cmds, gen_cmd, tune_cmd
from . import bench_cmd


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zipgen", description="Lossless BF16 weight compression (TCA-TBE) and fused GPU "
                                   "kernels generated for your GPU.")
    parser.add_argument("--version", action="version", version=f"zipgen {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    checkpoint_cmds.add_parsers(sub)
    gen_cmd.add_parsers(sub)
    bundle_cmd.add_parsers(sub)
    tune_cmd.add_parsers(sub)
    bench_cmd.add_parsers(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ZipgenError as exc:
        print(f"zipgen {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"zipgen {args.command}: interrupted; nothing was published", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
