"""What a data directory says about itself before any model is built: the record of
``selhn features`` (``features.json``: backbone, image size, weights and preprocessing), whether
it stores the trunk activations of the training images, and how many training pairs it holds.
A run's configuration is resolved from these facts (``selhn.config.resolve``), and a model trained
on features is checked against their record before it reads others.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selhn.data.layout import read_captions
from selhn.data.trunk import trunk_path
from selhn.utils.textfiles import read_json

JOB_FILE = "features.json"
# How an image becomes backbone input (``load_image``): recorded with the features, so images
# encoded later are read the same way.
PREPROCESSING = "rgb, bicubic resize to image_size x image_size, backbone normalisation"


@dataclass(frozen=True)
class DataFacts:
    """A data directory's facts: ``features`` is the record of ``selhn features`` (None for
    other data: detector regions, the synthetic set, image lists), ``trunk`` whether the trunk
    activations of its training images are stored, ``pairs`` its training captions."""

    path: Path
    features: dict[str, Any] | None
    trunk: bool
    pairs: int

    @classmethod
    def read(cls, data: str | Path) -> DataFacts:
        path = Path(data)
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: data directory not found")
        check_split(path, "train")
        pairs = len(read_captions(path / "train_caps.txt"))
        return cls(path, feature_job(path), trunk_path(path, "train").is_file(), pairs)


def check_split(data: str | Path, split: str) -> None:
    """FileNotFoundError naming the fix where the data directory has no ``split``, which
    training reads (train, and the dev split it evaluates after every epoch)."""
    path = Path(data) / f"{split}_caps.txt"
    if not path.is_file():
        raise FileNotFoundError(
            f"{data}: no {split} split ({path.name} not found); training needs a train and a "
            f'dev split: give images "split": "{split}" in the manifest and rerun selhn '
            "features (or selhn data images), or let `selhn data folder DIR --out MANIFEST` "
            "assign the splits"
        )


def feature_job(data: str | Path) -> dict[str, Any] | None:
    """How the features of a data directory were made (backbone, weights, image size,
    preprocessing), from its ``features.json``; None where selhn did not compute them."""
    path = Path(data) / JOB_FILE
    if not path.is_file():
        return None
    saved = read_json(path, "the record of a selhn features job")
    try:
        job = {name: saved[name] for name in ("backbone", "image_size", "weights")}
    except (KeyError, TypeError) as err:
        raise ValueError(f"{path}: not the record of a selhn features job ({err!r})") from None
    return {**job, "preprocessing": PREPROCESSING}


FEATURE_FIELDS = ("backbone", "image_size", "weights", "preprocessing")


def _described(job: dict[str, Any]) -> str:
    weights = f", weights {job['weights']}" if job.get("weights") else ""
    return f"{job['backbone']} at {job['image_size']} px{weights}"


def check_same_features(recorded: dict[str, Any] | None, data: str | Path, model: str) -> None:
    """ValueError unless ``data`` holds features made as a model's training features were
    (``recorded``: its checkpoint's ``image_features``, None for features selhn did not make)."""
    job = feature_job(data)
    if job is None and recorded is None:
        return
    if job is not None and recorded is not None:
        if all(job.get(k) == recorded.get(k) for k in FEATURE_FIELDS):
            return
        problem = (
            f"its features were made by {_described(job)}, but {model} was trained on features "
            f"made by {_described(recorded)}"
        )
        if job.get("preprocessing") != recorded.get("preprocessing"):
            problem += f" (preprocessing {recorded.get('preprocessing')!r})"
    elif job is None:
        problem = (
            f"its features were not made by selhn features (no {JOB_FILE}), but {model} was "
            f"trained on features made by {_described(recorded)}"
        )
    else:
        problem = (
            f"it holds features made by {_described(job)}, but {model} was trained on features "
            "that selhn did not make"
        )
    raise ValueError(
        f"{data}: {problem}; the scores would mean nothing. Use the model's own data, or make "
        "features as its were (selhn features --backbone ... --image-size ...)"
    )
