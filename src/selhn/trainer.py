"""The training loop: one epoch over the captions, dev evaluation, atomic checkpoints, resume.

Everything random is keyed by (seed, epoch), so a resumed run repeats the uninterrupted run
exactly. Under ``torchrun`` every rank trains its share of each batch with
DistributedDataParallel; rank 0 evaluates and writes the run directory (``run_dir``).
"""

from __future__ import annotations

import sys
import time
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from selhn.config import Config, TrainConfig
from selhn.data.augment import Augmentation
from selhn.data.batch import Batch
from selhn.data.caption_checks import caption_warnings
from selhn.data.datasets import PairDataset
from selhn.data.inputs import ImageFiles, RegionFeatures, Split, TrunkActivations, fingerprint
from selhn.data.vocab import TextVocabulary
from selhn.defaults import choose_for_data
from selhn.distributed import (
    Distributed,
    device_for,
    from_environment,
    init_process_group,
    resolve_device,
)
from selhn.features import check_same_features, feature_job
from selhn.models import DualEncoder
from selhn.models.registry import create_model, model_class
from selhn.objective import TrainingObjective, make_loss
from selhn.retrieval import evaluate
from selhn.run_dir import RunDirectory, RunLog, check_resumable, rounded, saved_config
from selhn.schedule import Schedule, make_schedule, plan_epoch, steps_per_epoch
from selhn.train_state import TrainState
from selhn.weight_average import WeightAverage


def grad_norm(module: nn.Module) -> Tensor:
    """L2 norm of all gradients of ``module`` (0 if none)."""
    norms = [p.grad.detach().norm() for p in module.parameters() if p.grad is not None]
    return torch.stack(norms).norm() if norms else torch.zeros(())


def train_step(
    network: nn.Module,
    objective: TrainingObjective,
    model: DualEncoder,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    grad_clip: float,
) -> dict[str, Tensor]:
    """One optimisation step; returns detached 0-d tensors to log.

    ``network`` is ``objective`` or its DistributedDataParallel wrapper, whose backward pass
    averages the gradients over ranks. With a gathering loss every rank computes the loss of the
    global batch; the all-gather's backward pass sums each rank's gradient into the rank that
    owns the embedding, and DDP's average then gives every rank exactly the gradient of one
    process on the whole batch. Clipping uses one norm over every parameter, a learned loss
    temperature included, like ``clip_grad_norm_``.
    """
    loss, stats = network(batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    norm_img, norm_txt = grad_norm(model.image_encoder), grad_norm(model.text_encoder)
    if grad_clip > 0:
        norm_loss = grad_norm(objective.losses)
        total = torch.sqrt(norm_img**2 + norm_txt**2 + norm_loss**2)
        scale = torch.clamp(grad_clip / (total + 1e-6), max=1.0)
        for p in objective.parameters():
            if p.grad is not None:
                p.grad.mul_(scale)
    optimizer.step()
    return {"loss": loss.detach(), "grad_norm_image": norm_img, "grad_norm_text": norm_txt, **stats}


def _start_model(
    config: Config, data: Path, run: RunDirectory, resume: bool
) -> tuple[DualEncoder, TextVocabulary, dict[str, Any] | None]:
    """(model, vocabulary, saved training state or None) on the CPU: ``RUN/last``, or a new
    model for the configured architecture, sized from the training split."""
    if resume:
        model, vocab, meta, state = run.load_last()
        check_resumable(saved_config(run.last, meta), config, run.last)
        if "image_features" in meta and not isinstance(model.reads(), ImageFiles):
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


def _epoch_loader(
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


def _check_parallel_settings(config: Config, device: torch.device, job: Distributed) -> None:
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


def _wrap(objective: TrainingObjective, device: torch.device, job: Distributed) -> nn.Module:
    """DDP under torchrun. DDP takes the parameters that learn when it is made, so it is made
    again when that set changes (the backbone starts to learn, the objective changes)."""
    if not job.enabled:
        return objective
    return DistributedDataParallel(
        objective, device_ids=[device] if device.type == "cuda" else None
    )


def _mean_over_ranks(values: dict[str, Tensor], job: Distributed) -> dict[str, float]:
    """Logged values averaged over ranks (one collective), as floats."""
    stacked = torch.stack([v.detach().float() for v in values.values()])
    if job.enabled:
        dist.all_reduce(stacked)
        stacked /= job.world_size
    return dict(zip(values, stacked.tolist(), strict=True))


def _progress(loader: DataLoader, epoch: int, enabled: bool):
    if not enabled:
        return loader
    from tqdm import tqdm

    return tqdm(loader, desc=f"epoch {epoch + 1}", leave=False, dynamic_ncols=True)


def train(
    config: Config, data: str | Path, run: str | Path, resume: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Train the configured model on a data directory (region features, or image files for a
    model with a backbone); return the best dev rSum and epoch.

    Under ``torchrun`` this joins the job's process group (unless the caller already did) and
    trains with DistributedDataParallel; rank 0 evaluates and writes the run directory.
    """
    job = from_environment()
    choices = choose_for_data(config, data)
    config.validate()
    if job.is_main:
        for line in choices:
            print(line, flush=True)
    device = device_for(job, resolve_device(config.train.device))
    created = init_process_group(job, device)
    _check_parallel_settings(config, device, job)
    run = RunDirectory(run)
    try:
        if job.is_main:  # the only writer of the run directory
            run.lock()
            for name in run.remove_temporary():
                print(f"removed {run.path / 'checkpoints' / name}, left by an interrupted write")
        return _train(config, Path(data), run, resume, progress, job, device)
    finally:
        run.unlock()
        if created:
            dist.destroy_process_group()


def _train(
    config: Config,
    data: Path,
    run: RunDirectory,
    resume: bool,
    progress: bool,
    job: Distributed,
    device: torch.device,
) -> dict[str, Any]:
    tc, lc, dc = config.train, config.loss, config.data
    # Rank 0 reads the start and sends it to every rank, so only rank 0 needs to see the run
    # directory (and a resume works with any number of processes).
    model, vocab, saved = job.from_main(
        _start_model(config, data, run, resume) if job.is_main else None
    )
    model = model.to(device)
    reads = model.reads()
    train_split: Split = reads.open(data, "train")
    dev_split: Split = reads.open(data, dc.dev_split)
    if job.enabled and tc.sync_batchnorm:
        nn.SyncBatchNorm.convert_sync_batchnorm(model)
    losses = {
        lc.name: make_loss(lc.name, lc.margin, lc.epsilon, lc.temperature, tc.global_negatives)
    }
    if lc.warmup_epochs and "all" not in losses:
        losses["all"] = make_loss("all", lc.margin, lc.epsilon, gather=tc.global_negatives)
    amp = torch.bfloat16 if tc.amp == "bf16" else None
    network_model = torch.compile(model) if tc.compile else model
    objective = TrainingObjective(network_model, losses, lc.mask_same_image, amp).to(device)
    groups = objective.param_groups(
        model, tc.pretrained_lr_scale, tc.backbone_lr_scale, tc.stage_lr_scale
    )
    optimizer = torch.optim.AdamW(groups, lr=tc.lr, weight_decay=tc.weight_decay)
    state = TrainState(objective, optimizer, average=_weight_average(model, optimizer, tc))
    if saved is not None:
        state.load_state_dict(saved)
    token_prob = dc.token_prob if model.augments_text else 0.0
    augmentation = Augmentation(dc.region_drop, token_prob, crop_scale=dc.crop_scale)
    dataset = PairDataset(train_split, vocab, augmentation, tc.seed)
    schedule = make_schedule(tc, len(dataset), job.world_size)
    provenance = {  # which data made the model, recorded in every checkpoint
        "train_data": fingerprint(train_split),
        "image_features": (
            feature_job(data) if isinstance(reads, RegionFeatures | TrunkActivations) else None
        ),
    }
    warnings = (
        caption_warnings(train_split.captions, train_split.captions_path, vocab)
        if job.is_main
        else []
    )
    step = state.epoch * schedule.steps_per_epoch
    log = run.start(config, state.epoch, resume_step=step) if job.is_main else None
    show_progress = progress and job.is_main and sys.stderr.isatty()
    if job.is_main:
        summary = _summary(model, device, job, train_split, dev_split, schedule, config, run, state)
        print(summary, flush=True)
        for warning in warnings:
            print(f"warning: {warning}", flush=True)
    if saved is not None:  # a resume: the patience may have changed since the run stopped
        state.stopped = _stops(state, schedule)
        if job.is_main and (state.stopped or state.epoch >= schedule.epochs):
            print(_nothing_to_resume(state, schedule), flush=True)
    network = None
    clock = _EpochClock(schedule.epochs)
    try:
        for epoch in range(state.epoch, schedule.epochs):
            if state.stopped:
                break
            plan = plan_epoch(tc, lc, epoch)
            changed = model.set_backbone_trainable(plan.backbone_trainable)
            changed |= objective.use(plan.objective)
            if changed or network is None:
                network = _wrap(objective, device, job)
            model.train()
            phase = model.backbone_phase()
            loader = _epoch_loader(dataset, tc.batch_size, tc.seed, epoch, dc.num_workers, job)
            for batch in _progress(loader, epoch, show_progress):
                if lc.mask_same_image:  # captions of one image: encode the image once
                    batch = batch.one_row_per_image()
                lr = schedule.lr(step)
                for group in state.optimizer.param_groups:
                    group["lr"] = lr * group.get("lr_scale", 1.0)
                values = train_step(
                    network, objective, model, state.optimizer, batch.to(device), tc.grad_clip
                )
                if state.average is not None:
                    state.average.update()
                if step % tc.log_every == 0:  # .item() synchronises with the device
                    record = {"type": "step", "epoch": epoch, "step": step, "lr": lr}
                    record |= {"objective": plan.objective, **phase}
                    record |= _mean_over_ranks(values, job)
                    if job.is_main:
                        log.write(record)
                step += 1
            best = None
            if job.is_main:
                last_step = step - 1  # of this epoch: the evaluation is logged with it
                with state.average.applied() if state.average else nullcontext():
                    best = _finish_epoch(
                        run, log, model, vocab, dev_split, config, state, clock, last_step,
                        provenance, schedule,
                    )  # fmt: skip
            # the others wait for rank 0
            state.best_rsum, state.best_epoch, state.stopped = job.from_main(best)
            state.epoch = epoch + 1
    finally:
        if job.is_main:
            log.close()
    return {"best_epoch": state.best_epoch, "best_rsum": state.best_rsum, "epochs": state.epoch}


def _stops(state: TrainState, schedule: Schedule) -> bool:
    """Whether the run has gone ``schedule.patience`` epochs without a better dev rSum."""
    waited = state.epoch - 1 - state.best_epoch
    return bool(schedule.patience) and state.epoch > 0 and waited >= schedule.patience


def _nothing_to_resume(state: TrainState, schedule: Schedule) -> str:
    """Why a resumed run trains no further epoch, and what would let it."""
    best = f"best dev rSum {state.best_rsum:.1f} at epoch {state.best_epoch + 1}"
    if state.stopped:
        waited = state.epoch - 1 - state.best_epoch
        return (
            f"nothing to train: the run stopped early after epoch {state.epoch} ({waited} epochs "
            f"without a better dev rSum, train.patience={schedule.patience}; {best}); resume "
            f"with --train.patience above {waited} (or 0: never stop) to go on"
        )
    return (
        f"nothing to train: all {schedule.epochs} epochs are done ({best}); resume with "
        f"--epochs above {schedule.epochs} to go on"
    )


def _weight_average(
    model: DualEncoder, optimizer: torch.optim.Optimizer, tc: TrainConfig
) -> WeightAverage | None:
    """The moving average of the model's weights that the optimiser updates, if configured."""
    if not tc.weight_average:
        return None
    updated = {id(p) for group in optimizer.param_groups for p in group["params"]}
    learning = [p for p in model.parameters() if id(p) in updated]
    return WeightAverage(learning, tc.weight_average)


class _EpochClock:
    """Seconds per epoch (training and evaluation) and an estimate of the time left."""

    def __init__(self, epochs: int) -> None:
        self.epochs, self.start, self.done, self.total = epochs, time.perf_counter(), 0, 0.0

    def lap(self, epoch: int) -> str:
        """The time of the epoch that just ended, and the time left at the mean epoch time."""
        now = time.perf_counter()
        seconds, self.start, self.done = now - self.start, now, self.done + 1
        self.total += seconds
        left = self.total / self.done * (self.epochs - epoch - 1)
        return f"{seconds:.0f} s" + (f", about {_duration(left)} left" if left else "")


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def _summary(
    model: DualEncoder,
    device: torch.device,
    job: Distributed,
    train_split: Split,
    dev_split: Split,
    schedule: Schedule,
    config: Config,
    run: RunDirectory,
    state: TrainState,
) -> str:
    """What a run is about to do, printed at its start."""
    tc = config.train

    def count(module: nn.Module) -> str:
        total = sum(p.numel() for p in module.parameters())
        learning = sum(p.numel() for p in module.parameters() if p.requires_grad)
        return f"{total:,}" + (f" ({learning:,} learn)" if learning != total else "")

    processes = f", {job.world_size} processes" if job.enabled else ""
    start = f"resuming at epoch {state.epoch + 1}" if state.epoch else "new run"
    return "\n".join([
        f"training {model.architecture} on {device}{processes}",
        f"  data   train {train_split.num_images} images, {len(train_split.captions)} captions;"
        f" {dev_split.name} {dev_split.num_images} images, {len(dev_split.captions)} captions",
        f"  steps  {schedule.steps_per_epoch} per epoch (global batch {tc.batch_size}),"
        f" {schedule.total_steps} in {schedule.epochs} epochs",
        f"  plan   {schedule.describe()}",
        *(f"         {why}" for why in schedule.chosen),
        *_averaged(tc),
        f"  model  image encoder {count(model.image_encoder)} parameters, text encoder"
        f" {count(model.text_encoder)}; loss {config.loss.name}",
        f"  run    {run.path} ({start})",
    ])  # fmt: skip


def _averaged(tc: TrainConfig) -> list[str]:
    if not tc.weight_average:
        return []
    return [
        f"  eval   a moving average of the weights (decay {tc.weight_average:g} per step) is"
        " evaluated and saved"
    ]


def _finish_epoch(
    run: RunDirectory,
    log: RunLog,
    model: DualEncoder,
    vocab: TextVocabulary,
    dev_split: Split,
    config: Config,
    state: TrainState,
    clock: _EpochClock,
    step: int,
    provenance: dict[str, Any],
    schedule: Schedule,
) -> tuple[float, int, bool]:
    """Evaluate on the dev split, log, checkpoint; return the (possibly new) best rSum and its
    epoch, and whether training stops early here."""
    epoch = state.epoch
    device = next(model.parameters()).device
    metrics = rounded(
        evaluate(
            model, dev_split, vocab, config.train.eval_batch_size, device, config.data.num_workers
        )
    )  # as logged, so the checkpoint, the log and the choice of the best agree
    log.write({"type": "eval", "epoch": epoch, "step": step, "split": dev_split.name, **metrics})
    is_best = state.finish_epoch(metrics["rsum"])
    waited = state.epoch - 1 - state.best_epoch  # epochs since the best one
    state.stopped = _stops(state, schedule)
    meta = {
        "config": config.to_dict(),
        "epoch": epoch,
        "dev_metrics": metrics,
        **provenance,
        "finished": state.stopped or state.epoch == schedule.epochs,
    }
    run.save_epoch(epoch, model, vocab, meta, state.state_dict(), is_best)
    print(
        f"epoch {epoch + 1}/{schedule.epochs}  dev rSum {metrics['rsum']:.1f}  "
        f"(best {state.best_rsum:.1f} at epoch {state.best_epoch + 1})  {clock.lap(epoch)}",
        flush=True,
    )
    if state.stopped:
        print(
            f"stopping early: dev rSum has not improved for {waited} epochs (best "
            f"{state.best_rsum:.1f} at epoch {state.best_epoch + 1}; train.patience sets this)",
            flush=True,
        )
    return state.best_rsum, state.best_epoch, state.stopped
