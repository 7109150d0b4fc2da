"""One writer per folder: an exclusive ``flock`` on ``FOLDER/.lock`` that names its holder.

The kernel drops the lock when its holder ends, however it ends, so a killed writer's lock is
taken over by the next one."""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path
from typing import IO


class FolderLock:
    """``FOLDER/.lock``, held by this process between ``acquire`` and ``release``."""

    def __init__(self, folder: str | Path, writer: str, advice: str) -> None:
        """``writer``: what writes the folder ("training", "index build"); ``advice``: what to do
        when another process holds it."""
        self.folder, self.writer, self.advice = Path(folder), writer, advice
        self._handle: IO[str] | None = None

    def acquire(self) -> None:
        """Take the lock (creating the folder); FileExistsError naming the holder if another
        live process has it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        handle = (self.folder / ".lock").open("a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise FileExistsError(
                f"{self.folder}: another {self.writer} writes it (process {holder}); {self.advice}"
            ) from None
        handle.truncate(0)
        handle.write(f"{os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing releases the lock
            self._handle = None
