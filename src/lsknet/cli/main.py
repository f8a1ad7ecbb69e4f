"""Entry point of the ``lsknet`` command.

Each sub-command family lives in its own module with a ``register(subparsers)`` function that adds its
parsers and sets ``func`` (called with the parsed namespace, returns an exit code or None).
User mistakes raise :class:`lsknet.errors.LSKNetError`; they become one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from lsknet.errors import LSKNetError

# Modules that add sub-commands, in the order they appear in --help.
COMMAND_MODULES = (
    "lsknet.cli.run",  # train, eval, predict, demo
    "lsknet.cli.model",  # convert, benchmark
    "lsknet.cli.dota",  # dota split/merge/eval, data synth
    "lsknet.cli.seg",  # seg score
    "lsknet.cli.analyze",  # analyze erf/selection
    "lsknet.cli.robustness",  # robustness
    "lsknet.cli.compare",  # compare
    "lsknet.cli.export",  # export (ONNX)
)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every sub-command registered."""
    parser = argparse.ArgumentParser(
        prog="lsknet",
        description="LSKNet for remote sensing: classification, oriented detection, segmentation.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code (0 ok, 1 failure, 2 user error)."""
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    # ``key=value`` overrides may stand anywhere among the options (``train CFG a=1 --strict b=2``): argparse leaves
    # those after an option in ``extras``; they join the command's overrides. Anything else is an argparse error.
    overrides = [t for t in extras if "=" in t and not t.startswith("-")]
    unknown = [t for t in extras if t not in overrides]
    if unknown or (overrides and not hasattr(args, "overrides")):
        what = "option" if (unknown or overrides)[0].startswith("-") else "argument"
        print(f"lsknet {args.command or ''}: error: unknown {what} {(unknown or overrides)[0]!r}", file=sys.stderr)
        return 2
    if overrides:
        args.overrides = [*(args.overrides or []), *overrides]
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        code = args.func(args)
    except LSKNetError as err:
        print(f"lsknet {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # disk full, no permission, a file where a folder should be: the environment, not a bug
        print(f"lsknet {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
