"""The files of an indexed folder, read only where they are what was indexed.

A file is named by its path relative to the indexed root, as resolved when it was listed (no
``..``, no link left in it). Reading it walks that path from the root one folder at a time with
``O_NOFOLLOW``, so a folder or file swapped for a link since then is refused, never followed; a
file that is not regular (a named pipe, a device, a socket) is refused before it is opened. What
is read is identified by its size, modification time and SHA-256, which the index records and
the server checks before it sends anything (the size and time before it reads a byte).
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from selhn.data.walk import kind_of

_FOLDER = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class RefusedFile(ValueError):
    """A file that is not read: outside the root, not a regular file, or not the one indexed."""


@dataclass(frozen=True)
class FileIdentity:
    """What a file was when it was read: bytes, modification time (ns) and content hash; and
    its status change time, which no one can set (a file rewritten with its old size and
    modification time has a new one), but which a copy or a ``chmod`` changes too, so it tells
    when to read a file again, not whether it is the same."""

    size: int
    mtime_ns: int
    sha256: str
    ctime_ns: int = field(default=0, compare=False)


MAX_FILE_BYTES = 2**30  # larger files are not read as images


def _parts(target: str) -> tuple[str, ...]:
    path = PurePosixPath(target)
    if path.is_absolute() or not path.parts or any(p in ("..", ".") for p in path.parts):
        raise RefusedFile("not a path inside the indexed folder")
    return path.parts


def _open_inside(root: str | Path, target: str) -> tuple[BinaryIO, os.stat_result]:
    """``root/target`` opened without following any link below ``root``, and its status."""
    *folders, name = _parts(target)
    directory = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for folder in folders:
            step = os.open(folder, _FOLDER, dir_fd=directory)
            os.close(directory)
            directory = step
        mode = os.stat(name, dir_fd=directory, follow_symlinks=False).st_mode
        if not stat.S_ISREG(mode):
            raise RefusedFile(f"{kind_of(mode)}, not a regular file")
        # O_NONBLOCK: a named pipe swapped in after the check above opens without waiting
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        handle = os.open(name, flags, dir_fd=directory)
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.ENOTDIR):
            raise RefusedFile("a link or a file where the indexed path has a folder") from None
        raise
    finally:
        os.close(directory)
    file = os.fdopen(handle, "rb")
    info = os.fstat(file.fileno())
    if not stat.S_ISREG(info.st_mode):
        file.close()
        raise RefusedFile(f"{kind_of(info.st_mode)}, not a regular file")
    return file, info


def read_inside(
    root: str | Path, target: str, max_bytes: int = MAX_FILE_BYTES
) -> tuple[bytes, FileIdentity]:
    """The bytes of ``root/target`` and what they were, read without following any link below
    ``root``. RefusedFile if a step of the path is a link or the file is not a regular file (it
    is then not opened), or if it holds more than ``max_bytes`` (then it is not read); OSError
    if it cannot be read."""
    file, info = _open_inside(root, target)
    with file:
        if info.st_size > max_bytes:
            raise RefusedFile(f"{info.st_size:,} bytes; at most {max_bytes:,}")
        data = file.read(max_bytes + 1)
    if len(data) > max_bytes:  # it grew while it was read
        raise RefusedFile(f"more than {max_bytes:,} bytes")
    digest = hashlib.sha256(data).hexdigest()
    return data, FileIdentity(len(data), info.st_mtime_ns, digest, info.st_ctime_ns)


def check_indexed(root: str | Path, target: str, expected: FileIdentity) -> None:
    """RefusedFile unless ``root/target`` is a regular file reached without links, of the size
    and modification time indexed (its bytes are not read)."""
    file, info = _open_inside(root, target)
    file.close()
    if (info.st_size, info.st_mtime_ns) != (expected.size, expected.mtime_ns):
        raise RefusedFile("it has changed since it was indexed")


def read_indexed(root: str | Path, target: str, expected: FileIdentity) -> bytes:
    """The bytes of an indexed file, only if it is still the file indexed (size, time and hash,
    the size checked before anything is read); RefusedFile otherwise."""
    file, info = _open_inside(root, target)
    with file:
        if (info.st_size, info.st_mtime_ns) != (expected.size, expected.mtime_ns):
            raise RefusedFile("it has changed since it was indexed")
        data = file.read(expected.size + 1)
    if len(data) != expected.size or hashlib.sha256(data).hexdigest() != expected.sha256:
        raise RefusedFile("it has changed since it was indexed")
    return data
