"""Reading the project's text files: UTF-8, one record per ``\\n`` line, every problem named with
its file (and line).

Lines end at ``\\n`` only (a ``\\r`` before it is dropped): ``str.splitlines`` would also break at
U+0085, U+2028 and other characters that may sit inside a caption or a JSON string.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def read_text(path: Path) -> str:
    """The file as UTF-8 text; a byte that is not UTF-8 raises ValueError naming file and line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise ValueError(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[err.start]:02x} at offset "
            f"{err.start}); save the file as UTF-8"
        ) from None


def read_lines(path: Path) -> list[str]:
    """The file's lines, split at ``\\n`` only, without line ends."""
    lines = read_text(path).split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def read_json(path: Path, expected: str) -> Any:
    """A JSON file's value; invalid JSON raises ValueError naming the file and ``expected``."""
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON, expected {expected} ({err})") from None


def write_atomic(path: Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` through a hidden temporary file and a rename, so a reader
    (or a killed writer) never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
