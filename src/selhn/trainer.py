"""The training loop: one epoch over the captions, dev evaluation, atomic checkpoints, resume.

A run directory holds ``config.yaml`` (the resolved configuration), ``log.jsonl`` (one JSON record
per logged step and per evaluation), ``checkpoints/epoch-NNN/`` model directories and the symlinks
``last`` and ``best`` that point at them. Everything random is keyed by (seed, epoch), so a resumed
run repeats the uninterrupted run exactly.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from selhn.checkpoint import load_extra, load_model, point, save_model
from selhn.config import Config, ModelConfig, save_config
from selhn.data.collate import Augmentation, Batch, PairDataset
from selhn.data.glove import init_from_glove
from selhn.data.images import ImagePairDataset, ImageSplit, open_data_split
from selhn.data.precomp import PrecompSplit
from selhn.data.vocab import TextVocabulary, Vocabulary
from selhn.distributed import (
    SINGLE_PROCESS,
    Distributed,
    average_gradients_,
    device_for,
    from_environment,
    init_process_group,
)
from selhn.evaluation import embedding_metrics
from selhn.losses import (
    AllNegativesLoss,
    HardestNegativeLoss,
    InfoNCELoss,
    SelHNLoss,
    default_vanishing_threshold,
)
from selhn.models import DualEncoder, build_model
from selhn.models.backbones import grid_shape
from selhn.models.image import GridImageEncoder
from selhn.models.registry import model_sizes
from selhn.retrieval import encode_split


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device={name!r} but CUDA is not available")
    return device


def make_loss(
    name: str,
    margin: float = 0.2,
    epsilon: float = 0.01,
    temperature: float = 0.07,
    gather: bool = False,
) -> nn.Module:
    """The loss named by ``loss.name``; the triplet losses measure vanishing at ``epsilon``.
    With ``gather`` the loss mines over the batches of every rank of the process group."""
    threshold = default_vanishing_threshold(epsilon)
    if name == "selhn":
        return SelHNLoss(margin, epsilon, gather_distributed=gather)
    if name == "hardest":
        return HardestNegativeLoss(margin, threshold, gather_distributed=gather)
    if name == "all":
        return AllNegativesLoss(margin, threshold, gather_distributed=gather)
    if name == "infonce":
        return InfoNCELoss(temperature, gather_distributed=gather)
    raise ValueError(f"loss.name must be selhn, hardest, all or infonce; got {name!r}")


def make_model(config: ModelConfig, vocab_size: int, img_dim: int | None) -> DualEncoder:
    """The configured architecture; a size it does not use must be left at its default.

    ``img_dim``: channels per region of the features; None for a model with a backbone."""
    takes = model_sizes(config.architecture)
    sizes = {}
    for key, value in vars(config).items():
        if key in ("architecture", "word_vectors", "backbone_weights"):  # not sizes
            continue
        if key in takes:
            sizes[key] = value
        elif value != getattr(ModelConfig, key):
            raise ValueError(
                f"model.{key} does not apply to model.architecture={config.architecture}"
            )
    return build_model(config.architecture, vocab_size=vocab_size, img_dim=img_dim, **sizes)


def make_text_vocabulary(config: Config, captions: list[str]) -> TextVocabulary:
    """The transformer's tokenizer, ``data.vocab``, or a vocabulary built from ``captions``."""
    if config.model.text_encoder == "transformer":
        from selhn.models.transformer import WordPieceTokenizer

        return WordPieceTokenizer(config.model.text_model)
    if config.data.vocab:
        return Vocabulary.load(config.data.vocab)
    return Vocabulary.build(captions, config.data.min_word_count)


def init_pretrained(model: DualEncoder, config: ModelConfig, vocab: TextVocabulary) -> None:
    """Load the pretrained weights of the backbone and of the text transformer, or GloVe word
    vectors, into a new model."""
    if config.backbone is not None:
        model.image_encoder.backbone.load_pretrained(config.backbone_weights)
    if config.text_encoder == "transformer":
        model.text_encoder.load_pretrained()
    if config.word_vectors == "glove":
        found = init_from_glove(model.text_encoder.embed, vocab)
        print(f"initialised {found} of {len(vocab)} words from GloVe 6B 50-d", flush=True)


def param_groups(
    model: DualEncoder,
    loss_fn: nn.Module,
    pretrained_lr_scale: float,
    backbone_lr_scale: float = 0.01,
) -> list:
    """AdamW groups: the model; a pretrained text transformer at ``pretrained_lr_scale`` times the
    learning rate (VSE-infinity's 0.1); an image backbone at ``backbone_lr_scale`` times it
    (VSE-infinity's 0.01); a learned loss temperature without weight decay."""
    pretrained = [
        (list(part.parameters()), scale)
        for part, scale in [
            (getattr(model.text_encoder, "transformer", None), pretrained_lr_scale),
            (getattr(model.image_encoder, "backbone", None), backbone_lr_scale),
        ]
        if part is not None
    ]
    taken = {id(p) for params, _ in pretrained for p in params}
    groups = [{"params": [p for p in model.parameters() if id(p) not in taken], "lr_scale": 1.0}]
    groups += [{"params": params, "lr_scale": scale} for params, scale in pretrained]
    if list(loss_fn.parameters()):
        groups.append({"params": list(loss_fn.parameters()), "lr_scale": 1.0, "weight_decay": 0.0})
    return groups


def grad_norm(module: nn.Module) -> Tensor:
    """L2 norm of all gradients of ``module`` (0 if none)."""
    norms = [p.grad.detach().norm() for p in module.parameters() if p.grad is not None]
    return torch.stack(norms).norm() if norms else torch.zeros(())


@dataclass
class StepContext:
    """What a training step needs besides the batch.

    Under torchrun, ``network`` is the DistributedDataParallel wrapper of ``model`` (whose
    backward pass averages the gradients over ranks) and ``job`` says which rank this is. A loss
    made with ``gather`` mines over the batches of all ranks together.
    """

    model: DualEncoder
    optimizer: torch.optim.Optimizer
    loss_fn: nn.Module
    grad_clip: float
    mask_same_image: bool
    autocast: Callable[[], Any] = nullcontext
    network: nn.Module | None = None
    job: Distributed = SINGLE_PROCESS


def train_step(batch: Batch, ctx: StepContext) -> dict[str, Tensor]:
    """One optimisation step; returns detached 0-d tensors to log.

    A batch whose captions share image rows (``batch.caption_to_image``) encodes each image once.
    With a gathering loss every rank computes the loss of the global batch; the all-gather's
    backward pass sums each rank's gradient into the rank that owns the embedding, and DDP's
    average then gives every rank exactly the gradient of one process on the whole batch.
    """
    model = ctx.model
    network = ctx.network or model
    with ctx.autocast():
        img_emb, txt_emb = network(
            batch.features, batch.feature_lengths, batch.tokens, batch.token_lengths
        )
    ids = batch.image_ids if ctx.mask_same_image else None
    loss = ctx.loss_fn(img_emb, txt_emb, ids, batch.caption_to_image)
    ctx.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if ctx.job.enabled:
        average_gradients_(ctx.loss_fn)  # DDP averages the model's, not the loss's
    norm_img, norm_txt = grad_norm(model.image_encoder), grad_norm(model.text_encoder)
    if ctx.grad_clip > 0:  # one norm over all parameters, like clip_grad_norm_
        total = torch.sqrt(norm_img**2 + norm_txt**2)
        scale = torch.clamp(ctx.grad_clip / (total + 1e-6), max=1.0)
        for p in model.parameters():
            if p.grad is not None:
                p.grad.mul_(scale)
    ctx.optimizer.step()
    return {
        "loss": loss.detach(),
        "grad_norm_image": norm_img,
        "grad_norm_text": norm_txt,
        **ctx.loss_fn.stats,
    }


def evaluate(
    model: DualEncoder,
    split: PrecompSplit | ImageSplit,
    vocab: TextVocabulary,
    batch_size: int,
    device: torch.device,
    num_workers: int = 0,
) -> dict[str, float]:
    img_emb, txt_emb = encode_split(model, split, vocab, batch_size, device, num_workers)
    return embedding_metrics(img_emb, txt_emb, caption_to_image=split.caption_to_image())


class RunLog:
    """Appends JSON records to ``log.jsonl``; on resume, drops records of unfinished epochs."""

    def __init__(self, path: Path, keep_before_epoch: int) -> None:
        self.path = path
        if path.exists():
            kept = [
                line
                for line in path.read_text().splitlines()
                if json.loads(line)["epoch"] < keep_before_epoch
            ]
            path.write_text("".join(line + "\n" for line in kept))
        self.file = path.open("a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def read_log(run: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(step records, eval records) of a run's ``log.jsonl``."""
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return [r for r in records if r["type"] == "step"], [r for r in records if r["type"] == "eval"]


def _progress(loader: DataLoader, epoch: int, enabled: bool):
    if not enabled:
        return loader
    from tqdm import tqdm

    return tqdm(loader, desc=f"epoch {epoch + 1}", leave=False, dynamic_ncols=True)


def _save_epoch(
    run: Path,
    model: DualEncoder,
    vocab: TextVocabulary,
    meta: dict[str, Any],
    trainer_state: dict[str, Any],
    is_best: bool,
) -> None:
    """Write checkpoints/epoch-NNN, point ``last`` (and ``best`` if improved) at it, prune."""
    directory = run / "checkpoints" / f"epoch-{meta['epoch']:03d}"
    save_model(directory, model, vocab, meta, extra={"trainer_state": trainer_state})
    if is_best:
        point(run / "best", directory)
    point(run / "last", directory)
    keep = {(run / "last").resolve(), (run / "best").resolve()}
    for old in (run / "checkpoints").glob("epoch-*"):
        if old.resolve() not in keep:
            shutil.rmtree(old)


@dataclass
class _Start:
    """Where a run starts: a fresh model, or the state of ``RUN/last``."""

    model: DualEncoder
    vocab: TextVocabulary
    epoch: int = 0
    best_rsum: float = -math.inf
    best_epoch: int = -1
    trainer_state: dict[str, Any] | None = None


def _start(
    config: Config, run: Path, train_split: PrecompSplit | ImageSplit, resume: bool
) -> _Start:
    """The starting state, on the CPU."""
    if resume:
        last = run / "last"
        if not last.exists():
            raise FileNotFoundError(f"{last}: no checkpoint to resume from")
        model, vocab, meta = load_model(last)
        state = load_extra(last, "trainer_state")
        return _Start(
            model, vocab, meta["epoch"] + 1, state["best_rsum"], state["best_epoch"], state
        )
    if (run / "last").exists():
        raise FileExistsError(f"{run} already holds a run; pass --resume or another --out")
    vocab = make_text_vocabulary(config, train_split.captions)
    torch.manual_seed(config.train.seed)
    img_dim = train_split.feature_dim if isinstance(train_split, PrecompSplit) else None
    model = make_model(config.model, len(vocab), img_dim)
    init_pretrained(model, config.model, vocab)
    return _Start(model, vocab)


def _shared_start(
    config: Config,
    run: Path,
    train_split: PrecompSplit | ImageSplit,
    resume: bool,
    job: Distributed,
) -> _Start:
    """Rank 0 reads the starting state and sends it to every rank, so only rank 0 needs to see
    the run directory (and a resume works with any number of processes)."""
    return job.from_main(_start(config, run, train_split, resume) if job.is_main else None)


def _epoch_loader(
    dataset: PairDataset,
    batch_size: int,
    seed: int,
    epoch: int,
    workers: int,
    job: Distributed,
) -> DataLoader:
    """This rank's batches of one epoch; ``batch_size`` is the global batch, split over ranks.

    Under torchrun a DistributedSampler shuffles by (seed, epoch) and drops the last
    ``len % world_size`` pairs, so no pair is repeated to even out the ranks.
    """
    dataset.epoch = epoch
    per_rank = batch_size // job.world_size
    if job.enabled:
        sampler = DistributedSampler(dataset, job.world_size, job.rank, True, seed, drop_last=True)
        sampler.set_epoch(epoch)
        order: dict[str, Any] = {"sampler": sampler}
        pairs = len(sampler)
    else:
        generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = {"shuffle": True, "generator": generator}
        pairs = len(dataset)
    return DataLoader(
        dataset,
        per_rank,
        collate_fn=dataset.collate,
        num_workers=workers,
        drop_last=pairs % per_rank == 1,  # a lone pair has no negatives
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


def _wrap(model: DualEncoder, config: Config, device: torch.device, job: Distributed) -> nn.Module:
    """The module the training step calls: DDP under torchrun, compiled if asked; ``model``
    itself stays the unwrapped module that is evaluated and saved. DDP takes the parameters that
    learn when it is made, so it is made again when the backbone starts to learn."""
    network: nn.Module = model
    if job.enabled:
        network = DistributedDataParallel(
            model, device_ids=[device] if device.type == "cuda" else None
        )
    if config.train.compile:
        network = torch.compile(network)
    return network


def _mean_over_ranks(values: dict[str, Tensor], job: Distributed) -> dict[str, float]:
    """Logged values averaged over ranks (one collective), as floats."""
    stacked = torch.stack([v.detach().float() for v in values.values()])
    if job.enabled:
        dist.all_reduce(stacked)
        stacked /= job.world_size
    return dict(zip(values, stacked.tolist(), strict=True))


def train(
    config: Config, data: str | Path, run: str | Path, resume: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Train the configured model on a precomp data set; return the best dev rSum and epoch.

    Under ``torchrun`` this joins the job's process group (unless the caller already did) and
    trains with DistributedDataParallel; rank 0 evaluates and writes the run directory.
    """
    config.validate()
    job = from_environment()
    device = device_for(job, resolve_device(config.train.device))
    created = init_process_group(job, device)
    try:
        return _train(config, Path(data), Path(run), resume, progress, job, device)
    finally:
        if created:
            dist.destroy_process_group()


def _train(
    config: Config,
    data: Path,
    run: Path,
    resume: bool,
    progress: bool,
    job: Distributed,
    device: torch.device,
) -> dict[str, Any]:
    tc, lc = config.train, config.loss
    _check_parallel_settings(config, device, job)
    image_size = config.model.image_size if config.model.backbone else None
    train_split = open_data_split(data, "train", image_size)
    dev_split = open_data_split(data, config.data.dev_split, image_size)
    start = _shared_start(config, run, train_split, resume, job)
    model, vocab, best_rsum, best_epoch = (
        start.model.to(device),
        start.vocab,
        start.best_rsum,
        start.best_epoch,
    )
    if isinstance(train_split, PrecompSplit) and model.sizes.img_dim != train_split.feature_dim:
        raise ValueError(
            f"{train_split.features_path}: {train_split.feature_dim} channels per region, but "
            f"the model expects {model.sizes.img_dim}"
        )
    if job.is_main:
        run.mkdir(parents=True, exist_ok=True)
        save_config(config, run / "config.yaml")

    gather = tc.global_negatives
    loss_fn = make_loss(lc.name, lc.margin, lc.epsilon, lc.temperature, gather).to(device)
    warmup_loss = make_loss("all", lc.margin, lc.epsilon, gather=gather)
    groups = param_groups(model, loss_fn, tc.pretrained_lr_scale, tc.backbone_lr_scale)
    optimizer = torch.optim.AdamW(groups, lr=tc.lr, weight_decay=tc.weight_decay)
    if start.trainer_state is not None:
        optimizer.load_state_dict(start.trainer_state["optimizer"])
        loss_fn.load_state_dict(start.trainer_state["loss"])
    if job.enabled and tc.sync_batchnorm:
        nn.SyncBatchNorm.convert_sync_batchnorm(model)
    dataset = _training_pairs(train_split, model, vocab, config)
    log = RunLog(run / "log.jsonl", keep_before_epoch=start.epoch) if job.is_main else None
    autocast = (
        (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if tc.amp == "bf16" else nullcontext
    )
    show_progress = progress and job.is_main and sys.stderr.isatty()
    workers = config.data.num_workers
    step = start.epoch * len(_epoch_loader(dataset, tc.batch_size, tc.seed, 0, 0, job))
    network = None
    try:
        for epoch in range(start.epoch, tc.epochs):
            lr = tc.lr * (tc.lr_decay if epoch >= tc.lr_decay_epoch else 1.0)
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            if _set_backbone_phase(model, epoch, tc.backbone_frozen_epochs) or network is None:
                network = _wrap(model, config, device, job)
            warmup = epoch < lc.warmup_epochs
            objective = "all" if warmup else lc.name
            ctx = StepContext(
                model,
                optimizer,
                warmup_loss if warmup else loss_fn,
                tc.grad_clip,
                lc.mask_same_image,
                autocast,
                network,
                job,
            )
            loader = _epoch_loader(dataset, tc.batch_size, tc.seed, epoch, workers, job)
            model.train()
            phase = _backbone_phase(model)
            for batch in _progress(loader, epoch, show_progress):
                if lc.mask_same_image:  # captions of one image: encode the image once
                    batch = batch.one_row_per_image()
                values = train_step(batch.to(device), ctx)
                if step % tc.log_every == 0:  # .item() synchronises with the device
                    record = {"type": "step", "epoch": epoch, "step": step, "lr": lr}
                    record["objective"] = objective
                    record |= phase
                    record |= _mean_over_ranks(values, job)
                    if log is not None:
                        log.write(record)
                step += 1
            if log is not None:
                best = _finish_epoch(run, model, vocab, dev_split, config, epoch, optimizer,
                                     loss_fn, log, (best_rsum, best_epoch))  # fmt: skip
            else:
                best = None
            best_rsum, best_epoch = job.from_main(best)  # the other ranks wait for rank 0 here
    finally:
        if log is not None:
            log.close()
    return {"best_epoch": best_epoch, "best_rsum": best_rsum}


def _training_pairs(
    split: PrecompSplit | ImageSplit, model: DualEncoder, vocab: TextVocabulary, config: Config
) -> PairDataset:
    """The training pairs of the split, with the configured augmentation: regions, or images
    and the grid cells of the model's backbone."""
    dc = config.data
    augmentation = Augmentation(dc.region_drop, dc.token_prob, crop_scale=dc.crop_scale)
    if isinstance(split, PrecompSplit):
        return PairDataset(split, vocab, augmentation, config.train.seed)
    cells, _ = grid_shape(model.image_encoder.backbone, split.image_size)
    return ImagePairDataset(split, vocab, augmentation, config.train.seed, cells)


def _set_backbone_phase(model: DualEncoder, epoch: int, frozen_epochs: int) -> bool:
    """Let the backbone (if any) learn from epoch ``frozen_epochs`` on; True if that changed."""
    encoder = model.image_encoder
    if not isinstance(encoder, GridImageEncoder):
        return False
    trainable = epoch >= frozen_epochs
    changed = trainable != encoder.backbone_trainable
    encoder.set_backbone_trainable(trainable)
    return changed


def _backbone_phase(model: DualEncoder) -> dict[str, str]:
    """``{"backbone": "frozen" | "learning"}`` for the log of a model with a backbone."""
    encoder = model.image_encoder
    if not isinstance(encoder, GridImageEncoder):
        return {}
    return {"backbone": "learning" if encoder.backbone_trainable else "frozen"}


def _finish_epoch(
    run: Path,
    model: DualEncoder,
    vocab: TextVocabulary,
    dev_split: PrecompSplit | ImageSplit,
    config: Config,
    epoch: int,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    log: RunLog,
    best: tuple[float, int],
) -> tuple[float, int]:
    """Evaluate on the dev split, log, checkpoint; return the (possibly new) best rSum, epoch."""
    device = next(model.parameters()).device
    metrics = evaluate(
        model, dev_split, vocab, config.train.eval_batch_size, device, config.data.num_workers
    )
    log.write({"type": "eval", "epoch": epoch, "split": dev_split.name, **metrics})
    is_best = metrics["rsum"] > best[0]
    best_rsum, best_epoch = (metrics["rsum"], epoch) if is_best else best
    meta = {"config": config.to_dict(), "epoch": epoch, "dev_metrics": metrics}
    trainer_state = {
        "optimizer": optimizer.state_dict(),
        "loss": loss_fn.state_dict(),
        "best_rsum": best_rsum,
        "best_epoch": best_epoch,
    }
    _save_epoch(run, model, vocab, meta, trainer_state, is_best)
    print(
        f"epoch {epoch + 1}/{config.train.epochs}  dev rSum {metrics['rsum']:.1f}  "
        f"(best {best_rsum:.1f} at epoch {best_epoch + 1})",
        flush=True,
    )
    return best_rsum, best_epoch
