"""The stored embeddings of an index directory: shards, each row tied to the file it was read
from, and the encoding of a plan's shard (resumable batch by batch).

A shard is ``shards/shard-NNNNN.npy`` (rows, D) and ``shards/shard-NNNNN.json``: the file of
each row (target, size, mtime_ns, ctime_ns, sha256) and the files of the shard that could not be
read, with the reason. It is finished once both exist; until then it is encoded into a hidden
memory-mapped ``.shard-NNNNN.partial.npy`` whose progress is stored atomically after every
batch.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from selhn.data.image_files import UnreadableImage, load_image
from selhn.inference.encoder import Encoder
from selhn.inference.index.files import FileIdentity, read_inside
from selhn.utils.progress import Progress
from selhn.utils.textfiles import read_json, write_atomic

DTYPES = {"float16": np.float16, "float32": np.float32}


Key = tuple[str, int, int, int]  # (target, size, mtime_ns, ctime_ns): a file as stat sees it
Ref = tuple[int, int]  # (shard, row) of a stored embedding


def _key(target: str, identity: FileIdentity) -> Key:
    return (target, identity.size, identity.mtime_ns, identity.ctime_ns)


class Store:
    """The finished shards of an index directory: every stored embedding, by file and by the
    hash of the file's bytes."""

    def __init__(self, out: Path) -> None:
        self.folder = out / "shards"
        self.by_file: dict[Key, Ref] = {}
        self.by_hash: dict[str, Ref] = {}
        self.rows: dict[int, list[list]] = {}  # shard -> rows: [*key, sha256]
        self.unreadable: dict[str, str] = {}  # target -> why, from the shards' records
        for record in sorted(self.folder.glob("shard-*.json")):
            number = int(record.stem.removeprefix("shard-"))
            if not (self.folder / f"{record.stem}.npy").exists():
                continue  # its embeddings are not in place: not finished
            saved = read_json(record, "an index shard's record")
            self.rows[number] = saved["rows"]
            for row, (*key, sha256) in enumerate(saved["rows"]):
                self.by_file[tuple(key)] = self.by_hash[sha256] = (number, row)
            self.unreadable |= {target: why for target, why in saved["skipped"]}

    def next_number(self) -> int:
        return max(self.rows, default=-1) + 1

    def array(self, shard: int) -> np.ndarray:
        return np.load(self.folder / f"{shard_name(shard)}.npy", mmap_mode="r")

    def identity(self, ref: Ref) -> list:
        return self.rows[ref[0]][ref[1]]


def shard_name(number: int) -> str:
    return f"shard-{number:05d}"


class _Files(Dataset):
    """Each planned file, read inside the root: (plan position, pixels or None, why not, identity
    or None, stored embedding of the same bytes or None). Read in loader workers if any."""

    def __init__(
        self, root: Path, targets: list[str], first: int, size: int, by_hash: dict[str, Ref]
    ) -> None:
        self.root, self.targets, self.first, self.size = root, targets, first, size
        self.by_hash = by_hash

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple:
        position = self.first + i
        try:
            data, identity = read_inside(self.root, self.targets[i])
        except OSError as err:
            return position, None, err.strerror or str(err), None, None
        except ValueError as err:  # RefusedFile
            return position, None, str(err), None, None
        if identity.sha256 in self.by_hash:  # the same bytes as a stored file: not decoded
            return position, None, "", identity, self.by_hash[identity.sha256]
        try:
            pixels = load_image(io.BytesIO(data), self.size)
        except UnreadableImage as err:  # any failure of the image reader skips the file, named
            return position, None, err.reason, None, None
        return position, pixels, "", identity, None


def _as_list(items: list) -> list:
    return items  # a batch stays a list: unreadable files have no pixels to stack


def stat_key(root: Path, target: str) -> Key | None:
    try:
        info = os.stat(root / target, follow_symlinks=False)
    except OSError:
        return None
    return (target, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def drop_partials(folder: Path) -> None:
    for leftover in folder.glob(".shard-*"):
        leftover.unlink()


def encode_shard(
    encoder: Encoder, store: Store, root: Path, targets: list[str], number: int, dtype: str,
    batch_size: int, workers: int, bar: Progress,
) -> tuple[int, int]:  # fmt: skip
    """Encode the files ``targets`` (under ``root``) as shard ``number`` (resuming its partial
    file) and write it; return the files (read, encoded) by this call."""
    shards = store.folder
    name = shard_name(number)
    partial, progress = shards / f".{name}.partial.npy", shards / f".{name}.progress.json"
    resuming = partial.exists() and progress.exists()
    fresh = {"done": 0, "rows": [], "skipped": []}
    state = read_json(progress, "index progress") if resuming else fresh
    shape = (len(targets), encoder.embed_size)
    array = np.lib.format.open_memmap(
        partial, "r+" if resuming else "w+", DTYPES[dtype], None if resuming else shape
    )
    done, encoded = state["done"], 0
    bar.advance(done)
    reader = _Files(root, targets[done:], done, encoder.image_size, store.by_hash)
    loader = DataLoader(reader, batch_size, num_workers=workers, collate_fn=_as_list)
    for batch in loader:
        fresh_pixels = [(i, pixels) for i, pixels, *_ in batch if pixels is not None]
        if fresh_pixels:
            embedded = encoder.encode_pixels(torch.stack([p for _, p in fresh_pixels]))
            array[[i for i, _ in fresh_pixels]] = embedded.numpy().astype(DTYPES[dtype])
            encoded += len(fresh_pixels)
        for i, _, why, identity, same in batch:
            if identity is None:
                state["skipped"].append([targets[i], why])
                continue
            if same is not None:
                array[i] = store.array(same[0])[same[1]]
            state["rows"].append([i, *_key(targets[i], identity), identity.sha256])
        array.flush()
        state["done"] += len(batch)
        write_atomic(progress, json.dumps(state))
        bar.advance(len(batch))
    kept = [row[0] for row in state["rows"]]
    tmp = shards / f".{name}.tmp.npy"
    np.save(tmp, np.ascontiguousarray(array[kept]))
    del array
    os.replace(tmp, shards / f"{name}.npy")
    record = {"rows": [row[1:] for row in state["rows"]], "skipped": state["skipped"]}
    write_atomic(shards / f"{name}.json", json.dumps(record))
    partial.unlink()
    progress.unlink()
    return len(targets) - done, encoded


def gather(store: Store, refs: list[Ref], dim: int, dtype: Any) -> np.ndarray:
    """(len(refs), dim) stored embeddings, in order."""
    out = np.empty((len(refs), dim), dtype=dtype)
    if refs:
        shards, rows = np.array(refs).T
        for shard in np.unique(shards):
            where = np.flatnonzero(shards == shard)
            out[where] = store.array(int(shard))[rows[where]]
    return out


def tidy(store: Store, refs: list[Ref], embeddings: np.ndarray) -> None:
    """Delete the shards no index row uses; once the stored rows outnumber twice the used ones,
    store the index rows alone, as one new shard."""
    used = {shard for shard, _ in refs}
    stored = sum(len(rows) for shard, rows in store.rows.items() if shard in used)
    drop = set(store.rows) - used
    if stored > 2 * len(refs):
        name = shard_name(store.next_number())
        tmp = store.folder / f".{name}.tmp.npy"
        np.save(tmp, embeddings)
        os.replace(tmp, store.folder / f"{name}.npy")
        record = {"rows": [store.identity(ref) for ref in refs], "skipped": []}
        write_atomic(store.folder / f"{name}.json", json.dumps(record))
        drop = set(store.rows)
    for shard in drop:
        for suffix in (".json", ".npy"):
            (store.folder / f"{shard_name(shard)}{suffix}").unlink()
