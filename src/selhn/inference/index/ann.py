"""The faiss index over an index's embeddings: exact inner product up to a size, IVF above it.

An IVF index is sized from the number of vectors: ``nlist`` = the power of two nearest to
``sqrt(N)`` lists, trained (spherical k-means) on up to 64 vectors per list. Its ``nprobe`` is
calibrated when it is built: 256 stored vectors are searched as queries, and ``nprobe`` doubles
until their recall@10 against exact search (each query's own vector left out) reaches 0.97, a
margin over the 0.95 aimed at on new queries. Every choice is recorded in ``index.json``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from selhn.utils.extras import require

EXACT_LIMIT = 100_000  # vectors: above this, an approximate index
RECALL_TARGET = 0.97  # of the calibration: a margin over the 0.95 aimed at on new queries
CALIBRATION_QUERIES = 256
CHUNK = 65_536  # vectors converted to float32 at a time


def _faiss():
    require("faiss", "an index")
    import faiss

    return faiss


def choose(count: int, exact_limit: int = EXACT_LIMIT) -> dict[str, Any]:
    """The kind of index for ``count`` vectors and its size."""
    if count <= exact_limit:
        return {"kind": "exact", "why": f"{count:,} vectors <= exact limit {exact_limit:,}"}
    nlist = 2 ** round(math.log2(math.sqrt(count)))
    return {
        "kind": "ivf",
        "nlist": nlist,
        "train_vectors": min(count, 64 * nlist),
        "why": f"{count:,} vectors > exact limit {exact_limit:,}",
    }


def _chunks(parts: list[np.ndarray]) -> Iterator[np.ndarray]:
    """Float32 C-contiguous chunks of the stored vectors, in order."""
    for part in parts:
        for start in range(0, len(part), CHUNK):
            yield np.ascontiguousarray(part[start : start + CHUNK], dtype=np.float32)


def _rows(parts: list[np.ndarray], rows: np.ndarray) -> np.ndarray:
    """Float32 copies of the given global rows (sorted) of the stored vectors."""
    out, offset = [], 0
    for part in parts:
        inside = rows[(rows >= offset) & (rows < offset + len(part))] - offset
        out.append(np.asarray(part[inside], dtype=np.float32))
        offset += len(part)
    return np.concatenate(out)


def build(parts: list[np.ndarray], spec: dict[str, Any], seed: int = 0) -> tuple[Any, dict]:
    """(faiss index of the vectors of ``parts`` in order, ``spec`` with what was measured)."""
    faiss = _faiss()
    count, dim = sum(len(p) for p in parts), parts[0].shape[1]
    if spec["kind"] == "exact":
        index = faiss.IndexFlatIP(dim)
        for chunk in _chunks(parts):
            index.add(chunk)
        return index, spec
    rng = np.random.default_rng(seed)
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, spec["nlist"], faiss.METRIC_INNER_PRODUCT)
    index.cp.spherical = True  # unit vectors: centroids on the sphere
    index.cp.seed = seed
    sample = np.sort(rng.choice(count, spec["train_vectors"], replace=False))
    index.train(_rows(parts, sample))
    for chunk in _chunks(parts):
        index.add(chunk)
    nprobe, recall = calibrate(index, parts, rng)
    index.nprobe = nprobe
    measured = {"nprobe": nprobe, "calibration_recall_at_10": round(recall, 4)}
    return index, {**spec, **measured, "calibrated_on": "stored vectors (image embeddings)"}


def calibrate(index: Any, parts: list[np.ndarray], rng: np.random.Generator) -> tuple[int, float]:
    """The smallest power-of-two ``nprobe`` whose recall@10 reaches ``RECALL_TARGET`` on stored
    vectors used as queries (their own row left out), and that recall."""
    count = index.ntotal
    queries_at = np.sort(rng.choice(count, min(CALIBRATION_QUERIES, count), replace=False))
    queries = _rows(parts, queries_at)
    truth = exact_top(queries, parts, 11)
    nprobe, recall = 1, 0.0
    while True:
        index.nprobe = nprobe
        _, found = index.search(queries, 11)
        recall = recall_at(found, truth, 10, leave_out=queries_at)
        if recall >= RECALL_TARGET or nprobe >= index.nlist:
            return nprobe, recall
        nprobe *= 2


def exact_top(queries: np.ndarray, parts: list[np.ndarray], k: int) -> np.ndarray:
    """(Q, k) rows of the exact top-k inner products of ``queries`` over the stored vectors,
    best first."""
    scores, rows, offset = [], [], 0
    for chunk in _chunks(parts):
        chunk_scores = queries @ chunk.T
        top = np.argpartition(-chunk_scores, min(k, len(chunk)) - 1, axis=1)[:, :k]
        scores.append(np.take_along_axis(chunk_scores, top, axis=1))
        rows.append(top + offset)
        offset += len(chunk)
    all_scores, all_rows = np.concatenate(scores, axis=1), np.concatenate(rows, axis=1)
    order = np.argsort(-all_scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(all_rows, order, axis=1)


def recall_at(
    found: np.ndarray, truth: np.ndarray, k: int, leave_out: np.ndarray | None = None
) -> float:
    """Mean share of each query's true top ``k`` that ``found`` holds in its top ``k``, with
    the row ``leave_out[q]`` removed from both lists of query ``q``."""
    hits = 0
    for q in range(len(found)):
        own = leave_out[q] if leave_out is not None else -1
        true = [r for r in truth[q] if r != own][:k]
        got = [r for r in found[q] if r != own and r >= 0][:k]
        hits += len(set(true) & set(got))
    return hits / (k * len(found))


def save(index: Any, path: Path) -> None:
    """Write a faiss index atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    _faiss().write_index(index, str(tmp))
    os.replace(tmp, path)


def load(path: Path, spec: dict[str, Any]) -> Any:
    """Read a faiss index written by ``save``, with its recorded search parameters."""
    index = _faiss().read_index(str(path))
    if spec["kind"] == "ivf":
        index.nprobe = spec["nprobe"]
    return index
