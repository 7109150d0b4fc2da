"""Run configuration: dataclass defaults < ``--config run.yaml`` < ``--section.key=value``."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from selhn.models.backbones import DEFAULT_BACKBONE

LOSSES = ("selhn", "hardest", "all", "infonce")
TEXT_ENCODERS = ("bigru", "transformer")


@dataclass
class ModelConfig:
    """Architecture and sizes (region feature size and vocabulary size come from the data)."""

    architecture: str = "rvsepp"  # rvsepp | vsepp (mean-pooled regions, GRU last state)
    embed_size: int = 1024  # joint embedding dimension
    word_dim: int = 300  # word embedding dimension
    mlp_hidden: int = 512  # hidden width of the image encoder's residual MLP (rvsepp)
    text_encoder: str = "bigru"  # rvsepp: bigru | transformer (a pretrained text transformer)
    text_model: str | None = None  # transformer: local Hugging Face model directory; None: the
    # packaged all-MiniLM-L6-v2 (text extra)
    word_vectors: str | None = None  # bigru: "glove" initialises the words from GloVe 6B 50-d
    backbone: str | None = None  # rvsepp end to end from image files: efficientnet-lite0 or
    # timm:NAME (the data directory lists the images: {split}_images.txt); None: features
    backbone_weights: str | None = None  # timm backbone: its local pretrained weights file
    image_size: int = 224  # backbone: square input size in pixels


@dataclass
class DataConfig:
    """Data loading, vocabulary and augmentation."""

    vocab: str | None = None  # an existing SCAN vocabulary JSON; None builds one from train
    min_word_count: int = 1  # words seen fewer times in train map to <unk>
    region_drop: float = 0.2  # training: probability of dropping each region (or grid cell)
    token_prob: float = 0.2  # training: probability of perturbing each caption token
    dev_split: str = "dev"  # split evaluated after every epoch
    num_workers: int = 0  # DataLoader worker processes
    crop_scale: float = 1.0  # training from images: crop sides are random shares in [this, 1]
    # of the image's (1: no crop)


@dataclass
class LossConfig:
    """Triplet loss (METHOD.md section 3)."""

    name: str = "selhn"  # selhn | hardest | all | infonce
    margin: float = 0.2  # triplet margin
    epsilon: float = 0.01  # SelHN gap threshold
    temperature: float = 0.07  # infonce: initial temperature (learned)
    warmup_epochs: int = 0  # epochs of the all-negatives loss first (VSE-infinity uses 1)
    mask_same_image: bool = False  # captions of one image in a batch are not negatives


@dataclass
class TrainConfig:
    """Optimisation (the defaults are the release's, METHOD.md section 5)."""

    epochs: int = 30
    batch_size: int = 128  # the global batch: under torchrun, split evenly over the processes
    lr: float = 5e-4
    lr_decay_epoch: int = 15  # the learning rate is multiplied by lr_decay from this epoch on
    lr_decay: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 2.0  # max gradient norm over all parameters; 0 disables
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = "none"  # none | bf16 (bfloat16 autocast, CUDA only)
    log_every: int = 10  # steps between log records (each one synchronises with the device)
    eval_batch_size: int = 256
    pretrained_lr_scale: float = 0.1  # learning-rate factor of a pretrained text transformer
    backbone_frozen_epochs: int = 1  # training from images: epochs before the backbone learns
    backbone_lr_scale: float = 0.01  # learning-rate factor of the backbone (VSE-infinity's)
    global_negatives: bool = False  # torchrun: mine negatives over the batches of all ranks
    sync_batchnorm: bool = False  # torchrun on CUDA: batch statistics over all ranks
    compile: bool = False  # torch.compile the model (CUDA only)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> Config:
        config = cls()
        config.update(values, source)
        return config

    def update(self, values: dict[str, Any], source: str) -> None:
        """Set ``{section: {key: value}}``; unknown keys and wrong types raise naming the key."""
        if not isinstance(values, dict):
            raise ValueError(
                f"{source}: expected a mapping of sections, got {type(values).__name__}"
            )
        for section, entries in values.items():
            if section not in SECTIONS:
                raise ValueError(
                    f"{source}: unknown section {section!r}; expected one of {SECTIONS}"
                )
            if not isinstance(entries, dict):
                raise ValueError(f"{source}: section {section!r} must be a mapping")
            for key, value in entries.items():
                self.set(f"{section}.{key}", value, source)

    def set(self, dotted: str, value: Any, source: str = "command line") -> None:
        section, _, key = dotted.partition(".")
        if section not in SECTIONS or not key:
            raise ValueError(f"{source}: unknown key {dotted!r}; keys look like train.lr")
        part = getattr(self, section)
        types_ = typing.get_type_hints(type(part))
        if key not in types_:
            raise ValueError(
                f"{source}: unknown key {dotted!r}; {section} has {', '.join(sorted(types_))}"
            )
        setattr(part, key, _coerce(value, types_[key], dotted, source))

    def validate(self) -> None:
        """Raise ValueError naming the first key whose value is out of range."""
        checks = [
            (self.loss.name in LOSSES, "loss.name", f"one of {LOSSES}"),
            (self.loss.margin >= 0, "loss.margin", ">= 0"),
            (self.loss.epsilon >= 0, "loss.epsilon", ">= 0"),
            (self.loss.warmup_epochs >= 0, "loss.warmup_epochs", ">= 0"),
            (self.loss.temperature > 0, "loss.temperature", "> 0"),
            (self.train.epochs >= 1, "train.epochs", ">= 1"),
            (self.train.batch_size >= 2, "train.batch_size", ">= 2"),
            (self.train.lr > 0, "train.lr", "> 0"),
            (self.train.grad_clip >= 0, "train.grad_clip", ">= 0"),
            (self.train.amp in ("none", "bf16"), "train.amp", "none or bf16"),
            (self.train.log_every >= 1, "train.log_every", ">= 1"),
            (self.train.eval_batch_size >= 1, "train.eval_batch_size", ">= 1"),
            (0 <= self.data.region_drop < 1, "data.region_drop", "in [0, 1)"),
            (0 <= self.data.token_prob <= 1, "data.token_prob", "in [0, 1]"),
            (self.data.min_word_count >= 1, "data.min_word_count", ">= 1"),
            (self.data.num_workers >= 0, "data.num_workers", ">= 0"),
            (self.model.embed_size >= 1, "model.embed_size", ">= 1"),
            (self.model.word_dim >= 1, "model.word_dim", ">= 1"),
            (self.model.mlp_hidden >= 1, "model.mlp_hidden", ">= 1"),
            (self.model.text_encoder in TEXT_ENCODERS, "model.text_encoder", str(TEXT_ENCODERS)),
            (self.model.word_vectors in (None, "glove"), "model.word_vectors", "None or glove"),
            (self.train.pretrained_lr_scale > 0, "train.pretrained_lr_scale", "> 0"),
            (self.train.backbone_lr_scale > 0, "train.backbone_lr_scale", "> 0"),
            (self.train.backbone_frozen_epochs >= 0, "train.backbone_frozen_epochs", ">= 0"),
            (0 < self.data.crop_scale <= 1, "data.crop_scale", "in (0, 1]"),
            (self.model.image_size >= 32, "model.image_size", ">= 32 (the backbone's stride)"),
        ]
        transformer, backbone = self.model.text_encoder == "transformer", self.model.backbone
        checks += [
            (backbone in (None, DEFAULT_BACKBONE) or backbone.startswith("timm:"),
             "model.backbone", f"None, {DEFAULT_BACKBONE} or timm:NAME"),
            (backbone is not None or self.model.backbone_weights is None,
             "model.backbone_weights", "None without model.backbone"),
            (transformer or self.model.text_model is None, "model.text_model",
             "None unless model.text_encoder=transformer"),
            (not transformer or self.model.word_vectors is None, "model.word_vectors",
             "None with model.text_encoder=transformer"),
            (not transformer or self.data.vocab is None, "data.vocab",
             "None with model.text_encoder=transformer (it has its own tokenizer)"),
        ]  # fmt: skip
        for ok, key, expected in checks:
            if not ok:
                raise ValueError(f"{key} must be {expected}; got {_lookup(self, key)!r}")


SECTIONS = tuple(f.name for f in dataclasses.fields(Config))


def _lookup(config: Config, key: str) -> Any:
    section, _, name = key.partition(".")
    part = getattr(config, section, None)
    return getattr(part, name, None) if part is not None and name else None


def _coerce(value: Any, kind: Any, key: str, source: str) -> Any:
    optional = isinstance(kind, types.UnionType) and type(None) in kind.__args__
    if optional:
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        kind = next(a for a in kind.__args__ if a is not type(None))
    try:
        if kind is bool:
            if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
                return value.lower() in ("true", "yes", "1")
            if isinstance(value, bool):
                return value
            raise TypeError
        if kind is int and not isinstance(value, bool) and float(value) == int(float(value)):
            return int(float(value))
        if kind is float and not isinstance(value, bool):
            number = float(value)
            if math.isnan(number):
                raise TypeError
            return number
        if kind is str and isinstance(value, str | int | float):
            return str(value)
    except (TypeError, ValueError):
        pass
    raise ValueError(f"{source}: {key} must be {kind.__name__}; got {value!r}")


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Defaults, then the YAML file at ``path``, then ``overrides`` ({"train.lr": 1e-4})."""
    config = Config()
    if path is not None:
        path = Path(path)
        try:
            values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ValueError(f"{path}: cannot read the configuration ({err})") from err
        config.update(values, str(path))
    for key, value in (overrides or {}).items():
        config.set(key, value)
    config.validate()
    return config


def save_config(config: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8")
