"""Settings chosen from the data: what ``auto`` becomes for a given data directory.

For features of ``selhn features`` (pretrained image features of a user's own images):

- ``model.backbone_stage=auto`` is the features' backbone where its trunk activations are stored:
  its last stage learns on them, which lifted test rSum over the frozen grid on the real sets of
  ``benchmarks/real_data.py`` (docs/performance.md, "Real data");
- ``model.text_encoder=auto`` is then the frozen sentence embeddings of the pretrained text
  transformer (one linear map: a step costs the image side only), and otherwise the pretrained
  text transformer, learning: pretrained image features are matched best by pretrained text
  features (on real sets of about 1,000 images it beats the BiGRU learned from scratch by far,
  see docs/training.md);
- ``model.class_prior=None`` is 0.5 where the stage learns beside the frozen sentence model:
  the backbone's ImageNet classifier, read through its class names by that model, scores each
  pair beside the learned embeddings (``models/class_prior.py``); it lifted the full model's test
  rSum on emoji and openclipart and held it on samples (docs/performance.md, "Real data");
- ``loss.name=auto`` is InfoNCE: on each real set of ``benchmarks/real_data.py`` it gave the
  full model a higher test rSum than SelHN (docs/performance.md, "Real data");
- ``train.weight_average=None`` is 0.95: the moving average of the weights is evaluated and
  saved, since the dev rSum of a few hundred images jumps from epoch to epoch and the best epoch
  of the live weights is partly chance; with it and a shorter patience the full model's test
  rSum rose on emoji and openclipart and held on samples (docs/performance.md, "Real data").

For anything else (region features such as SCAN's, synthetic data) they are the paper's: the
BiGRU (also with a given word vocabulary or GloVe vectors) and SelHN, with no backbone stage, no
class prior and the live weights.
"""

from __future__ import annotations

from pathlib import Path

from selhn.config import Config
from selhn.data.trunk import trunk_path
from selhn.extras import installed
from selhn.features import JOB_FILE, feature_job
from selhn.models.class_prior import PRIOR_BACKBONE
from selhn.models.stage import has_cut
from selhn.models.transformer import hidden_size


def choose_for_data(config: Config, data: str | Path) -> list[str]:
    """Replace ``auto`` settings of ``config`` by their choice for ``data``; return one line per
    choice, with its reason."""
    from_features = (Path(data) / JOB_FILE).is_file()
    lines = _backbone_stage(config, data, from_features) + _image_head(config)
    lines += _text_encoder(config, data, from_features) + _class_prior(config)
    lines += _loss(config, data, from_features)
    return lines + _weight_average(config, data, from_features)


def _backbone_stage(config: Config, data: str | Path, from_features: bool) -> list[str]:
    model = config.model
    if getattr(model, "backbone_stage", None) != "auto":
        return []
    job = feature_job(data) if from_features else None
    model.backbone_stage = None
    if job is None:
        why = "the data are not features of selhn features"
    elif model.backbone is not None:
        why = "model.backbone is set (the whole backbone, from image files)"
    elif not has_cut(job["backbone"]):
        why = f"backbone {job['backbone']} has no last stage to learn"
    elif not trunk_path(Path(data), "train").is_file():
        why = (
            f"{data} has no trunk activations (features of an older selhn: selhn features on "
            "the same manifest and --out adds them)"
        )
    else:
        model.backbone_stage, model.image_size = job["backbone"], job["image_size"]
        why = f"{data} holds the trunk activations of its {job['backbone']} features"
    return [f"model.backbone_stage=auto: {model.backbone_stage}, as {why}"]


def _image_head(config: Config) -> list[str]:
    model = config.model
    if getattr(model, "image_head", None) != "auto":
        return []
    if model.backbone_stage:
        model.image_head = "mean"
        why = "the backbone's last stage learns (a mean of its cells, one linear map)"
    else:
        model.image_head = "residual"
        why = "the paper's image encoder (residual MLP and GPO over the regions)"
    return [f"model.image_head=auto: {model.image_head}, as {why}"]


def _text_encoder(config: Config, data: str | Path, from_features: bool) -> list[str]:
    model = config.model
    if getattr(model, "text_encoder", None) != "auto":
        return []
    words = model.word_vectors is not None or config.data.vocab is not None
    if from_features and not words and installed("text"):
        stage = getattr(model, "backbone_stage", None)
        model.text_encoder = "sentence" if stage else "transformer"
        why = f"{data} holds features of selhn features, matched by a pretrained text model"
        if stage:
            why += " (frozen: the backbone's last stage learns)"
    else:
        model.text_encoder = "bigru"
        if not from_features:
            why = "the data are not features of selhn features"
        elif words:
            why = "a word vocabulary or word vectors are configured"
        else:
            why = "the text extra is not installed (pip install 'selhn[text]' for the transformer)"
    return [f"model.text_encoder=auto: {model.text_encoder}, as {why}"]


FEATURES_CLASS_PRIOR = 0.5


def _class_prior(config: Config) -> list[str]:
    model = config.model
    if not hasattr(model, "class_prior") or model.class_prior is not None:
        return []
    stage, text = model.backbone_stage, model.text_encoder
    if stage == PRIOR_BACKBONE and text == "sentence":
        width = hidden_size(model.text_model)
        model.class_prior = FEATURES_CLASS_PRIOR if model.embed_size > width else 0.0
        why = f"the {stage} stage learns beside the frozen sentence model (its classifier's"
        why += " class names, read by that model, score images and captions untrained)"
        if not model.class_prior:
            why = f"model.embed_size={model.embed_size} leaves it no room (it takes {width})"
    else:
        model.class_prior = 0.0
        why = (
            f"it needs the {PRIOR_BACKBONE} stage learning and the frozen sentence model "
            f"(here model.backbone_stage={stage}, model.text_encoder={text})"
        )
    return [f"model.class_prior=None: {model.class_prior:g}, as {why}"]


def _loss(config: Config, data: str | Path, from_features: bool) -> list[str]:
    loss = config.loss
    if loss.name != "auto":
        return []
    if from_features:
        loss.name = "infonce"
        why = (
            f"{data} holds features of selhn features (best on real sets of about 1,000 "
            "images: docs/training.md)"
        )
    else:
        loss.name = "selhn"
        why = "the data are not features of selhn features (the paper's loss)"
    return [f"loss.name=auto: {loss.name}, as {why}"]


FEATURES_WEIGHT_AVERAGE = 0.95


def _weight_average(config: Config, data: str | Path, from_features: bool) -> list[str]:
    train = config.train
    if train.weight_average is not None:
        return []
    if from_features:
        train.weight_average = FEATURES_WEIGHT_AVERAGE
        why = (
            f"{data} holds features of selhn features (steadier and better on real sets of about "
            "1,000 images: docs/training.md)"
        )
    else:
        train.weight_average = 0.0
        why = "the data are not features of selhn features (the paper's: the live weights)"
    return [f"train.weight_average=None: {train.weight_average:g}, as {why}"]
