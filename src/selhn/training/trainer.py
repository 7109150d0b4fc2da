"""The training loop: one epoch over the captions, dev evaluation, atomic checkpoints, resume.

The loop receives a resolved configuration (``selhn.config.resolve``) and decides nothing: the
schedule says what each step and epoch do. Everything random is keyed by (seed, epoch), so a
resumed run repeats the uninterrupted run exactly. Under ``torchrun`` every rank trains its
share of each batch with DistributedDataParallel; rank 0 evaluates and writes the run directory
(``run_dir``).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from selhn.config.schema import Config
from selhn.data.augment import Augmentation
from selhn.data.batch import Batch
from selhn.data.caption_checks import caption_warnings
from selhn.data.datasets import PairDataset
from selhn.data.facts import check_split
from selhn.data.inputs import Split
from selhn.data.vocab import TextVocabulary
from selhn.evaluation.evaluate import evaluate
from selhn.models import DualEncoder
from selhn.training import report
from selhn.training.objective import TrainingObjective
from selhn.training.run_dir import RunDirectory, RunLog, rounded
from selhn.training.schedule import Schedule, make_schedule, plan_epoch
from selhn.training.setup import (
    check_parallel_settings,
    epoch_loader,
    make_objective,
    make_state,
    mean_over_ranks,
    provenance,
    start_model,
    wrap,
)
from selhn.training.state import TrainState
from selhn.utils.distributed import (
    Distributed,
    device_for,
    from_environment,
    process_group,
    resolve_device,
)
from selhn.utils.progress import tracked


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


def train(
    config: Config, data: str | Path, run: str | Path, resume: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Train the configured model on a data directory (region features, or image files for a
    model with a backbone); return the best dev rSum and epoch.

    ``config`` must be resolved (``selhn.config.resolve``: no schedule key left to the data).
    Under ``torchrun`` this joins the job's process group (unless the caller already did) and
    trains with DistributedDataParallel; rank 0 evaluates and writes the run directory.
    """
    check_split(data, config.data.dev_split)
    if config.unresolved():
        raise ValueError(
            f"train needs a resolved configuration; {', '.join(config.unresolved())} still "
            "wait for the data (resolve it with selhn.config.resolve.resolve)"
        )
    config.validate()
    job = from_environment()
    device = device_for(job, resolve_device(config.train.device))
    run_dir = RunDirectory(run)
    with process_group(job, device):
        check_parallel_settings(config, device, job)
        try:
            if job.is_main:  # the only writer of the run directory
                run_dir.lock()
                for name in run_dir.remove_temporary():
                    left = run_dir.path / "checkpoints" / name
                    print(f"removed {left}, left by an interrupted write")
            return _Run.start(config, Path(data), run_dir, resume, job, device).train(progress)
        finally:
            run_dir.unlock()


@dataclass
class _Run:
    """A run in progress: what its epochs read and write."""

    config: Config
    run: RunDirectory
    job: Distributed
    device: torch.device
    model: DualEncoder
    vocab: TextVocabulary
    objective: TrainingObjective
    state: TrainState
    dataset: PairDataset
    dev_split: Split
    schedule: Schedule
    provenance: dict[str, Any]
    log: RunLog | None = None  # rank 0's

    @classmethod
    def start(
        cls,
        config: Config,
        data: Path,
        run: RunDirectory,
        resume: bool,
        job: Distributed,
        device: torch.device,
    ) -> _Run:
        tc, dc = config.train, config.data
        # Rank 0 reads the start and sends it to every rank, so only rank 0 needs to see the
        # run directory (and a resume works with any number of processes).
        model, vocab, saved = job.from_main(
            start_model(config, data, run, resume) if job.is_main else None
        )
        model = model.to(device)
        train_split = model.reads().open(data, "train")
        dev_split = model.reads().open(data, dc.dev_split)
        if job.enabled and tc.sync_batchnorm:
            nn.SyncBatchNorm.convert_sync_batchnorm(model)
        objective = make_objective(model, config, device, train_split, job.is_main)
        state = make_state(objective, model, config)
        if saved is not None:
            state.load_state_dict(saved)
        token_prob = dc.token_prob if model.augments_text else 0.0
        augmentation = Augmentation(dc.region_drop, token_prob, crop_scale=dc.crop_scale)
        dataset = PairDataset(train_split, vocab, augmentation, tc.seed)
        schedule = make_schedule(tc, len(dataset), job.world_size)
        made = provenance(model, data, train_split)
        self = cls(config, run, job, device, model, vocab, objective, state, dataset, dev_split,
                   schedule, made)  # fmt: skip
        if saved is not None:  # a resume: the patience may have changed since the run stopped
            state.stopped = self.stops()
        if job.is_main:
            step = state.epoch * schedule.steps_per_epoch
            self.log = run.start(config, state.epoch, resume_step=step)
            splits = (train_split, dev_split)
            print(report.summary(model, device, job, splits, schedule, config, str(run.path),
                                 state), flush=True)  # fmt: skip
            for warning in caption_warnings(train_split.captions, train_split.captions_path, vocab):
                print(f"warning: {warning}", flush=True)
            if saved is not None and (state.stopped or state.epoch >= schedule.epochs):
                print(report.nothing_to_resume(state, schedule), flush=True)
        return self

    def stops(self) -> bool:
        """Whether the run has gone ``patience`` epochs without a better dev rSum."""
        waited = self.state.epoch - 1 - self.state.best_epoch
        patience = self.schedule.patience
        return bool(patience) and self.state.epoch > 0 and waited >= patience

    def train(self, progress: bool) -> dict[str, Any]:
        state, schedule, tc = self.state, self.schedule, self.config.train
        step = state.epoch * schedule.steps_per_epoch
        show_progress = progress and self.job.is_main
        clock = report.EpochClock(schedule.epochs, schedule.patience)
        network = None
        try:
            for epoch in range(state.epoch, schedule.epochs):
                if state.stopped:
                    break
                plan = plan_epoch(tc, self.config.loss, epoch)
                changed = self.model.set_backbone_trainable(plan.backbone_trainable)
                changed |= self.objective.use(plan.objective)
                if changed or network is None:
                    network = wrap(self.objective, self.device, self.job)
                step = self._train_epoch(network, epoch, step, plan.objective, show_progress)
                best = None
                if self.job.is_main:
                    with state.average.applied() if state.average else nullcontext():
                        best = self._finish_epoch(step - 1, clock)  # logged with its last step
                # the others wait for rank 0
                state.best_rsum, state.best_epoch, state.stopped = self.job.from_main(best)
                state.epoch = epoch + 1
        finally:
            if self.log is not None:
                self.log.close()
        best = {"best_epoch": state.best_epoch + 1, "best_rsum": state.best_rsum}
        return {**best, "epochs": state.epoch}

    def _train_epoch(
        self, network: nn.Module, epoch: int, step: int, objective: str, show_progress: bool
    ) -> int:
        """Train one epoch from global step ``step``; return the step after it."""
        tc, state = self.config.train, self.state
        self.model.train()
        phase = self.model.backbone_phase()
        workers = self.config.data.num_workers
        loader = epoch_loader(self.dataset, tc.batch_size, tc.seed, epoch, workers, self.job)
        for batch in _progress(loader, epoch, show_progress):
            if self.objective.same_image:  # captions of one image: encode it once
                batch = batch.one_row_per_image()
            lr = self.schedule.lr(step)
            for group in state.optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            values = train_step(network, self.objective, self.model, state.optimizer,
                                batch.to(self.device), tc.grad_clip)  # fmt: skip
            if state.average is not None:
                state.average.update()
            if step % tc.log_every == 0:  # .item() synchronises with the device
                record = {"type": "step", "epoch": epoch + 1, "step": step, "lr": lr}
                record |= {"objective": objective, **phase}
                record |= mean_over_ranks(values, self.job)
                if self.log is not None:
                    self.log.write(record)
            step += 1
        return step

    def _finish_epoch(self, step: int, clock: report.EpochClock) -> tuple[float, int, bool]:
        """Evaluate on the dev split, log, checkpoint; return the (possibly new) best rSum and
        its epoch, and whether training stops early here."""
        state, config = self.state, self.config
        epoch = state.epoch + 1  # its number, as the console, the log and the checkpoint say it
        batch, workers = config.train.eval_batch_size, config.data.num_workers
        dev = evaluate(self.model, self.dev_split, self.vocab, batch, self.device, workers)
        metrics = rounded(dev)  # as logged, so the checkpoint, the log and the best agree
        split = self.dev_split.name
        self.log.write({"type": "eval", "epoch": epoch, "step": step, "split": split, **metrics})
        is_best = state.finish_epoch(metrics["rsum"])
        state.stopped = self.stops()
        meta = {
            "config": config.to_dict(),
            "epoch": epoch,
            "dev_metrics": metrics,
            **self.provenance,
            "finished": state.stopped or state.epoch == self.schedule.epochs,
        }
        self.run.save_epoch(epoch, self.model, self.vocab, meta, state.state_dict(), is_best)
        print(report.epoch_line(state, self.schedule, metrics["rsum"], clock), flush=True)
        if state.stopped:
            print(report.early_stop_line(state), flush=True)
        return state.best_rsum, state.best_epoch, state.stopped


def _progress(loader: DataLoader, epoch: int, enabled: bool):
    return tracked(loader, f"epoch {epoch + 1}", len(loader), "steps", enabled)
