"""What a run is made of before its first step: the model (new, or the one it resumes), its
objective and optimiser state, the batches of each epoch, and the wrapping under torchrun."""

from __future__ import annotations

import shlex
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from selhn.config.resolve import check_resumable
from selhn.config.schedule import steps_per_epoch
from selhn.config.schema import Config
from selhn.data.datasets import PairDataset
from selhn.data.duplicates import split_duplicates
from selhn.data.facts import check_same_features, feature_job
from selhn.data.inputs import Split, fingerprint
from selhn.data.vocab import TextVocabulary
from selhn.models import DualEncoder, create_model, model_class
from selhn.training.objective import TrainingObjective, make_loss
from selhn.training.run_dir import RunDirectory, saved_config
from selhn.training.state import TrainState
from selhn.training.weight_average import WeightAverage
from selhn.utils.distributed import Distributed


def start_model(
    config: Config, data: Path, run: RunDirectory, resume: bool
) -> tuple[DualEncoder, TextVocabulary, dict[str, Any] | None]:
    """(model, vocabulary, saved training state or None) on the CPU: ``RUN/last``, checked to
    fit ``config`` and ``data``; or a new model for the configured architecture, sized from the
    training split."""
    if resume:
        model, vocab, meta, state = run.load_last()
        check_resumable(saved_config(run.last, meta), config, run.last)
        if "image_features" in meta and model.reads().stored:
            check_same_features(meta["image_features"], data, str(run.last))
        trained_on = meta.get("train_data")  # none in runs of selhn 0.1.0
        if trained_on is not None and fingerprint(model.reads().open(data, "train")) != trained_on:
            raise ValueError(
                f"{data}: its train split is not the one {run.path} was trained on "
                f"({trained_on['images']} images, {trained_on['captions']} captions, captions "
                f"SHA-256 {trained_on['sha256'][:12]}); resume with the same --data"
            )
        return model, vocab, state
    if run.has_checkpoint():
        raise FileExistsError(f"{run.path} already holds a run; pass --resume or another --out")
    cls, settings = model_class(config.model.architecture), config.model
    train_split = cls.image_input(replace(settings, img_dim=None)).open(data, "train")
    vocab = cls.make_vocabulary(
        settings, train_split.captions, config.data.vocab, config.data.min_word_count
    )
    torch.manual_seed(config.train.seed)
    model = create_model(replace(settings, vocab_size=len(vocab), img_dim=train_split.feature_dim))
    for message in model.load_pretrained(vocab):
        print(message, flush=True)
    return model, vocab, None


def provenance(model: DualEncoder, data: Path, train_split: Split) -> dict[str, Any]:
    """Which data and command made the model, recorded in every checkpoint: the train split's
    fingerprint, how its stored features were made and this process's command line."""
    features = feature_job(data) if model.reads().stored else None
    command = shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])
    return {"train_data": fingerprint(train_split), "image_features": features, "command": command}


def make_objective(
    model: DualEncoder, config: Config, device: torch.device, train_split: Split, announce: bool
) -> TrainingObjective:
    """The model and its losses: the configured one, and the all-negatives loss for warm-up
    epochs; with the keys of ``train_split``'s duplicates where ``loss.false_negatives`` asks
    (how many, printed if ``announce``)."""
    tc, lc = config.train, config.loss
    gather = tc.global_negatives
    loss = make_loss(lc.name, lc.margin, lc.epsilon, lc.temperature, gather, lc.hardness)
    losses = {lc.name: loss}
    if lc.warmup_epochs and "all" not in losses:
        losses["all"] = make_loss("all", lc.margin, lc.epsilon, gather=gather)
    amp = torch.bfloat16 if tc.amp == "bf16" else None
    network_model = torch.compile(model) if tc.compile else model
    duplicates = None
    if lc.false_negatives in ("same_caption", "similar"):
        embed = getattr(model.text_encoder, "embed_texts", None)
        duplicates = split_duplicates(
            train_split, lc.false_negatives, embed, lc.similar_threshold, device
        )
        if announce:
            found = duplicates.summary(train_split.caption_to_image())
            print(f"false negatives ({lc.false_negatives}): {found}", flush=True)
    same_image = lc.false_negatives == "same_image"
    return TrainingObjective(network_model, losses, same_image, duplicates, amp).to(device)


def make_state(objective: TrainingObjective, model: DualEncoder, config: Config) -> TrainState:
    """AdamW over the objective's groups, and the moving average of the weights if configured."""
    tc = config.train
    groups = objective.param_groups(
        model, tc.pretrained_lr_scale, tc.backbone_lr_scale, tc.stage_lr_scale
    )
    optimizer = torch.optim.AdamW(groups, lr=tc.lr, weight_decay=tc.weight_decay)
    average = None
    if tc.weight_average:
        updated = {id(p) for group in optimizer.param_groups for p in group["params"]}
        learning = [p for p in model.parameters() if id(p) in updated]
        average = WeightAverage(learning, tc.weight_average)
    return TrainState(objective, optimizer, average=average)


def epoch_loader(
    dataset: PairDataset, batch_size: int, seed: int, epoch: int, workers: int, job: Distributed
) -> DataLoader:
    """This rank's batches of one epoch; ``batch_size`` is the global batch, split over ranks.

    Under torchrun a DistributedSampler shuffles by (seed, epoch) and drops the last
    ``len % world_size`` pairs, so no pair is repeated to even out the ranks.
    """
    dataset.epoch = epoch
    _, drop_last = steps_per_epoch(len(dataset), batch_size, job.world_size)
    if job.enabled:
        sampler = DistributedSampler(dataset, job.world_size, job.rank, True, seed, drop_last=True)
        sampler.set_epoch(epoch)
        order: dict[str, Any] = {"sampler": sampler}
    else:
        generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = {"shuffle": True, "generator": generator}
    return DataLoader(
        dataset,
        batch_size // job.world_size,
        collate_fn=dataset.collate,
        num_workers=workers,
        drop_last=drop_last,
        **order,
    )


def check_parallel_settings(config: Config, device: torch.device, job: Distributed) -> None:
    tc = config.train
    if tc.amp == "bf16" and device.type != "cuda":
        raise ValueError("train.amp=bf16 needs a CUDA device; use train.amp=none on the CPU")
    if tc.compile and device.type != "cuda":
        raise ValueError("train.compile=true needs a CUDA device")
    if tc.sync_batchnorm and not (job.enabled and device.type == "cuda"):
        raise ValueError("train.sync_batchnorm=true needs several processes on CUDA devices")
    if tc.batch_size % job.world_size:
        raise ValueError(
            f"train.batch_size={tc.batch_size} (the global batch) must be a multiple of the "
            f"{job.world_size} processes"
        )


def wrap(objective: TrainingObjective, device: torch.device, job: Distributed) -> nn.Module:
    """DDP under torchrun. DDP takes the parameters that learn when it is made, so it is made
    again when that set changes (the backbone starts to learn, the objective changes)."""
    if not job.enabled:
        return objective
    return DistributedDataParallel(
        objective, device_ids=[device] if device.type == "cuda" else None
    )


def mean_over_ranks(values: dict[str, Tensor], job: Distributed) -> dict[str, float]:
    """Logged values averaged over ranks (one collective), as floats."""
    stacked = torch.stack([v.detach().float() for v in values.values()])
    if job.enabled:
        dist.all_reduce(stacked)
        stacked /= job.world_size
    return dict(zip(values, stacked.tolist(), strict=True))
