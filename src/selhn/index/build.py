"""``selhn index``: a collection's images encoded by a trained model, in shards, then one index.

Layout of an index directory::

    job.json                   what is being built (model, collection, shard size, dtype)
    shards/shard-NNNNN.npy     (kept images, D) embeddings of files NNNNN * shard_size onwards
    shards/shard-NNNNN.json    the shard's files that could not be read, with the reason
    files.txt                  the image file of each index row
    captions.jsonl             the captions of each row (where the collection gives them)
    skipped.jsonl              every unreadable file and why
    index.faiss                the faiss index (``ann``)
    index.json                 written last: the model reference, counts, the faiss choice

Resumable: a shard is encoded into a hidden memory-mapped ``.shard-NNNNN.partial.npy`` whose
progress (rows done, files skipped) is stored atomically after every batch, so a rerun continues
where the last one stopped (only the batch in flight is encoded again). Under ``torchrun``
process ``r`` encodes shards ``r, r + W, ...`` (``--out`` on storage every process sees);
shards do not depend on which process encodes them, so the joined index equals one process's.
Rank 0 joins the shards once every process has finished.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset

from selhn.data.image_files import load_image
from selhn.distributed import SINGLE_PROCESS, Distributed
from selhn.encoder import Encoder
from selhn.index import ann
from selhn.index.collection import Collection
from selhn.textfiles import read_json, write_atomic

JOB, META, FAISS_FILE = "job.json", "index.json", "index.faiss"
FILES, CAPTIONS, SKIPPED = "files.txt", "captions.jsonl", "skipped.jsonl"
DTYPES = {"float16": np.float16, "float32": np.float32}


@dataclass(frozen=True)
class IndexJob:
    """How to build: images per shard, the stored dtype, images per batch, and the size above
    which the faiss index is approximate."""

    shard_size: int = 4096
    dtype: str = "float16"
    batch_size: int = 32
    exact_limit: int = ann.EXACT_LIMIT

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}; got {self.dtype!r}")
        if self.shard_size < 1 or self.batch_size < 1:
            raise ValueError("shard_size and batch_size must be positive")


class _Pixels(Dataset):
    """(file number, pixels or None, why not) of each file, read in loader workers if any."""

    def __init__(self, files: list[Path], first: int, size: int) -> None:
        self.files, self.first, self.size = files, first, size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str]:
        try:
            return self.first + i, load_image(self.files[i], self.size), ""
        except Exception as err:  # any failure of the image reader skips the file, named
            why = err.__cause__ or err  # the reader's own words, without the path
            return self.first + i, None, str(why) or type(why).__name__


def _as_list(items: list) -> list:
    return items  # a batch stays a list: unreadable files have no pixels to stack


def _shard_name(number: int) -> str:
    return f"shard-{number:05d}"


def _job_record(encoder: Encoder, collection: Collection, job: IndexJob) -> dict[str, Any]:
    model = encoder.reference
    return {
        "weights_sha256": model["weights_sha256"],
        "embed_size": model["embed_size"],
        "image_size": encoder.image_size,
        "image_features": encoder.image_features,
        "images": len(collection.files),
        "collection_sha256": collection.fingerprint(),
        "shard_size": job.shard_size,
        "dtype": job.dtype,
    }


JOB_FIELDS = {  # the job record's fields, as a user knows them
    "weights_sha256": "the model",
    "embed_size": "the embedding size",
    "image_size": "the image size",
    "image_features": "the backbone of the image features",
    "images": "the number of images",
    "collection_sha256": "the image files or their captions",
    "shard_size": "--shard-size",
    "dtype": "--dtype",
}


def _check_job(out: Path, record: dict[str, Any]) -> None:
    """Start a new index in an empty or new ``out``, or check that ``out`` holds this job."""
    path = out / JOB
    if path.exists():
        saved = read_json(path, "the record of a selhn index job")
        if saved != record:
            changed = ", ".join(JOB_FIELDS[k] for k in record if saved.get(k) != record[k])
            raise FileExistsError(
                f"{path}: {out} holds an index of another job (it differs in {changed}); use "
                "another --out, or delete it to build anew"
            )
        return
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out}: exists and is not an index; use a new or empty --out")
    (out / "shards").mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(record, indent=2))


def _encode_shard(
    encoder: Encoder,
    collection: Collection,
    number: int,
    out: Path,
    job: IndexJob,
    workers: int,
    bar: Any,
) -> int:
    """Encode shard ``number`` (resuming its partial file) and write it; return the number of
    files read by this call."""
    shards = out / "shards"
    name = _shard_name(number)
    first = number * job.shard_size
    files = collection.files[first : first + job.shard_size]
    partial, progress = shards / f".{name}.partial.npy", shards / f".{name}.progress.json"
    resuming = partial.exists() and progress.exists()
    state = read_json(progress, "index progress") if resuming else {"done": 0, "skipped": []}
    shape = (len(files), encoder.embed_size)
    array = np.lib.format.open_memmap(
        partial, "r+" if resuming else "w+", DTYPES[job.dtype], None if resuming else shape
    )
    done = state["done"]
    if bar is not None:
        bar.update(done)
    reader = _Pixels(files[done:], first + done, encoder.image_size)
    loader = DataLoader(reader, job.batch_size, num_workers=workers, collate_fn=_as_list)
    for batch in loader:
        readable = [(i, pixels) for i, pixels, _ in batch if pixels is not None]
        state["skipped"] += [
            [i, str(collection.files[i]), why] for i, pixels, why in batch if pixels is None
        ]
        if readable:
            embedded = encoder.encode_pixels(torch.stack([p for _, p in readable]))
            rows = [i - first for i, _ in readable]
            array[rows] = embedded.numpy().astype(DTYPES[job.dtype])
            array.flush()
        state["done"] += len(batch)
        write_atomic(progress, json.dumps(state))
        if bar is not None:
            bar.update(len(batch))
    skipped_rows = {i - first for i, _, _ in state["skipped"]}
    kept = np.array([r for r in range(len(files)) if r not in skipped_rows], dtype=np.int64)
    record = {"first": first, "skipped": state["skipped"]}
    write_atomic(shards / f"{name}.json", json.dumps(record))
    tmp = shards / f".{name}.tmp.npy"
    np.save(tmp, np.ascontiguousarray(array[kept]))
    del array
    os.replace(tmp, shards / f"{name}.npy")
    partial.unlink()
    progress.unlink()
    return len(files) - done


def _finished(out: Path, number: int) -> bool:
    name = _shard_name(number)
    return (out / "shards" / f"{name}.npy").exists() and (out / "shards" / f"{name}.json").exists()


def build_index(
    encoder: Encoder,
    collection: Collection,
    out: str | Path,
    job: IndexJob | None = None,
    workers: int = 0,
    progress: bool = True,
    process: Distributed = SINGLE_PROCESS,
) -> dict[str, Any] | None:
    """Encode ``collection`` into ``out`` (resuming an interrupted build) and build its index.

    Args:
        process: this process's place in a torchrun job (whose process group is joined).
    Returns:
        on rank 0 the index's ``index.json`` contents plus ``seconds`` and ``read_now`` (the
        files all processes read in this call); None on the other ranks.
    """
    encoder.check_images()
    out, job = Path(out), job or IndexJob()
    started = time.perf_counter()
    record = _job_record(encoder, collection, job)
    if process.is_main:
        _check_job(out, record)
    if process.enabled:
        dist.barrier()
    if not process.is_main:  # every process checks what rank 0 wrote, on the same storage
        if not (out / JOB).is_file():
            raise FileNotFoundError(
                f"{out / JOB}: not found by process {process.rank}; under torchrun --out must be "
                "on storage that every process sees (a shared filesystem across machines)"
            )
        _check_job(out, record)
    shards = math.ceil(len(collection.files) / job.shard_size)
    mine = [n for n in range(process.rank, shards, process.world_size) if not _finished(out, n)]
    count = len(collection.files)
    todo = sum(min(job.shard_size, count - n * job.shard_size) for n in mine)
    bar = None
    if progress and sys.stderr.isatty() and todo:
        from tqdm import tqdm

        bar = tqdm(total=todo, desc=f"encoding (process {process.rank})", unit="image")
    read_now = 0
    for number in mine:
        read_now += _encode_shard(encoder, collection, number, out, job, workers, bar)
    if bar is not None:
        bar.close()
    if process.enabled:  # waits for every process: then all shards are written
        total = torch.tensor([read_now], device=encoder.device)
        dist.all_reduce(total)
        read_now = int(total.item())
    if not process.is_main:
        return None
    meta = _join(out, collection, shards, job, encoder)
    return {**meta, "seconds": time.perf_counter() - started, "read_now": read_now}


def _join(
    out: Path, collection: Collection, shards: int, job: IndexJob, encoder: Encoder
) -> dict[str, Any]:
    """Join the finished shards into one index."""
    parts, rows, skipped = [], [], []
    for number in range(shards):
        name = _shard_name(number)
        parts.append(np.load(out / "shards" / f"{name}.npy", mmap_mode="r"))
        shard = read_json(out / "shards" / f"{name}.json", "an index shard's record")
        gone = {i for i, _, _ in shard["skipped"]}
        last = min(shard["first"] + job.shard_size, len(collection.files))
        rows += [i for i in range(shard["first"], last) if i not in gone]
        skipped += [{"file": file, "error": why} for _, file, why in shard["skipped"]]
    skipped += [{"file": file, "error": why} for file, why in collection.ignored]
    captions = None if collection.captions is None else [collection.captions[i] for i in rows]
    files = [str(collection.files[i]) for i in rows]
    return write_index(out, parts, files, captions, skipped, encoder.reference, job)


def write_index(
    out: Path,
    parts: list[np.ndarray],
    files: list[str],
    captions: list[list[str]] | None,
    skipped: list[dict[str, str]],
    model: dict[str, Any],
    job: IndexJob,
) -> dict[str, Any]:
    """Write the row files and the faiss index of embeddings ``parts`` (one row per file, in
    order), then ``index.json``; return its contents."""
    if not files:
        raise ValueError(f"{out}: no image of the collection could be read (see {SKIPPED})")
    if sum(len(p) for p in parts) != len(files):
        raise ValueError(f"{out}: {sum(len(p) for p in parts)} embeddings for {len(files)} files")
    write_atomic(out / FILES, "".join(f"{f}\n" for f in files))
    write_atomic(out / SKIPPED, "".join(json.dumps(s) + "\n" for s in skipped))
    if captions is not None:
        lines = (json.dumps(c, ensure_ascii=False) + "\n" for c in captions)
        write_atomic(out / CAPTIONS, "".join(lines))
    index, spec = ann.build(parts, ann.choose(len(files), job.exact_limit))
    ann.save(index, out / FAISS_FILE)
    meta = {
        "format": 1,
        "model": model,
        "images": len(files),
        "skipped": len(skipped),
        "captions": captions is not None,
        "dtype": job.dtype,
        "shards": len(parts),
        "job": asdict(job),
        "faiss": spec,
    }
    write_atomic(out / META, json.dumps(meta, indent=2))
    return meta
