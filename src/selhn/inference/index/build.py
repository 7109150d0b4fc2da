"""``selhn index``: a collection's images encoded by a trained model into an index that a rerun
keeps current.

Layout of an index directory::

    job.json                   the model and how embeddings are stored (format, shard size, dtype)
    .lock                      held by the build in progress (one build at a time)
    shards/shard-NNNNN.npy     (rows, D) stored embeddings
    shards/shard-NNNNN.json    the file each row was read from (target, size, mtime_ns,
                               ctime_ns, sha256), and the files of the shard that could not be
                               read, with the reason
    plan.json                  the files that the build in progress encodes, and its first shard
    files.jsonl                each index row's file: name, target, size, mtime_ns, sha256
    captions.jsonl             the captions of each row (where the collection gives them)
    skipped.jsonl              every file not indexed, and why
    index.faiss                the faiss index (``ann``)
    index.json                 written last (removed first): the root folder, the model, counts,
                               the faiss choice

The finished shards store embeddings, each tied to the file it was read from. A build reuses
the embedding of every file whose target, size, modification time and status change time are
those stored (nothing is read: a file rewritten in place has a new status change time, even with
its old size and modification time), and of every file whose bytes hash to a stored embedding's
file (read, not decoded);
only the other files are encoded, into new shards. So a rerun adds new files, drops deleted ones
and re-encodes changed ones. Stored rows that no file uses any more are dropped once they
outnumber the used ones.

Resumable: a shard is encoded into a hidden memory-mapped ``.shard-NNNNN.partial.npy`` whose
progress is stored atomically after every batch, so a rerun continues where the last one
stopped. Under ``torchrun`` process ``r`` encodes the plan's shards ``r, r + W, ...``
(``--out`` on storage every process sees); rank 0 plans, joins and writes the index.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from selhn.inference.encoder import Encoder
from selhn.inference.index import ann
from selhn.inference.index.collection import Collection
from selhn.inference.index.shards import (
    DTYPES,
    Store,
    drop_partials,
    encode_shard,
    gather,
    stat_key,
    tidy,
)
from selhn.utils.distributed import SINGLE_PROCESS, Distributed
from selhn.utils.locks import FolderLock
from selhn.utils.progress import Progress
from selhn.utils.textfiles import read_json, write_atomic

FORMAT = 2  # 1: absolute file paths and no record of what each file was
JOB, META, FAISS_FILE, PLAN = "job.json", "index.json", "index.faiss", "plan.json"
FILES, CAPTIONS, SKIPPED = "files.jsonl", "captions.jsonl", "skipped.jsonl"


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


def _job_record(encoder: Encoder, job: IndexJob) -> dict[str, Any]:
    model = encoder.reference
    return {
        "format": FORMAT,
        "weights_sha256": model["weights_sha256"],
        "embed_size": model["embed_size"],
        "image_size": encoder.image_size,
        "image_features": encoder.image_features,
        "shard_size": job.shard_size,
        "dtype": job.dtype,
    }


JOB_FIELDS = {  # the job record's fields, as a user knows them
    "format": "the index format (made by an older selhn)",
    "weights_sha256": "the model",
    "embed_size": "the embedding size",
    "image_size": "the image size",
    "image_features": "the backbone of the image features",
    "shard_size": "--shard-size",
    "dtype": "--dtype",
}


def _check_job(out: Path, record: dict[str, Any], create: bool) -> None:
    """Start a new index in an empty or new ``out`` (if ``create``), or check that ``out`` holds
    this job."""
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
    if not create:
        raise FileNotFoundError(
            f"{path}: not found; under torchrun --out must be on storage that every process "
            "sees (a shared filesystem across machines)"
        )
    (out / "shards").mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(record, indent=2))


def _refuse_other_folders(out: Path) -> None:
    """A new index goes into a new or empty folder: refuse any other (before writing in it)."""
    foreign = not out.is_dir() or any(p.name != ".lock" for p in out.iterdir())
    if out.exists() and not (out / JOB).exists() and foreign:
        raise FileExistsError(f"{out}: exists and is not an index; use a new or empty --out")


def _unfinished(plan: dict[str, Any], store: Store, job: IndexJob) -> list[str]:
    """The files of a plan's shards that are not finished, in order."""
    targets = plan["targets"]
    return [
        target
        for number in range(math.ceil(len(targets) / job.shard_size))
        if plan["first"] + number not in store.rows
        for target in targets[number * job.shard_size : (number + 1) * job.shard_size]
    ]


def _plan(out: Path, collection: Collection, store: Store, job: IndexJob) -> dict[str, Any]:
    """The files to encode (those no stored embedding matches), in shards from ``first``: the
    unfinished plan of an interrupted build if it is still this one, else a new plan."""
    todo = []
    for target in dict.fromkeys(collection.targets):  # each target once
        key = stat_key(collection.root, target)
        if key is None or key not in store.by_file:
            todo.append(target)
    path = out / PLAN
    if path.exists():
        saved = read_json(path, "the plan of a selhn index build")
        if saved["root"] == str(collection.root) and _unfinished(saved, store, job) == todo:
            return saved
        drop_partials(out / "shards")
    plan = {"root": str(collection.root), "first": store.next_number(), "targets": todo}
    write_atomic(path, json.dumps(plan))
    return plan


def build_index(
    encoder: Encoder,
    collection: Collection,
    out: str | Path,
    job: IndexJob | None = None,
    workers: int = 0,
    progress: bool = True,
    process: Distributed = SINGLE_PROCESS,
) -> dict[str, Any] | None:
    """Bring the index in ``out`` up to date with ``collection`` (a new one, an interrupted
    build resumed, or an earlier index updated), encoding only what no stored embedding matches.

    Args:
        process: this process's place in a torchrun job (whose process group is joined).
    Returns:
        on rank 0 the index's ``index.json`` contents plus ``seconds``, ``read_now`` and
        ``encoded_now`` (the files all processes read and encoded in this call); None on the
        other ranks.
    """
    encoder.check_images()
    out, job = Path(out), job or IndexJob()
    started = time.perf_counter()
    record = _job_record(encoder, job)
    lock = FolderLock(out, "index build", "wait for it to end or use another --out")
    if process.is_main:  # the only writer of the folder, but for the shards
        _refuse_other_folders(out)
        lock.acquire()
    try:
        if process.is_main:
            _check_job(out, record, create=True)
            plan = _plan(out, collection, Store(out), job)
        if process.enabled:
            dist.barrier()
        if not process.is_main:  # every process checks what rank 0 wrote, on the same storage
            _check_job(out, record, create=False)
            plan = read_json(out / PLAN, "the plan of a selhn index build")
        counts = _encode_mine(encoder, plan, out, job, workers, progress, process)
        if not process.is_main:
            return None
        report = _join(out, collection, job, encoder)
        (out / PLAN).unlink()
    finally:
        lock.release()
    read_now, encoded_now = counts
    seconds = time.perf_counter() - started
    return {**report, "seconds": seconds, "read_now": read_now, "encoded_now": encoded_now}


def _encode_mine(
    encoder: Encoder, plan: dict[str, Any], out: Path, job: IndexJob, workers: int,
    progress: bool, process: Distributed,
) -> tuple[int, int]:  # fmt: skip
    """Encode this process's unfinished shards of the plan; (files read, files encoded) by all
    processes (a collective under torchrun)."""
    store = Store(out)
    count = len(plan["targets"])
    numbers = range(plan["first"], plan["first"] + math.ceil(count / job.shard_size))
    mine = [n for n in numbers[process.rank :: process.world_size] if n not in store.rows]
    todo = sum(min(job.shard_size, count - (n - plan["first"]) * job.shard_size) for n in mine)
    label = "encoding" + (f" (process {process.rank})" if process.enabled else "")
    bar = Progress(label, todo, "images", progress and todo > 0)
    totals = [0, 0]
    for number in mine:
        start = (number - plan["first"]) * job.shard_size
        targets = plan["targets"][start : start + job.shard_size]
        read, encoded = encode_shard(
            encoder, store, Path(plan["root"]), targets, number, job.dtype, job.batch_size,
            workers, bar,
        )  # fmt: skip
        totals = [totals[0] + read, totals[1] + encoded]
    bar.close()
    if process.enabled:  # waits for every process: then all shards are written
        summed = torch.tensor(totals, device=encoder.device)
        dist.all_reduce(summed)
        totals = summed.tolist()
    return totals[0], totals[1]


def _join(out: Path, collection: Collection, job: IndexJob, encoder: Encoder) -> dict[str, Any]:
    """The index of ``collection`` from the stored embeddings (``index.json`` contents and the
    number of rows)."""
    store = Store(out)
    refs, rows, files, skipped = [], [], [], []
    named = zip(collection.names, collection.targets, strict=True)
    for position, (name, target) in enumerate(named):
        key = stat_key(collection.root, target)
        ref = store.by_file.get(key) if key is not None else None
        if ref is None:
            why = store.unreadable.get(target, "it changed while it was indexed; index again")
            skipped.append({"file": name, "error": why})
            continue
        refs.append(ref)
        rows.append(position)
        _, size, mtime_ns, _, sha256 = store.identity(ref)
        files.append({"name": name, "target": target, "size": size, "mtime_ns": mtime_ns,
                      "sha256": sha256})  # fmt: skip
    skipped += [{"file": name, "error": why} for name, why in collection.ignored]
    embeddings = gather(store, refs, encoder.embed_size, DTYPES[job.dtype])
    captions = None if collection.captions is None else [collection.captions[i] for i in rows]
    meta = write_index(
        out, [embeddings], files, captions, skipped, encoder.reference, job, collection.root
    )
    tidy(store, refs, embeddings)
    return meta


def write_index(
    out: Path,
    parts: list[np.ndarray],
    files: list[dict[str, Any]],
    captions: list[list[str]] | None,
    skipped: list[dict[str, str]],
    model: dict[str, Any],
    job: IndexJob,
    root: Path,
) -> dict[str, Any]:
    """Write the row files and the faiss index of embeddings ``parts`` (one row per file, in
    order), then ``index.json``; return its contents."""
    if not files:
        raise ValueError(f"{out}: no image of the collection could be read (see {SKIPPED})")
    if sum(len(p) for p in parts) != len(files):
        raise ValueError(f"{out}: {sum(len(p) for p in parts)} embeddings for {len(files)} files")
    (out / META).unlink(missing_ok=True)  # the folder is unfinished until it is written again
    write_atomic(out / FILES, "".join(json.dumps(f, ensure_ascii=False) + "\n" for f in files))
    write_atomic(out / SKIPPED, "".join(json.dumps(s) + "\n" for s in skipped))
    if captions is not None:
        lines = (json.dumps(c, ensure_ascii=False) + "\n" for c in captions)
        write_atomic(out / CAPTIONS, "".join(lines))
    elif (out / CAPTIONS).exists():
        (out / CAPTIONS).unlink()
    index, spec = ann.build(parts, ann.choose(len(files), job.exact_limit))
    ann.save(index, out / FAISS_FILE)
    meta = {
        "format": FORMAT,
        "root": str(root),
        "model": model,
        "images": len(files),
        "skipped": len(skipped),
        "captions": captions is not None,
        "dtype": job.dtype,
        "job": asdict(job),
        "faiss": spec,
    }
    write_atomic(out / META, json.dumps(meta, indent=2))
    return meta
