"""What every command's adapter shares: the help format, subcommands whose summary is their
description, ``--section.key=value`` settings, and checks made before any work."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any


class Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown where there is one; descriptions and epilogs kept as written."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or action.help is None:
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", Formatter)
        super().__init__(*args, **kwargs)


# The commands, each with the module of its adapters and its one-line summary: the list that
# ``selhn --help`` prints without importing any of them
COMMANDS = {
    "train": ("train", "train a model (RVSE++ by default)"),
    "experiment": ("train", "train the same model once per loss and seed, compare, plot"),
    "config": ("train", "configurations"),
    "data": ("data", "write data sets"),
    "features": ("data", "grid features of raw images (precomp layout)"),
    "eval": ("evaluate", "evaluate checkpoints on a split"),
    "encode": ("evaluate", "save the image and caption embeddings of a split"),
    "search": ("evaluate", "top-k text->image or image->text search"),
    "index": ("serving", "encode a folder or manifest of images into a searchable index"),
    "serve": ("serving", "a web page and JSON API to search an index"),
}


def command(
    group: Any, name: str, summary: str | None = None, **kwargs: Any
) -> argparse.ArgumentParser:
    """A subcommand whose one-line summary (a top-level command's from ``COMMANDS``) is both its
    entry in the list and its description."""
    summary = summary or COMMANDS[name][1]
    return group.add_parser(name, help=summary, description=summary, **kwargs)


def config_overrides(extra: list[str]) -> dict[str, str]:
    """``--section.key=value`` or ``--section.key value`` pairs left over by argparse."""
    out: dict[str, str] = {}
    items = iter(extra)
    for item in items:
        if not item.startswith("--") or "." not in item.split("=", 1)[0]:
            raise ValueError(f"unrecognised argument {item!r}")
        key, sep, value = item[2:].partition("=")
        if not sep:
            value = next(items, None)
            if value is None:
                raise ValueError(f"{item} needs a value")
        out[key] = value
    return out


def check_output(path: str | None, flag: str) -> None:
    """Fail before any work if ``path``'s folder does not exist."""
    if path is not None and not Path(path).resolve().parent.is_dir():
        raise FileNotFoundError(f"{flag} {path}: folder {Path(path).parent} does not exist")


def port(value: str) -> int:
    """A TCP port number, for argparse."""
    if not re.fullmatch(r"[0-9]{1,5}", value) or not 1 <= int(value) <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 1 to 65535; got {value!r}")
    return int(value)


def add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")


def add_progress(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
