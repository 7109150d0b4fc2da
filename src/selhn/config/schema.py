"""The configuration's schema: one dataclass per section (``model`` is the architecture's own
settings dataclass), values set by dotted key with their types checked, ranges validated, and
YAML files read and written. Defaults are the paper's; the schedule's keys left None are chosen
from the data by ``resolve``, the one step that decides a run's configuration."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from selhn.models.registry import ARCHITECTURES, model_class

LOSSES = ("selhn", "hardest", "all", "infonce", "selnce")
FALSE_NEGATIVES = ("none", "same_image", "same_caption", "similar")  # loss.false_negatives

# What each compared loss changes in the configuration (a recipe may set more for a loss).
LOSS_SETUPS: dict[str, dict[str, Any]] = {
    "all": {"loss.name": "all"},
    "hardest": {"loss.name": "hardest"},
    "hardest+warmup": {"loss.name": "hardest", "loss.warmup_epochs": 1},
    "selhn": {"loss.name": "selhn"},
    "infonce": {"loss.name": "infonce"},
    "selnce": {"loss.name": "selnce"},
}


def loss_setup(name: str) -> dict[str, Any]:
    """What a compared loss changes: a ``LOSS_SETUPS`` name, and with ``:MODE`` (for example
    ``selhn:same_caption``) its ``loss.false_negatives``."""
    base, colon, mode = name.partition(":")
    if base not in LOSS_SETUPS or (colon and mode not in FALSE_NEGATIVES):
        raise ValueError(
            f"--losses: unknown {name!r}; choose from {', '.join(LOSS_SETUPS)}, each optionally "
            f"with :MODE, MODE one of {', '.join(FALSE_NEGATIVES)}"
        )
    return {**LOSS_SETUPS[base], **({"loss.false_negatives": mode} if colon else {})}


def parse_losses(text: str) -> list[str]:
    losses = [name.strip() for name in text.split(",") if name.strip()]
    if not losses:
        raise ValueError("--losses: name at least one loss")
    for name in losses:
        loss_setup(name)
    return losses


def model_settings(architecture: str = "rvsepp") -> Any:
    """The default settings of an architecture: the ``model`` section of the configuration."""
    return model_class(architecture).Settings()


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
    """The loss (docs/method.md)."""

    name: str = "selhn"  # selhn | hardest | all | infonce | selnce (selective InfoNCE)
    margin: float = 0.2  # triplet margin
    epsilon: float = 0.01  # SelHN's (and selnce's) gap threshold
    temperature: float = 0.07  # infonce, selnce: initial temperature (learned)
    hardness: float = 0.5  # selnce: beta of the hard-negative weights, in units of the logits
    warmup_epochs: int = 0  # epochs of the all-negatives loss first (VSE-infinity uses 1)
    false_negatives: str = "none"  # which pairs besides a pair's own are not negatives: none |
    # same_image (an image's other captions) | same_caption (also identical caption texts and
    # image files) | similar (also captions whose frozen sentence embeddings are close)
    similar_threshold: float = 0.95  # false_negatives=similar: the cosine of "close"


@dataclass
class TrainConfig:
    """Optimisation. The schedule's keys left None are chosen from the data when a run starts
    (docs/training.md); ``--recipe paper`` sets them all to the paper's recipe."""

    epochs: int | None = None  # passes over the training captions; None: from the data
    batch_size: int = 128  # the global batch: under torchrun, split evenly over the processes
    lr: float = 5e-4  # AdamW learning rate (times each optimiser group's lr_scale)
    warmup_steps: int | None = None  # steps of linear learning-rate warm-up; None: 5% of all
    lr_decay_epoch: float | None = None  # the learning rate is multiplied by lr_decay after this
    # many epochs (a fraction: part-way through an epoch); None: from half of all steps
    lr_decay: float = 0.1  # learning-rate factor after the decay point
    patience: int | None = None  # epochs without a better dev rSum before training stops
    # early (0: never); None: 5% of the epochs, at least 5
    weight_average: float = 0.0  # decay per step of the moving average of the weights that is
    # evaluated and saved; 0: the live weights
    weight_decay: float = 0.01  # AdamW weight decay (none for a learned loss temperature)
    grad_clip: float = 2.0  # max gradient norm over all parameters (a learned loss temperature
    # included); 0 disables
    seed: int = 0  # initialisation, shuffling and augmentation draws
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = "none"  # none | bf16 (bfloat16 autocast, CUDA only)
    log_every: int = 10  # steps between log records (each one synchronises with the device)
    tensorboard: bool = False  # also write the scalars as TensorBoard events (tensorboard extra)
    eval_batch_size: int = 256  # images or captions encoded at once in the dev evaluation
    pretrained_lr_scale: float = 0.1  # learning-rate factor of a pretrained text transformer
    backbone_frozen_epochs: int = 1  # training from images: epochs before the backbone learns
    backbone_lr_scale: float = 0.01  # learning-rate factor of the backbone (VSE-infinity's)
    stage_lr_scale: float = 2.0  # learning-rate factor of a backbone's last stage learning on
    # trunk activations (model.backbone_stage)
    global_negatives: bool = False  # torchrun: mine negatives over the batches of all ranks
    sync_batchnorm: bool = False  # torchrun on CUDA: batch statistics over all ranks
    compile: bool = False  # torch.compile the model (CUDA only)


@dataclass
class Config:
    """``model`` is the architecture's own settings dataclass (``model.architecture`` picks it)."""

    model: Any = field(default_factory=model_settings)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Every configured value (the model's sizes that come from the data are left out)."""
        values = dataclasses.asdict(self)
        for name in model_class(self.model.architecture).FROM_DATA:
            values["model"].pop(name, None)
        return values

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
            for key, value in _architecture_first(entries.items()):
                self.set(f"{section}.{key}", value, source)

    def set_all(self, values: dict[str, Any], source: str = "command line") -> None:
        """Set ``{"section.key": value}`` pairs, the architecture first."""
        for key, value in _architecture_first(values.items()):
            self.set(key, value, source)

    def unresolved(self) -> list[str]:
        """The keys whose value still waits for the data (``resolve`` fills them)."""
        schedule = ("epochs", "warmup_steps", "lr_decay_epoch", "patience")
        return [f"train.{key}" for key in schedule if getattr(self.train, key) is None]

    def set(self, dotted: str, value: Any, source: str = "command line") -> None:
        section, _, key = dotted.partition(".")
        if section not in SECTIONS or not key:
            raise ValueError(f"{source}: unknown key {dotted!r}; keys look like train.lr")
        if dotted == "model.architecture":
            self._switch_architecture(str(value), source)
            return
        part = getattr(self, section)
        if section == "model" and key in model_class(part.architecture).FROM_DATA:
            raise ValueError(f"{source}: {dotted} is set from the data, not configured")
        types_ = typing.get_type_hints(type(part))
        if section == "model" and key not in types_ and key in every_model_key():
            raise ValueError(
                f"{source}: {dotted} does not apply to model.architecture={part.architecture}"
            )
        if key not in types_:
            raise ValueError(
                f"{source}: unknown key {dotted!r}; {section} has {', '.join(sorted(types_))}"
            )
        setattr(part, key, _coerce(value, types_[key], dotted, source))

    def _switch_architecture(self, architecture: str, source: str) -> None:
        """Settings of another architecture, keeping the values it shares with the current one;
        a changed value it has no place for is an error."""
        try:
            new = model_settings(architecture)
        except ValueError as err:
            raise ValueError(f"{source}: model.architecture: {err}") from err
        old, default = self.model, model_settings(self.model.architecture)
        for field_ in dataclasses.fields(old):
            name, value = field_.name, getattr(old, field_.name)
            if name == "architecture":
                continue
            if hasattr(new, name):
                setattr(new, name, value)
            elif value != getattr(default, name):
                raise ValueError(
                    f"{source}: model.{name} does not apply to model.architecture={architecture}"
                )
        self.model = new

    def validate(self) -> None:
        """Raise ValueError naming the first key whose value is out of range."""
        checks = [
            (self.loss.name in LOSSES, "loss.name", f"one of {LOSSES}"),
            (self.loss.margin >= 0, "loss.margin", ">= 0"),
            (self.loss.epsilon >= 0, "loss.epsilon", ">= 0"),
            (self.loss.warmup_epochs >= 0, "loss.warmup_epochs", ">= 0"),
            (self.loss.temperature > 0, "loss.temperature", "> 0"),
            (self.loss.hardness >= 0, "loss.hardness", ">= 0"),
            (self.loss.false_negatives in FALSE_NEGATIVES, "loss.false_negatives",
             f"one of {FALSE_NEGATIVES}"),
            (-1 <= self.loss.similar_threshold <= 1, "loss.similar_threshold", "in [-1, 1]"),
            (_none_or(self.train.epochs, 1), "train.epochs", "None or >= 1"),
            (_none_or(self.train.warmup_steps, 0), "train.warmup_steps", "None or >= 0"),
            (self.train.lr_decay_epoch is None or self.train.lr_decay_epoch >= 0,
             "train.lr_decay_epoch", "None or >= 0"),
            (_none_or(self.train.patience, 0), "train.patience", "None or >= 0"),
            (0 <= self.train.weight_average < 1, "train.weight_average", "in [0, 1)"),
            (0 < self.train.lr_decay <= 1, "train.lr_decay", "in (0, 1]"),
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
            (self.train.pretrained_lr_scale > 0, "train.pretrained_lr_scale", "> 0"),
            (self.train.backbone_lr_scale > 0, "train.backbone_lr_scale", "> 0"),
            (self.train.stage_lr_scale > 0, "train.stage_lr_scale", "> 0"),
            (self.train.backbone_frozen_epochs >= 0, "train.backbone_frozen_epochs", ">= 0"),
            (0 < self.data.crop_scale <= 1, "data.crop_scale", "in (0, 1]"),
            (not self.model.has_tokenizer or self.data.vocab is None, "data.vocab",
             "None with model.text_encoder=transformer (it has its own tokenizer)"),
        ]  # fmt: skip
        checks += [(ok, f"model.{key}", expected) for ok, key, expected in self.model.checks()]
        checks += [
            (math.isfinite(value), key, "finite")
            for key, value in _floats(self)
            if key not in INFINITE_ALLOWED
        ]
        for ok, key, expected in checks:
            if not ok:
                raise ValueError(f"{key} must be {expected}; got {_lookup(self, key)!r}")


SECTIONS = tuple(f.name for f in dataclasses.fields(Config))


def _none_or(value: int | None, minimum: int) -> bool:
    return value is None or value >= minimum


INFINITE_ALLOWED = ("loss.epsilon",)  # SelHN with an infinite gap threshold: always hardest


def _floats(config: Config) -> list[tuple[str, float]]:
    return [
        (f"{section}.{f.name}", getattr(getattr(config, section), f.name))
        for section in SECTIONS
        for f in dataclasses.fields(getattr(config, section))
        if isinstance(getattr(getattr(config, section), f.name), float)
    ]


def _architecture_first(items: Any) -> list[tuple[str, Any]]:
    """Settings in order, the architecture (which picks the model's settings class) first."""
    return sorted(items, key=lambda item: item[0] not in ("architecture", "model.architecture"))


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


def every_model_key() -> set[str]:
    """The keys of every registered architecture's settings."""
    return {f.name for cls in ARCHITECTURES.values() for f in dataclasses.fields(cls.Settings)}


PRESETS = Path(__file__).parent / "presets"


def presets() -> list[str]:
    """The names of the packaged presets (``--config NAME``)."""
    return sorted(path.stem for path in PRESETS.glob("*.yaml"))


def preset_file(name: str | Path) -> Path:
    """A configuration file: a path that exists, or the name of a packaged preset."""
    path = Path(name)
    if path.is_file():
        return path
    packaged = PRESETS / f"{name}.yaml"
    if path.name == str(name) and packaged.is_file():
        return packaged
    raise FileNotFoundError(
        f"{name}: no such configuration file, nor a packaged preset ({', '.join(presets())}; "
        "the recipes paper and own-data are given with --recipe)"
    )


def read_yaml(path: Path) -> dict[str, Any]:
    """The settings of a YAML file (``{section: {key: value}}``)."""
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"{path}: cannot read the configuration ({err})") from err
    return values


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Defaults, then the YAML file at ``path`` (or the packaged preset of that name), then
    ``overrides`` ({"train.lr": 1e-4}); checked, not resolved (``resolve`` decides what the data
    decide)."""
    config = Config()
    if path is not None:
        path = preset_file(path)
        config.update(read_yaml(path), str(path))
    config.set_all(overrides or {})
    config.validate()
    return config


def save_config(config: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8")
