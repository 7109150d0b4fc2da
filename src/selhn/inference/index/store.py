"""A finished index directory (``build``), opened for search, and its files read only while
they are the files indexed."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from selhn.evaluation.metrics import check_finite_embeddings, check_floating
from selhn.inference.encoder import Encoder
from selhn.inference.index import ann
from selhn.inference.index.build import CAPTIONS, FAISS_FILE, FILES, FORMAT, JOB, META
from selhn.inference.index.files import FileIdentity, check_indexed, read_indexed
from selhn.utils.textfiles import read_json, read_lines


@dataclass
class Hit:
    row: int
    score: float
    file: str  # the file's name: its path relative to the indexed folder
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
        if self.meta.get("format") != FORMAT:
            raise ValueError(
                f"{self.path}: an index of an older selhn (format {self.meta.get('format')}), "
                "which does not record what each file was; build it again with selhn index "
                "into a new --out"
            )
        self.root = Path(self.meta["root"])
        rows = [json.loads(line) for line in read_lines(self.path / FILES)]
        self.files = [row["name"] for row in rows]
        self._targets = [row["target"] for row in rows]
        self._identities = [FileIdentity(r["size"], r["mtime_ns"], r["sha256"]) for r in rows]
        self.captions: list[list[str]] | None = None
        if self.meta["captions"]:
            self.captions = [json.loads(line) for line in read_lines(self.path / CAPTIONS)]
        self.faiss = ann.load(self.path / FAISS_FILE, self.meta["faiss"])
        if not len(self.files) == self.faiss.ntotal == self.meta["images"]:
            raise ValueError(
                f"{self.path}: {len(self.files)} files, {self.faiss.ntotal} indexed vectors and "
                f"{self.meta['images']} images in {META} disagree; build the index again"
            )

    def __len__(self) -> int:
        return len(self.files)

    @property
    def dim(self) -> int:
        return int(self.faiss.d)

    def search(self, queries: torch.Tensor, k: int) -> list[list[Hit]]:
        """The ``k`` best rows for each of the (Q, D) query embeddings, best first."""
        check_floating("queries", queries)
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

    def encoder(self, checkpoint: str | Path | None = None, device: Any = "cpu") -> Encoder:
        """The encoder of the model that built the index (``index.json`` names it), or of
        ``checkpoint`` where it has moved; a model with other weights is refused, since its
        queries would not match the index."""
        model = self.meta["model"]
        path = checkpoint or model["checkpoint"]
        if path is None:
            raise ValueError(
                f"{self.path}: its model was not saved as a checkpoint; give --checkpoint"
            )
        if checkpoint is None and not Path(path, "config.json").is_file():
            raise FileNotFoundError(
                f"{path}: the model that built {self.path} is no longer there; give its new "
                "place with --checkpoint"
            )
        encoder = Encoder.load(path, device)
        built_by = model["weights_sha256"]
        if built_by and encoder.reference["weights_sha256"] != built_by:
            raise ValueError(
                f"{path}: not the model that built {self.path} (its weights differ from those "
                f"of {model['checkpoint']}); queries would not match the index"
            )
        return encoder

    def read(self, row: int) -> bytes:
        """The bytes of row ``row``'s file, only while it is the file indexed (``files``):
        RefusedFile if it was replaced, changed, or turned into a link or a special file."""
        return read_indexed(self.root, self._targets[row], self._identities[row])

    def check(self, row: int) -> None:
        """RefusedFile (or OSError) unless row ``row``'s file is still there as indexed: a
        regular file reached without links, of the indexed size and modification time."""
        check_indexed(self.root, self._targets[row], self._identities[row])
