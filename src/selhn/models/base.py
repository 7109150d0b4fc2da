"""What every architecture shares: two encoders into one joint space, scored by dot product.

An architecture is one class with one settings dataclass (``Settings``: everything its
constructor needs, saved in checkpoints as is), registered by name (``registry``). The model
answers for itself: which images it reads, which vocabulary it uses and how a checkpoint keeps
it, which pretrained parts it loads, its optimiser groups and its backbone phase.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar

from torch import Tensor, nn

from selhn.data.inputs import ImageInput, RegionFeatures
from selhn.data.vocab import TextVocabulary, Vocabulary

VOCAB_FILE = "vocab.json"


class DualEncoder(nn.Module):
    """Subclasses set ``architecture`` and ``Settings`` and build ``image_encoder`` and
    ``text_encoder`` in ``__init__``; both encoders return L2-normalised embeddings.

    ``Settings`` fields named in ``FROM_DATA`` are set from the data when training starts.
    """

    architecture: ClassVar[str]
    Settings: ClassVar[type]
    FROM_DATA: ClassVar[tuple[str, ...]] = ("vocab_size", "img_dim")
    settings: Any
    image_encoder: nn.Module
    text_encoder: nn.Module

    def __init__(self, settings: Any) -> None:
        """``settings``: a ``Settings`` (``registry.create_model`` builds from a name and
        fields too)."""
        super().__init__()
        self.settings = settings

    # --- the data -----------------------------------------------------------------------------

    @classmethod
    def image_input(cls, settings: Any) -> ImageInput:
        """What the model reads: region features of ``settings.img_dim`` channels (None: any)."""
        return RegionFeatures(settings.img_dim)

    def reads(self) -> ImageInput:
        """``image_input`` of this model."""
        return self.image_input(self.settings)

    @classmethod
    def make_vocabulary(
        cls, settings: Any, captions: list[str], vocab_file: str | None, min_count: int
    ) -> TextVocabulary:
        """The vocabulary of a new model: ``vocab_file`` (a SCAN vocabulary), or one built from
        the training captions."""
        if vocab_file:
            return Vocabulary.load(vocab_file)
        return Vocabulary.build(captions, min_count)

    def save_vocabulary(self, vocab: TextVocabulary, directory: Path) -> dict[str, Any]:
        """Write the vocabulary into a checkpoint directory; return the settings to record."""
        vocab.save(directory / VOCAB_FILE)
        return asdict(self.settings)

    @classmethod
    def load_vocabulary(
        cls, settings: dict[str, Any], directory: Path
    ) -> tuple[dict[str, Any], TextVocabulary]:
        """(settings to build the model with, vocabulary) of a checkpoint directory."""
        return settings, Vocabulary.load(directory / VOCAB_FILE)

    # --- pretrained parts ---------------------------------------------------------------------

    def load_pretrained(self, vocab: TextVocabulary) -> list[str]:
        """Load the pretrained weights a new model starts from; return what was loaded."""
        if getattr(self.settings, "word_vectors", None) != "glove":
            return []
        from selhn.data.glove import init_from_glove

        found = init_from_glove(self.text_encoder.embed, vocab)
        return [f"initialised {found} of {len(vocab)} words from GloVe 6B 50-d"]

    # --- optimisation -------------------------------------------------------------------------

    @property
    def augments_text(self) -> bool:
        """Whether training perturbs caption tokens (data.token_prob); a model whose text side
        is fixed features says no."""
        return True

    def param_groups(
        self, pretrained_lr_scale: float, backbone_lr_scale: float, stage_lr_scale: float
    ) -> list[dict]:
        """Optimiser groups, each with the ``lr_scale`` its learning rate is multiplied by."""
        return [{"params": list(self.parameters()), "lr_scale": 1.0}]

    def set_backbone_trainable(self, trainable: bool) -> bool:
        """Let a pretrained image backbone learn or not; True if that changed anything."""
        return False

    def backbone_phase(self) -> dict[str, str]:
        """``{"backbone": "frozen" | "learning"}`` for a model with a backbone, else empty."""
        return {}

    # --- encoding -----------------------------------------------------------------------------

    def encode_images(self, *image_input: Tensor) -> Tensor:
        """Images as the model reads them -> (B, embed_size) unit vectors: (B, K, img_dim)
        regions and optionally (B,) region counts (default: all K); or, with a backbone,
        (B, 3, S, S) uint8 images and optionally a (B, cells) bool mask of cells to keep."""
        return self.image_encoder(*image_input)

    def encode_texts(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        """(B, T) token ids, (B,) lengths -> (B, embed_size) unit vectors."""
        return self.text_encoder(tokens, lengths)

    def forward(
        self, image_input: tuple[Tensor, ...], tokens: Tensor, token_lengths: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Embeddings of a batch of images (``encode_images`` arguments) and of captions."""
        return self.encode_images(*image_input), self.encode_texts(tokens, token_lengths)
