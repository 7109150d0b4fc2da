"""The ``selhn`` command: the only reader of the command line. Each group of commands is a
module of thin adapters over library functions (``data``, ``train``, ``evaluate``, ``serving``);
each subcommand names its adapter, so the dispatch is the parser itself. Only the group of the
command given is imported: ``selhn --help`` and ``--version`` import none (nor torch)."""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys
from collections.abc import Sequence

from selhn import __version__
from selhn.cli.common import COMMANDS, Parser, config_overrides

RESUMING = {  # what an interrupted command keeps
    "features": "The images done are kept: the same command continues where it stopped.",
    "index": "The images done are kept: the same command continues where it stopped.",
    "train": "Every finished epoch is kept: run it again with --resume to continue.",
}


def build_parser(command: str | None = "all") -> argparse.ArgumentParser:
    """The parser of ``command``'s group of commands (of every group for ``"all"``); for any
    other value, the list of commands alone."""
    parser = Parser(
        prog="selhn",
        description="Image-text matching with selectively hard negatives (SelHN) and RVSE++.",
    )
    parser.add_argument("--version", action="version", version=f"selhn {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    groups = sorted({group for group, _ in COMMANDS.values()}) if command == "all" else []
    if command in COMMANDS:
        groups = [COMMANDS[command][0]]
    for group in groups:
        importlib.import_module(f"selhn.cli.{group}").add(commands)
    listed = {name for name in commands.choices}
    for name, (_, summary) in COMMANDS.items():
        if name not in listed:
            commands.add_parser(name, help=summary)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(next((a for a in argv if not a.startswith("-")), None))
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "overrides_allowed", False):
        parser.error(f"unrecognised arguments: {' '.join(extra)}")
    args.command_line = shlex.join(["selhn", *argv])
    try:
        args.overrides = config_overrides(extra)
        args.run(args)
    except (ValueError, OSError, ImportError) as err:  # OSError: missing files, a full disk
        print(f"selhn {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"\nselhn {args.command}: interrupted. {RESUMING.get(args.command, '')}",
            file=sys.stderr,
        )
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
