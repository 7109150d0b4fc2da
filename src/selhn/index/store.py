"""A finished index directory (``build``), opened for search."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from selhn.evaluation import check_finite_embeddings
from selhn.index import ann
from selhn.index.build import CAPTIONS, FAISS_FILE, FILES, JOB, META
from selhn.textfiles import read_json, read_lines


@dataclass
class Hit:
    row: int
    score: float
    file: str
    captions: list[str] | None


class ImageIndex:
    """The files, captions and faiss index of an index directory."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        meta_path = self.path / META
        if not self.path.is_dir():
            raise FileNotFoundError(f"{self.path}: no such index directory (made by selhn index)")
        if not meta_path.is_file() and (self.path / JOB).is_file():
            raise FileNotFoundError(
                f"{meta_path}: not found; {self.path} is an unfinished index (run selhn index "
                "again with the same arguments to finish it)"
            )
        if not meta_path.is_file():
            raise FileNotFoundError(
                f"{self.path}: not an index directory (no {META}); make one with selhn index"
            )
        self.meta: dict[str, Any] = read_json(meta_path, "a selhn index's description")
        self.files = read_lines(self.path / FILES)
        self.captions: list[list[str]] | None = None
        if self.meta["captions"]:
            self.captions = [json.loads(line) for line in read_lines(self.path / CAPTIONS)]
        self.faiss = ann.load(self.path / FAISS_FILE, self.meta["faiss"])
        if not len(self.files) == self.faiss.ntotal == self.meta["images"]:
            raise ValueError(
                f"{self.path}: {len(self.files)} files, {self.faiss.ntotal} indexed vectors and "
                f"{self.meta['images']} images in {META} disagree; build the index again"
            )
        self._file_rows = {name: row for row, name in enumerate(self.files)}

    def __len__(self) -> int:
        return len(self.files)

    @property
    def dim(self) -> int:
        return int(self.faiss.d)

    def search(self, queries: torch.Tensor, k: int) -> list[list[Hit]]:
        """The ``k`` best rows for each of the (Q, D) query embeddings, best first."""
        if queries.dim() != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries must be (Q, {self.dim}); got {tuple(queries.shape)}")
        if not 1 <= k <= len(self):
            raise ValueError(f"k must be in [1, {len(self)}] (the index size); got {k}")
        check_finite_embeddings([queries], "query")
        scores, rows = self.faiss.search(np.ascontiguousarray(queries.float().numpy()), k)
        return [
            [self.hit(int(r), float(s)) for r, s in zip(row, score, strict=True) if r >= 0]
            for row, score in zip(rows, scores, strict=True)
        ]

    def hit(self, row: int, score: float) -> Hit:
        captions = self.captions[row] if self.captions is not None else None
        return Hit(row, score, self.files[row], captions)

    def row_of(self, file: str) -> int | None:
        """The row of an indexed file (its path as ``files.txt`` lists it), else None."""
        return self._file_rows.get(file)
