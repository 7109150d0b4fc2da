"""A trained model as a directory: ``config.json`` (the architecture's settings and what the caller
records), ``model.safetensors`` (the weights), the vocabulary as the model keeps it
(``vocab.json``, or for a transformer text encoder ``text_model/``: its configuration and
tokenizer files, no weights) and, where the caller writes one, a ``README.md`` model card.

Frozen parts whose weights an installed package ships (``models.packaged``) are not copied:
``config.json`` names them (``packaged``: module, package, version, file, SHA-256) and loading
reads them from the package after checking the file. Directories of format 1 (``weights.pt``,
every tensor) still load.

Directories are written under a temporary name and renamed into place, so a crash never leaves a
half-written checkpoint behind; ``point(link, target)`` swaps a symlink such as ``RUN/best``
atomically.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from selhn import __version__
from selhn.data.vocab import TextVocabulary
from selhn.models import DualEncoder
from selhn.models.packaged import load_packaged, packaged_parts
from selhn.models.registry import model_class
from selhn.utils.digests import file_sha256
from selhn.utils.extras import require_all
from selhn.utils.textfiles import read_json

FORMAT = 2
CONFIG, WEIGHTS, CARD = "config.json", "model.safetensors", "README.md"
TORCH_WEIGHTS = "weights.pt"  # format 1: every tensor, torch.save


def save_model(
    directory: str | Path,
    model: DualEncoder,
    vocab: TextVocabulary,
    meta: dict[str, Any] | None = None,
    card: Callable[[dict[str, Any]], str] | None = None,
) -> Path:
    """Write the model directory atomically.

    Args:
        meta: JSON-serialisable facts stored in config.json (training config, epoch, metrics).
        card: makes the text of its ``README.md`` from the contents of its config.json.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; a checkpoint is not
    try:
        settings = model.save_vocabulary(vocab, tmp)
        parts = packaged_parts(model)
        config = {
            "format": FORMAT,
            "selhn_version": __version__,
            "architecture": model.architecture,
            "model": settings,
            "packaged": [weights.record(name) for name, weights in parts.items()],
        }
        config = {**config, **(meta or {})}
        (tmp / CONFIG).write_text(json.dumps(config, indent=2))
        state = {k: v for k, v in model.state_dict().items() if _part_of(k, parts) is None}
        write_weights(state, tmp / WEIGHTS)
        if card is not None:
            (tmp / CARD).write_text(card(config), encoding="utf-8")
        if directory.exists():  # keep the old one until the new one is in place
            old = directory.with_name(f".{directory.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(directory, old)
            os.replace(tmp, directory)
            shutil.rmtree(old)
        else:
            os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def _part_of(key: str, parts: dict[str, Any]) -> str | None:
    """The packaged part a state-dict key belongs to, if any."""
    return next((name for name in parts if key.startswith(f"{name}.")), None)


def write_weights(state: dict[str, torch.Tensor], path: Path) -> None:
    """The tensors as safetensors; a failure to write (a full disk, a file size limit) is an
    OSError naming the file."""
    from safetensors.torch import save_file

    tensors = {key: value.detach().cpu().contiguous() for key, value in state.items()}
    try:
        save_file(tensors, path, metadata={"format": "pt", "writer": f"selhn {__version__}"})
    except Exception as err:  # safetensors reports a write error as its own exception type
        raise OSError(f"{path}: writing failed ({err}); is the disk full?") from None


def save_tensors(value: Any, path: Path) -> None:
    """``torch.save``, whose failure to write is an OSError naming the file rather than the
    zip writer's internal RuntimeError."""
    try:
        torch.save(value, path)
    except RuntimeError as err:
        raise OSError(f"{path}: writing failed ({err}); is the disk full?") from None


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def read_meta(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / CONFIG
    if not path.is_file():
        if (Path(directory) / "best").is_dir():
            raise FileNotFoundError(
                f"{path}: not found; {directory} is a run directory: give {Path(directory, 'best')}"
                " (or another checkpoint in it)"
            )
        raise FileNotFoundError(f"{path}: not found; is {directory} a selhn model directory?")
    meta = read_json(path, "a selhn model's configuration")
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: expected a JSON object")
    if not isinstance(meta.get("architecture"), str) or not isinstance(meta.get("model"), dict):
        raise ValueError(f"{path}: expected an 'architecture' name and a 'model' mapping")
    return meta


def load_model(
    directory: str | Path, device: torch.device | str = "cpu"
) -> tuple[DualEncoder, TextVocabulary, dict[str, Any]]:
    """(model in eval mode, vocabulary or tokenizer, config.json contents) of a model directory."""
    directory = Path(directory)
    meta = read_meta(directory)
    config = directory / CONFIG
    try:
        cls = model_class(meta["architecture"])
        needs = cls.Settings(**meta["model"]).extras(pretrained=False)
        require_all(needs, f"the model in {directory}")
        settings, vocab = cls.load_vocabulary(dict(meta["model"]), directory)
        model = cls(cls.Settings(**settings))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{config}: {err}") from err
    if (directory / WEIGHTS).is_file() or not (directory / TORCH_WEIGHTS).is_file():
        state = read_weights(directory / WEIGHTS)
        parts = load_packaged(model, meta.get("packaged") or [], str(config))
    else:
        state, parts = load_tensors(directory / TORCH_WEIGHTS, "the model's weights"), {}
    weights = weights_file(directory)
    try:
        result = model.load_state_dict(state, strict=not parts)
    except (RuntimeError, TypeError, AttributeError) as err:
        problem = str(err).strip().splitlines()
        raise ValueError(
            f"{weights}: these weights do not fit the model {config} describes "
            f"({problem[-1].strip() if problem else type(err).__name__})"
        ) from None
    missing = [k for k in result.missing_keys if _part_of(k, parts) is None]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"{weights}: these weights do not fit the model {config} describes (missing "
            f"{missing[:3]}, unexpected {result.unexpected_keys[:3]})"
        )
    if len(vocab) != model.settings.vocab_size:
        raise ValueError(
            f"{config}: the model was built for {model.settings.vocab_size} words, but its "
            f"vocabulary in {directory} has {len(vocab)}"
        )
    return model.to(device).eval(), vocab, meta


def weights_file(directory: str | Path) -> Path:
    """A model directory's weights: ``model.safetensors``, or a format-1 ``weights.pt``."""
    directory = Path(directory)
    old = directory / TORCH_WEIGHTS
    return old if old.is_file() and not (directory / WEIGHTS).is_file() else directory / WEIGHTS


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``model.safetensors``; an unreadable file raises ValueError."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (the model's weights)")
    try:
        return load_file(path)
    except (SafetensorError, OSError) as err:
        raise ValueError(
            f"{path}: cannot read the model's weights ({err}): the file is truncated or not "
            "written by selhn; use another checkpoint (for a run: RUN/best or an older "
            "checkpoints/epoch-NNN)"
        ) from None


def weights_sha256(directory: str | Path) -> str:
    """SHA-256 of a model directory's weights file: which trained model made something."""
    return file_sha256(weights_file(directory))


def load_tensors(path: Path, what: str) -> Any:
    """``torch.load`` of a file of ``save_tensors``; an unreadable one raises ValueError."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found ({what})")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, empty or foreign: pickle, zip or EOF errors
        raise ValueError(
            f"{path}: cannot read {what} ({type(err).__name__}): the file is truncated, "
            "empty or not written by selhn; use another checkpoint (for a run: RUN/best or "
            "an older checkpoints/epoch-NNN)"
        ) from None


def point(link: str | Path, target: str | Path) -> None:
    """Make ``link`` a symlink to ``target`` (relative), replacing any old link atomically."""
    link = Path(link)
    tmp = link.with_name(f".{link.name}.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(os.path.relpath(target, link.parent), tmp)
    os.replace(tmp, link)
