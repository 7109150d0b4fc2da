"""Grid features of raw images, written in the precomp layout so the trainer and evaluator apply.

For each split, ``{split}_ims.npy`` holds (images, h * w cells, channels) float32 features of a
pretrained backbone, ``{split}_caps.txt`` the captions, ``{split}_caps_img.txt`` the image of each
caption and ``{split}_images.txt`` the image files. ``features.json`` records the job.

Resumable: a split is computed into a hidden memory-mapped ``.{split}_ims.npy.partial`` whose
count of finished images is stored (atomically) after every batch; a rerun continues from there,
and the split's ``{split}_ims.npy`` appears (by rename) only when complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from selhn.data.facts import JOB_FILE
from selhn.data.image_files import load_image, write_image_index
from selhn.data.manifest import ImageRecord, by_split
from selhn.data.precomp import features_path
from selhn.data.trunk import trunk_path
from selhn.models.backbones import DEFAULT_BACKBONE, GridBackbone, build_backbone, grid_shape
from selhn.models.stage import finish_stage, has_cut, trunk_activations
from selhn.utils.progress import tracked
from selhn.utils.textfiles import read_json, write_atomic


@dataclass(frozen=True)
class FeatureJob:
    """What to compute: the backbone (``weights``: a local file, for timm backbones) and the
    square size every image is resized to."""

    backbone: str = DEFAULT_BACKBONE
    image_size: int = 224
    weights: str | None = None


class _RecordImages(Dataset):
    """The images of a list of records, loaded and resized (in loader workers, if any)."""

    def __init__(self, records: list[ImageRecord], size: int) -> None:
        self.records, self.size = records, size

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Tensor:
        record = self.records[index]
        return load_image(record.image, self.size, record.source)


def _fingerprint(records: list[ImageRecord], job: FeatureJob) -> dict[str, Any]:
    digest = hashlib.sha256()
    for r in records:
        digest.update(json.dumps([str(r.image), r.captions, r.split]).encode())
    return {**asdict(job), "images": len(records), "records_sha256": digest.hexdigest()}


def _check_job(out: Path, fingerprint: dict[str, Any]) -> None:
    """Start a job in ``out``, or check that ``out`` holds this job. A job that has computed
    nothing yet (refused before its first image) is replaced."""
    path = out / JOB_FILE
    if path.exists():
        saved = read_json(path, "the record of a selhn features job")
        if saved == fingerprint:
            return
        if _computed_anything(out):
            raise FileExistsError(
                f"{path}: {out} holds features of another job ({saved['backbone']}, "
                f"{saved['image_size']} px, {saved['images']} images); use another --out"
            )
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(fingerprint, indent=2))


def _computed_anything(out: Path) -> bool:
    """Whether ``out`` holds any feature file, finished or partial."""
    return any(out.glob("*.npy")) or any(out.glob(".*.partial")) or any(out.glob(".*.done"))


def _outputs(split: str, trunk: bool) -> list[str]:
    """What a split's images become: the grid, and with a backbone ``trunk`` cut the activations
    entering its last stage (flipped left-right too for the training split)."""
    if not trunk:
        return ["grid"]
    return ["grid", "trunk", "flipped"] if split == "train" else ["grid", "trunk"]


def _output_path(out: Path, split: str, output: str) -> Path:
    if output == "grid":
        return features_path(out, split)
    return trunk_path(out, split, flipped=output == "flipped")


@torch.no_grad()
def _compute(backbone: nn.Module, images: Tensor, outputs: list[str]) -> dict[str, np.ndarray]:
    """Each output of a batch: (B, cells, channels) float32 grid, (B, C, s, s) float16 trunk."""
    if outputs == ["grid"]:
        grid = backbone(images)  # (B, C, h, w)
        return {"grid": grid.flatten(2).transpose(1, 2).float().cpu().numpy()}
    trunk = trunk_activations(backbone, images)
    grid = finish_stage(backbone, trunk)  # the same operations as backbone(images)
    arrays = {"grid": grid.flatten(2).transpose(1, 2), "trunk": trunk.half()}
    if "flipped" in outputs:
        arrays["flipped"] = trunk_activations(backbone, images.flip(3)).half()
    return {name: array.cpu().numpy() for name, array in arrays.items()}


def _extract_split(
    out: Path,
    split: str,
    records: list[ImageRecord],
    backbone: nn.Module,
    outputs: list[str],
    job: FeatureJob,
    device: torch.device,
    batch_size: int,
    num_workers: int,
    progress: bool,
) -> int:
    """Compute the split's missing images; return how many were computed in this call."""
    finals = {name: _output_path(out, split, name) for name in outputs}
    partials = {name: path.with_name(f".{path.name}.partial") for name, path in finals.items()}
    done_file = out / f".{split}.done"
    resuming = done_file.exists() and all(p.exists() for p in partials.values())
    start = int(done_file.read_text()) if resuming else 0
    arrays: dict[str, np.ndarray] = {}
    row = start
    loader = DataLoader(
        _RecordImages(records[start:], job.image_size), batch_size, num_workers=num_workers
    )
    label = f"features {split}" + (f" from image {start}" if start else "")
    for images in tracked(loader, label, len(records) - start, "images", progress, len):
        batch = _compute(backbone, images.to(device), outputs)
        if not arrays:  # shapes known from the first batch
            for name, values in batch.items():
                shape = None if resuming else (len(records), *values.shape[1:])
                mode = "r+" if resuming else "w+"
                arrays[name] = np.lib.format.open_memmap(partials[name], mode, values.dtype, shape)
        for name, values in batch.items():
            arrays[name][row : row + len(images)] = values
            arrays[name].flush()
        row += len(images)
        write_atomic(done_file, str(row))
    arrays.clear()
    write_image_index(out, split, records)
    for name, final in finals.items():
        os.replace(partials[name], final)
    done_file.unlink()
    return row - start


def extract_features(
    records: list[ImageRecord],
    out: str | Path,
    job: FeatureJob | None = None,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
    progress: bool = True,
    backbone: nn.Module | None = None,
) -> dict[str, Any]:
    """Write the precomp layout of ``records`` under ``out``; resume an interrupted job.

    Args:
        backbone: an already built backbone (default: the one ``job`` names).
    Returns:
        images per split, images computed by this call, seconds.
    """
    out, device, job = Path(out), torch.device(device), job or FeatureJob()
    _check_job(out, _fingerprint(records, job))
    started = time.perf_counter()
    splits = by_split(records)
    trunk = has_cut(job.backbone) and (backbone is None or isinstance(backbone, GridBackbone))
    todo_outputs = {
        split: _outputs(split, trunk)
        for split in splits
        if not all(_output_path(out, split, o).exists() for o in _outputs(split, trunk))
    }
    todo = {split: splits[split] for split in todo_outputs}
    computed = 0
    if todo:
        model = backbone if backbone is not None else build_backbone(job.backbone, job.weights)
        model = model.to(device).eval()
        grid_shape(model, job.image_size)  # a clear error for a size too small
        for split, part in todo.items():
            computed += _extract_split(
                out, split, part, model, todo_outputs[split], job, device, batch_size,
                num_workers, progress,
            )  # fmt: skip
    return {
        "images": {split: len(part) for split, part in splits.items()},
        "computed": computed,
        "seconds": time.perf_counter() - started,
    }
