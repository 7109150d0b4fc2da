"""RVSE++: the residual region image encoder and the BiGRU text encoder in one joint space.

The text encoder may instead be a pretrained transformer, fine-tuned (``text_encoder=
"transformer"``) or frozen with one linear map (``"sentence"``). The regions may instead be the
grid cells of a pretrained CNN, trained end to end from images (``backbone=NAME``), or of its last
stage, trained on the trunk activations of ``selhn features`` (``backbone_stage=NAME``). With
EfficientNet-Lite0 and frozen sentence embeddings, ``class_prior`` adds the backbone's ImageNet
classifier, read through its class names (``class_prior.py``), to the score."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from torch import nn

from selhn.data.facts import DataFacts
from selhn.data.inputs import ImageFiles, ImageInput, RegionFeatures, TrunkActivations
from selhn.data.vocab import TextVocabulary
from selhn.models.backbones import DEFAULT_BACKBONE, GridBackbone, build_backbone, grid_shape
from selhn.models.base import DualEncoder
from selhn.models.class_prior import PRIOR_BACKBONE, ClassPrior, learned_size
from selhn.models.image import (
    IMAGE_HEADS,
    GridImageEncoder,
    PooledLinearEncoder,
    ResidualRegionEncoder,
)
from selhn.models.registry import register_model
from selhn.models.sentence import SentenceEncoder
from selhn.models.stage import CUTS, LastStage, build_stage, stage_shapes
from selhn.models.text import BiGRUTextEncoder
from selhn.models.transformer import (
    TransformerTextEncoder,
    WordPieceTokenizer,
    hidden_size,
    load_tokenizer,
    save_tokenizer,
)
from selhn.utils.extras import EXTRAS

TEXT_ENCODERS = ("bigru", "transformer", "sentence")
TOKENIZED = ("transformer", "sentence")  # text encoders with the transformer's own tokenizer


@dataclass
class RVSEPPSettings:
    """Everything RVSEPP is built from; the defaults are the paper's."""

    architecture: str = "rvsepp"  # the registered model: rvsepp | vsepp | probe
    vocab_size: int | None = None  # from the data: words of the vocabulary (or tokenizer)
    img_dim: int | None = 2048  # from the data: channels per region (None with a backbone)
    embed_size: int = 1024  # joint embedding dimension
    word_dim: int = 300  # word embedding dimension (bigru)
    mlp_hidden: int = 512  # hidden width of the image encoder's residual MLP
    text_encoder: str = "bigru"  # bigru | transformer (a pretrained text transformer, learning)
    # | sentence (its frozen sentence embeddings, one linear map)
    text_model: str | None = None  # transformer: local Hugging Face model directory; None: the
    # packaged all-MiniLM-L6-v2 (text extra)
    word_vectors: str | None = None  # bigru: "glove" initialises the words from GloVe 6B 50-d
    backbone: str | None = None  # end to end from image files: efficientnet-lite0 or timm:NAME
    # (the data directory lists the images: {split}_images.txt); None: features
    backbone_weights: str | None = None  # timm backbone: its local pretrained weights file
    image_size: int = 224  # backbone (or backbone_stage): square input size in pixels
    backbone_stage: str | None = None  # the last stage of this backbone learns on the trunk
    # activations of selhn features ({split}_trunk.npy; its image size is theirs); None: regions
    # or images
    image_head: str = "residual"  # residual (the paper's: Linear, residual MLP, GPO over the
    # regions) | mean (the mean of the regions, one Linear)
    class_prior: float = 0.0  # weight of the class-name prior (class_prior.py): the score is
    # (learned + w * prior) / (1 + w); needs efficientnet-lite0 (backbone or backbone_stage) and
    # text_encoder=sentence, and embed_size above the text model's width; 0: none

    @property
    def has_tokenizer(self) -> bool:
        """Whether the text side brings its own tokenizer (no word vocabulary)."""
        return self.text_encoder in TOKENIZED

    def extras(self, pretrained: bool = True) -> dict[str, tuple[str, ...]]:
        """The optional packages these settings need: extra -> its modules needed. Without
        ``pretrained`` (a checkpoint: the weights are in it) only what builds the model and reads
        its images."""
        needs: dict[str, tuple[str, ...]] = {}
        if self.has_tokenizer:  # the packaged model only for a new model that names no other
            packaged = pretrained and not self.text_model
            needs["text"] = EXTRAS["text"] if packaged else ("transformers",)
        if self.word_vectors == "glove" and pretrained:
            needs["glove"] = EXTRAS["glove"]
        if DEFAULT_BACKBONE in (self.backbone, self.backbone_stage):
            needs["images"] = (
                EXTRAS["images"] if pretrained else ("PIL", "efficientnet_lite_pytorch")
            )
        elif self.backbone is not None:
            needs |= {"timm": EXTRAS["timm"], "images": ("PIL",)}
        return needs

    def fit(self, facts: DataFacts, given: set[str]) -> list[str]:
        """Set what the data and the user's settings decide: the image size of stored trunk
        activations, and no class prior (a recipe's) where the user's text encoder or image side
        cannot carry it or the embedding leaves it no room. ``given``: the keys the user set,
        which are never replaced (a contradiction is a ValueError). Returns each choice, with
        why."""
        chosen = []
        prior_fits = self.text_encoder == "sentence" and PRIOR_BACKBONE in (
            self.backbone,
            self.backbone_stage,
        )
        if self.class_prior and "model.class_prior" not in given and not prior_fits:
            self.class_prior = 0.0
            chosen.append(
                f"model.class_prior=0, as it needs model.text_encoder=sentence and the "
                f"{PRIOR_BACKBONE} backbone or its stage (here {self.text_encoder}, backbone "
                f"{self.backbone}, stage {self.backbone_stage})"
            )
        job = facts.features
        if self.backbone_stage is not None:
            if job is None or job["backbone"] != self.backbone_stage or not facts.trunk:
                raise ValueError(
                    f"model.backbone_stage={self.backbone_stage} learns on the trunk activations "
                    f"of {self.backbone_stage} features, which {facts.path} does not hold; make "
                    f"them with selhn features --backbone {self.backbone_stage} (on a folder of "
                    "an older selhn, the same command adds them), or --recipe paper"
                )
            if self.image_size != job["image_size"]:
                if "model.image_size" in given:
                    raise ValueError(
                        f"model.image_size={self.image_size}, but the trunk activations of "
                        f"{facts.path} were made at {job['image_size']} px"
                    )
                self.image_size = job["image_size"]
                chosen.append(
                    f"model.image_size={self.image_size}, as {facts.path}'s features were made "
                    f"at {self.image_size} px"
                )
        if self.class_prior and self.text_encoder == "sentence":
            width = hidden_size(self.text_model)
            if self.embed_size <= width:
                if "model.class_prior" in given:
                    raise ValueError(
                        f"model.class_prior={self.class_prior:g} needs model.embed_size above the "
                        f"text model's width ({width}); got {self.embed_size}"
                    )
                self.class_prior = 0.0
                chosen.append(
                    f"model.class_prior=0, as model.embed_size={self.embed_size} leaves the "
                    f"class prior no room (it takes {width})"
                )
        return chosen

    def checks(self) -> list[tuple[bool, str, str]]:
        """(holds, key, what is expected) of every constraint on these settings."""
        transformer, backbone, stage = self.has_tokenizer, self.backbone, self.backbone_stage
        return [
            (self.embed_size >= 1, "embed_size", ">= 1"),
            (self.word_dim >= 1, "word_dim", ">= 1"),
            (self.mlp_hidden >= 1, "mlp_hidden", ">= 1"),
            (self.text_encoder in TEXT_ENCODERS, "text_encoder", str(TEXT_ENCODERS)),
            (self.image_head in IMAGE_HEADS, "image_head", str(IMAGE_HEADS)),
            (self.word_vectors in (None, "glove"), "word_vectors", "None or glove"),
            (self.image_size >= 32, "image_size", ">= 32 (the backbone's stride)"),
            (backbone in (None, DEFAULT_BACKBONE) or backbone.startswith("timm:"),
             "backbone", f"None, {DEFAULT_BACKBONE} or timm:NAME"),
            (backbone is not None or self.backbone_weights is None,
             "backbone_weights", "None without model.backbone"),
            (stage in (None, *CUTS), "backbone_stage", f"None or one of {[*CUTS]}"),
            (backbone is None or stage is None, "backbone_stage",
             "None with model.backbone (images in, not trunk activations)"),
            (transformer or self.text_model is None, "text_model",
             "None unless model.text_encoder is transformer or sentence"),
            (not transformer or self.word_vectors is None, "word_vectors",
             "None with model.text_encoder=transformer or sentence"),
            (0 <= self.class_prior < math.inf, "class_prior", "a number >= 0"),
            (not self.class_prior or PRIOR_BACKBONE in (backbone, stage), "class_prior",
             f"0 unless model.backbone or model.backbone_stage is {PRIOR_BACKBONE} (its "
             "ImageNet classifier makes the prior)"),
            (not self.class_prior or self.text_encoder == "sentence", "class_prior",
             "0 unless model.text_encoder is sentence (the prior's text side is the frozen "
             "sentence embedding)"),
        ]  # fmt: skip


@register_model
class RVSEPP(DualEncoder):
    """Dual encoder; the score of an image and a caption is the dot product of their embeddings."""

    architecture = "rvsepp"
    Settings = RVSEPPSettings
    settings: RVSEPPSettings

    def __init__(self, settings: RVSEPPSettings) -> None:
        """``backbone``: images in, through this backbone's grid (untrained here: see
        ``load_pretrained``); ``img_dim`` must then be None or its channels. ``backbone_stage``:
        likewise, trunk activations in, through the backbone's last stage."""
        super().__init__(settings)
        s = self.settings
        if s.vocab_size is None:
            raise ValueError("vocab_size (words of the vocabulary) is needed")
        if s.class_prior and s.text_encoder != "sentence":
            raise ValueError(f"class_prior needs text_encoder sentence; got {s.text_encoder!r}")
        self.image_encoder: GridImageEncoder | ResidualRegionEncoder | PooledLinearEncoder
        if s.backbone_stage is not None:
            if s.backbone is not None:
                raise ValueError("backbone and backbone_stage exclude each other")
            self.image_encoder = self._grid_encoder(build_stage(s.backbone_stage))
        elif s.backbone is not None:
            grid = build_backbone(s.backbone, pretrained=False)
            if s.img_dim not in (None, grid.channels):
                raise ValueError(
                    f"backbone {s.backbone} has {grid.channels} channels, not {s.img_dim}"
                )
            self.image_encoder = self._grid_encoder(grid)
        elif s.class_prior:
            raise ValueError(
                f"class_prior needs backbone or backbone_stage {PRIOR_BACKBONE}; got neither"
            )
        elif s.img_dim is None:
            raise ValueError("img_dim (region feature channels) is needed without a backbone")
        elif s.image_head == "mean":
            self.image_encoder = PooledLinearEncoder(s.img_dim, s.embed_size)
        else:
            self.image_encoder = ResidualRegionEncoder(s.img_dim, s.embed_size, s.mlp_hidden)
        s = self.settings
        if s.text_encoder == "bigru":
            self.text_encoder = BiGRUTextEncoder(s.vocab_size, s.word_dim, s.embed_size)
        elif s.text_encoder == "transformer":
            self.text_encoder = TransformerTextEncoder(s.text_model, s.embed_size)
        elif s.text_encoder == "sentence":
            self.text_encoder = SentenceEncoder(s.text_model, s.embed_size, s.class_prior)
        else:
            raise ValueError(
                f"text_encoder must be bigru, transformer or sentence; got {s.text_encoder!r}"
            )

    def _grid_encoder(self, backbone: GridBackbone | LastStage) -> GridImageEncoder:
        """The image encoder over ``backbone``'s cells, with the class prior if configured."""
        self.settings = s = replace(self.settings, img_dim=backbone.channels)
        if not s.class_prior:
            return GridImageEncoder(backbone, s.embed_size, s.mlp_hidden, s.image_head)
        if backbone.name != PRIOR_BACKBONE:
            raise ValueError(f"class_prior needs backbone {PRIOR_BACKBONE}; got {backbone.name}")
        text_dim = hidden_size(s.text_model)
        head = learned_size(s.embed_size, text_dim)  # the prior fills the rest
        prior = ClassPrior(backbone.channels, text_dim)
        return GridImageEncoder(backbone, head, s.mlp_hidden, s.image_head, prior, s.class_prior)

    @property
    def augments_text(self) -> bool:
        """Not with frozen sentence embeddings: each caption's is computed once."""
        return self.settings.text_encoder != "sentence"

    # --- the data -----------------------------------------------------------------------------

    @classmethod
    def image_input(cls, settings: RVSEPPSettings, backbone: nn.Module | None = None) -> ImageInput:
        """Image files at ``image_size`` with a backbone (cut into its grid cells, probed on
        ``backbone`` or a new one), trunk activations with a backbone stage, else region
        features."""
        stage = settings.backbone_stage
        if stage is not None:
            return TrunkActivations(stage, *stage_shapes(stage, settings.image_size))
        if settings.backbone is None:
            return RegionFeatures(settings.img_dim)
        backbone = backbone or build_backbone(settings.backbone, pretrained=False)
        cells, _ = grid_shape(backbone, settings.image_size)
        return ImageFiles(settings.image_size, cells)

    def reads(self) -> ImageInput:
        return self.image_input(self.settings, getattr(self.image_encoder, "backbone", None))

    @classmethod
    def make_vocabulary(
        cls, settings: RVSEPPSettings, captions: list[str], vocab_file: str | None, min_count: int
    ) -> TextVocabulary:
        """The transformer's own tokenizer, or a word vocabulary."""
        if settings.has_tokenizer:
            return WordPieceTokenizer(settings.text_model)
        return super().make_vocabulary(settings, captions, vocab_file, min_count)

    def save_vocabulary(self, vocab: TextVocabulary, directory: Path) -> dict[str, Any]:
        if not self.settings.has_tokenizer:
            return super().save_vocabulary(vocab, directory)
        return save_tokenizer(vocab, directory, asdict(self.settings))

    @classmethod
    def load_vocabulary(
        cls, settings: dict[str, Any], directory: Path
    ) -> tuple[dict[str, Any], TextVocabulary]:
        if settings.get("text_encoder") not in TOKENIZED:
            return super().load_vocabulary(settings, directory)
        return load_tokenizer(settings, directory)

    # --- pretrained parts and optimisation ----------------------------------------------------

    def load_pretrained(self, vocab: TextVocabulary) -> list[str]:
        """The backbone's (or its last stage's) ImageNet weights, the transformer's weights, or
        GloVe word vectors; and the class prior's classifier and class names."""
        loaded = []
        if isinstance(self.image_encoder, GridImageEncoder):
            backbone = self.image_encoder.backbone
            backbone.load_pretrained(self.settings.backbone_weights)
            part = "the last stage of the" if self.settings.backbone_stage else "the"
            loaded.append(f"loaded {part} pretrained {backbone.name} backbone")
        if isinstance(self.text_encoder, TransformerTextEncoder):
            self.text_encoder.load_pretrained()
            loaded.append(f"loaded the pretrained text transformer {self.text_encoder.model_dir}")
        if isinstance(self.text_encoder, SentenceEncoder):
            self.text_encoder.load_pretrained()
            loaded.append(f"loaded the frozen text transformer {self.text_encoder.model_dir}")
        prior = getattr(self.image_encoder, "prior", None)
        if prior is not None:
            prior.load_pretrained(self.text_encoder.embed_texts)
            loaded.append(
                f"loaded the ImageNet classifier of {PRIOR_BACKBONE} and embedded its "
                f"{len(prior.names)} class names (the class prior)"
            )
        return loaded + super().load_pretrained(vocab)

    def param_groups(
        self, pretrained_lr_scale: float, backbone_lr_scale: float, stage_lr_scale: float
    ) -> list[dict]:
        """The model; a pretrained text transformer at ``pretrained_lr_scale`` times the
        learning rate (VSE-infinity's 0.1); an image backbone at ``backbone_lr_scale`` times it
        (VSE-infinity's 0.01), or its last stage at ``stage_lr_scale`` times it. A frozen
        sentence model is in no group."""
        pretrained = []
        if isinstance(self.text_encoder, TransformerTextEncoder):
            pretrained.append(
                (list(self.text_encoder.transformer.parameters()), pretrained_lr_scale)
            )
        if isinstance(self.image_encoder, GridImageEncoder):
            scale = stage_lr_scale if self.settings.backbone_stage else backbone_lr_scale
            pretrained.append((list(self.image_encoder.backbone.parameters()), scale))
        frozen = []
        if isinstance(self.text_encoder, SentenceEncoder):
            frozen = list(self.text_encoder.transformer.parameters())
        taken = {id(p) for params, _ in pretrained for p in params} | {id(p) for p in frozen}
        own = [p for p in self.parameters() if id(p) not in taken]
        groups = [{"params": own, "lr_scale": 1.0}]
        return groups + [{"params": params, "lr_scale": scale} for params, scale in pretrained]

    def set_backbone_trainable(self, trainable: bool) -> bool:
        encoder = self.image_encoder
        if not isinstance(encoder, GridImageEncoder) or encoder.backbone_trainable == trainable:
            return False
        encoder.set_backbone_trainable(trainable)
        return True

    def backbone_phase(self) -> dict[str, str]:
        if not isinstance(self.image_encoder, GridImageEncoder):
            return {}
        return {"backbone": "learning" if self.image_encoder.backbone_trainable else "frozen"}
