"""The `fastconv` command (also `python -m fastconv`)."""
from __future__ import annotations

import argparse
import sys


def _info(args) -> int:
    from . import info

    info()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastconv", description="fastconv: kernels, training and evaluation")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="version, extension modules, backend and device").set_defaults(run=_info)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
