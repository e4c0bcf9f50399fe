"""The `fastvits` command line: one entry point, one module per subcommand group.

Each module in `COMMAND_MODULES` exposes `register(subparsers)`, which adds its subcommands and sets
`func` on them. A `UserError` (bad input the user can fix) ends the command with its message on one line and
exit status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .allocator import AllocatorNotFound, relaunch_with_allocator
from .errors import UserError

COMMAND_MODULES: tuple[str, ...] = (
    "fastvits.bench.cli", "fastvits.demo", "fastvits.deploy.cli", "fastvits.downstream.cli", "fastvits.train.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastvits", description="Throughput-first hybrid vision transformers.")
    parser.add_argument(
        "--allocator",
        metavar="NAME|PATH",
        help="run the command with this C allocator preloaded: tcmalloc, jemalloc, mimalloc or a library path "
        "(tcmalloc makes large-batch CPU inference 1.2-1.5x faster than glibc's malloc; docs/benchmarks.md)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    if args.allocator:
        try:
            relaunch_with_allocator(args.allocator, argv)  # returns only when it is already the one in use
        except AllocatorNotFound as e:
            raise SystemExit(f"fastvits: {e}") from None
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"fastvits {args.command}: error: {e}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
