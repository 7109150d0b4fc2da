"""The finished runs of a loss comparison (``benchmarks/real_data.py``), one JSON object a line in
a file kept beside the code, so its table outlives the work folder that trained them."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from selhn.utils.textfiles import read_lines

# what identifies a run, and what the table reads of it
KEY = ("set", "loss", "false_negatives", "seed")
FIELDS = (*KEY, "rsum", "dup_rsum", "seconds", "resumed", "vanishing", "summary", "config")

Key = tuple[str, str, str, int]


class RunLedger:
    """The records of ``path`` (none if it does not exist yet), added to as runs finish."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._records: dict[Key, dict[str, Any]] = {}
        lines = read_lines(path) if path.exists() else []
        for number, line in enumerate(lines, 1):
            if line.strip():
                self._remember(self._parse(line, f"{path}:{number}"), f"{path}:{number}")

    @staticmethod
    def _parse(line: str, where: str) -> dict[str, Any]:
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{where}: not a JSON object ({error})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
        missing = [field for field in FIELDS if field not in record]
        if missing:
            raise ValueError(f"{where}: no {', '.join(missing)} (a run needs {', '.join(FIELDS)})")
        return record

    def _remember(self, record: dict[str, Any], where: str) -> None:
        key = tuple(record[field] for field in KEY)
        if key in self._records:
            raise ValueError(f"{where}: {self.describe(key)} is recorded twice; keep one line")
        self._records[key] = record

    @staticmethod
    def describe(key: Key) -> str:
        """``SET LOSS MODE seed N``."""
        name, loss, mode, seed = key
        return f"{name} {loss} {mode} seed {seed}"

    def holds_set(self, name: str) -> bool:
        """Whether a run of set ``name`` is recorded."""
        return any(key[0] == name for key in self._records)

    def get(self, key: Key) -> dict[str, Any] | None:
        """The record of a run, or None."""
        return self._records.get(key)

    def add(self, record: dict[str, Any]) -> None:
        """Record a finished run (a new one: recording a run twice is an error) and append it to
        the file at once, so a later failure does not lose it."""
        missing = [field for field in FIELDS if field not in record]
        if missing:
            raise ValueError(f"a run record needs {', '.join(missing)}")
        with self._lock:
            self._remember(record, str(self.path))
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as out:
                out.write(json.dumps(record, sort_keys=True) + "\n")
