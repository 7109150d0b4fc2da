"""A trained model as a function of strings and files: captions and image files in, unit-vector
embeddings out (what ``selhn index`` and ``selhn serve`` use).

A model that reads image files itself (it has a backbone) encodes them directly. A model trained
on features of ``selhn features`` reads them through the backbone its checkpoint records (its
``image_features``: backbone, weights, image size and preprocessing), so a new image is encoded
exactly as its training data was (up to the backbone's cut, for a model that trains its last
stage on trunk activations). A model trained on features selhn did not compute (detector
regions such as SCAN's precomp files) encodes captions only.
"""

from __future__ import annotations

import threading
import unicodedata
from dataclasses import asdict
from functools import cached_property
from pathlib import Path
from typing import IO, Any

import torch
from torch import Tensor, nn

from selhn.checkpoint import load_model, weights_sha256
from selhn.data.batch import pad_tokens
from selhn.data.facts import PREPROCESSING
from selhn.data.image_files import load_image
from selhn.data.inputs import ImageFiles, TrunkActivations
from selhn.data.vocab import TextVocabulary
from selhn.features import FeatureJob
from selhn.models import DualEncoder
from selhn.models.backbones import build_backbone
from selhn.models.stage import trunk_activations

ImageSource = str | Path | IO[bytes]


# Characters that draw nothing though Unicode files them as letters or symbols: the Hangul
# fillers, the blank Braille pattern and the replacement character (Default_Ignorable_Code_Point
# characters of other categories are marks or formats, refused by category).
_INVISIBLE = frozenset("\u115f\u1160\u3164\uffa0\u2800\ufffd")


def _readable(character: str) -> bool:
    """A letter, digit, punctuation mark or symbol that draws something: not a control, format,
    private-use, unassigned or space character, not a combining mark on its own, not one of
    ``_INVISIBLE``."""
    return unicodedata.category(character)[0] in "LNPS" and character not in _INVISIBLE


class Encoder:
    """Encode captions and images with a trained model. Thread-safe: one call at a time."""

    def __init__(
        self,
        model: DualEncoder,
        vocab: TextVocabulary,
        image_features: dict[str, Any] | None,
        checkpoint: str | Path | None = None,
    ) -> None:
        """``image_features``: how the model's training features were made (``feature_job``),
        None if they were not made by selhn; ``checkpoint``: where the model was loaded from."""
        self.model, self.vocab = model.eval(), vocab
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        name = str(checkpoint) if checkpoint is not None else "the model"
        self.device = next(model.parameters()).device
        self._lock = threading.Lock()
        self._features: dict[str, Any] | None = None  # the features job, for such a model
        self._backbone: nn.Module | None = None
        self._reads = reads = model.reads()
        self.image_problem: str | None = None  # why images cannot be encoded, if they cannot
        if isinstance(reads, ImageFiles):
            self.image_size: int | None = reads.size
        elif image_features is None:
            self.image_size = None
            self.image_problem = (
                f"{name} was trained on image features that selhn did not compute (its data had "
                "no features.json: detector regions such as SCAN's precomp files, or synthetic "
                "features), so it cannot encode image files; it can encode captions"
            )
        else:
            if image_features.get("preprocessing") != PREPROCESSING:
                raise ValueError(
                    f"{name}: its features were made with preprocessing "
                    f"{image_features.get('preprocessing')!r}, which this selhn does not implement"
                )
            self.image_size = int(image_features["image_size"])
            self._features = image_features

    @classmethod
    def load(
        cls,
        checkpoint: str | Path,
        device: torch.device | str = "cpu",
        image_features: FeatureJob | None = None,
    ) -> Encoder:
        """The model of a checkpoint directory. ``image_features``: how its training features
        were made, for a checkpoint that does not record it (trained by selhn 0.1.0)."""
        model, vocab, meta = load_model(checkpoint, device)
        if image_features is not None:
            job = {**asdict(image_features), "preprocessing": PREPROCESSING}
        else:
            job = meta.get("image_features")
        encoder = cls(model, vocab, job, checkpoint)
        if encoder.image_problem and "image_features" not in meta and image_features is None:
            encoder.image_problem = (
                f"{checkpoint}: the checkpoint does not record how its image features were made "
                "(it predates that record), so it cannot encode image files; "
                "Encoder.load(..., image_features=FeatureJob(backbone, image_size)) with the "
                "values given to selhn features declares them"
            )
        return encoder

    @property
    def image_features(self) -> dict[str, Any] | None:
        """How the training features were made, for a model of ``selhn features`` output."""
        return self._features

    @property
    def embed_size(self) -> int:
        return int(self.model.settings.embed_size)

    @cached_property
    def reference(self) -> dict[str, Any]:
        """What identifies the model: its checkpoint, architecture and weights (hashed once)."""
        checkpoint = self.checkpoint
        return {
            "checkpoint": str(checkpoint.resolve()) if checkpoint else None,
            "architecture": self.model.architecture,
            "embed_size": self.embed_size,
            "weights_sha256": weights_sha256(checkpoint) if checkpoint else None,
        }

    # --- text ---------------------------------------------------------------------------------

    def unknown_words(self, caption: str) -> list[str]:
        """The caption's words the model cannot read (each becomes its unknown token)."""
        return self.vocab.unknown_words(caption)

    def check_query(self, text: str) -> list[str]:
        """Warnings about a caption to search for: words the model does not know, text past
        the length it reads. ValueError if it has no readable character (empty, spaces,
        control or invisible characters, U+FFFD)."""
        if not text.strip():
            raise ValueError("the query is empty; give text to search for")
        if not any(_readable(character) for character in text):
            raise ValueError(
                "the query has no readable character (only control, invisible or replacement "
                "characters); give words to search for"
            )
        warnings = []
        if unknown := self.unknown_words(text):
            warnings.append(f"words the model does not know: {', '.join(unknown)}")
        if unread := self.vocab.unread_text(text):
            warnings.append(f"the query is longer than the model reads; left out: {unread!r}")
        return warnings

    @torch.inference_mode()
    def encode_texts(self, captions: list[str], batch_size: int = 256) -> Tensor:
        """(N, D) float32 unit vectors on the CPU, one per caption."""
        if not captions or any(not isinstance(c, str) or not c.strip() for c in captions):
            raise ValueError("captions must be a non-empty list of non-empty strings")
        out = []
        with self._lock:
            for start in range(0, len(captions), batch_size):
                tokens, lengths = pad_tokens(
                    [self.vocab.encode(c) for c in captions[start : start + batch_size]]
                )
                embedded = self.model.encode_texts(tokens.to(self.device), lengths.to(self.device))
                out.append(embedded.float().cpu())
        return torch.cat(out)

    # --- images -------------------------------------------------------------------------------

    def check_images(self) -> None:
        """Raise ValueError if this model cannot encode image files."""
        if self.image_problem is not None:
            raise ValueError(self.image_problem)

    def read_image(
        self,
        source: ImageSource,
        name: str = "",
        max_pixels: int | None = None,
        reduce: bool = False,
    ) -> Tensor:
        """(3, S, S) uint8 pixels of an image file (a path or an open binary file), as the model
        reads them; ValueError if it is not a readable image. ``max_pixels`` and ``reduce``: as
        in ``load_image`` (bounds on decoding an image from elsewhere)."""
        self.check_images()
        return load_image(source, self.image_size, name, max_pixels=max_pixels, reduce=reduce)

    @torch.inference_mode()
    def encode_pixels(self, pixels: Tensor) -> Tensor:
        """(B, 3, S, S) uint8 pixels of ``read_image`` -> (B, D) float32 unit vectors, CPU."""
        self.check_images()
        with self._lock:
            pixels = pixels.to(self.device)
            if self._features is None:  # the model reads pixels itself
                return self.model.encode_images(pixels).float().cpu()
            backbone = self._feature_backbone()
            if isinstance(self._reads, TrunkActivations):  # as selhn features stores them
                activations = trunk_activations(backbone, pixels).half()
                return self.model.encode_images(activations).float().cpu()
            grid = backbone(pixels)  # (B, C, h, w), as selhn features computes
            regions = grid.flatten(2).transpose(1, 2).float()
            return self.model.encode_images(regions).float().cpu()

    def encode_image_files(self, files: list[ImageSource], batch_size: int = 32) -> Tensor:
        """(N, D) float32 unit vectors, one per image file; ValueError names an unreadable one."""
        out = []
        for start in range(0, len(files), batch_size):
            part = files[start : start + batch_size]
            out.append(self.encode_pixels(torch.stack([self.read_image(f) for f in part])))
        if not out:
            raise ValueError("no image files to encode")
        return torch.cat(out)

    def _feature_backbone(self) -> nn.Module:
        """The backbone of ``selhn features`` that made the training features (built once)."""
        if self._backbone is None:
            job = self._features
            backbone = build_backbone(job["backbone"], job["weights"])
            self._backbone = backbone.to(self.device).eval()
        return self._backbone
