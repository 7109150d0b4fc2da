"""A run directory: ``config.yaml`` (the resolved configuration), ``log.jsonl`` (one JSON record
per logged step and per evaluation), ``checkpoints/epoch-NNN/`` model directories (epochs are
numbered from 1, in the log and the checkpoints' names as on the console), the training
state of the last one beside it (``checkpoints/epoch-NNN.trainer_state.pt``: a model directory
holds only the model) and the symlinks ``last`` and ``best`` that point at them."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from selhn.checkpoint import load_model, load_tensors, point, read_meta, save_model, save_tensors
from selhn.config import upgrade
from selhn.config.schema import Config, save_config
from selhn.data.vocab import TextVocabulary
from selhn.models import DualEncoder
from selhn.training.model_card import model_card
from selhn.utils.extras import require
from selhn.utils.locks import FolderLock
from selhn.utils.textfiles import read_text

STATE = "trainer_state"  # the training state of a checkpoint: epoch-NNN.trainer_state.pt


class RunLog:
    """Appends JSON records to ``log.jsonl``; on resume, keeps only the records of the
    ``epochs_done`` first epochs (a log of selhn 0.1.0, numbered from 0, is renumbered).

    With ``tensorboard`` (a directory) every numeric value of a record is also a TensorBoard
    scalar, tagged ``train/NAME`` for step records and ``SPLIT/NAME`` for evaluations, at the
    record's ``step``; a resume purges the events of unfinished epochs (from ``resume_step`` on).
    """

    def __init__(
        self,
        path: Path,
        epochs_done: int,
        tensorboard: Path | None = None,
        resume_step: int = 0,
    ) -> None:
        self.path = path
        if path.exists():
            kept = [r for r in read_records(path) if r["epoch"] <= epochs_done]
            path.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
        self.file = path.open("a", encoding="utf-8")
        self.events = None
        if tensorboard is not None:
            require("tensorboard", "train.tensorboard=true")
            from torch.utils.tensorboard import SummaryWriter

            self.events = SummaryWriter(str(tensorboard), purge_step=resume_step or None)

    def write(self, record: dict[str, Any]) -> None:
        record = rounded(record)
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.events is not None:
            prefix = "train" if record["type"] == "step" else record["split"]
            for name, value in record.items():
                if isinstance(value, float) and name not in ("step", "epoch"):
                    self.events.add_scalar(f"{prefix}/{name}", value, record["step"])
            self.events.flush()

    def close(self) -> None:
        self.file.close()
        if self.events is not None:
            self.events.close()


def rounded(record: dict[str, Any]) -> dict[str, Any]:
    """Floats to 10 significant digits, so 5e-4 * 0.1 is logged as 5e-05 and 7 / 500 * 100 as 1.4
    (float32 values keep all their digits; metrics stay within 1e-6 of their own)."""
    return {k: float(f"{v:.10g}") if isinstance(v, float) else v for k, v in record.items()}


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a ``log.jsonl``, epochs numbered from 1 (a log of selhn 0.1.0 numbered
    them from 0: its records are renumbered). A last line without its line end is a write that a
    kill cut short: it is left out; any other line that is not a record raises ValueError."""
    lines = read_text(path).split("\n")
    torn = lines.pop()  # "" when the file ends with a line end
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{number}: not a JSON log record ({err})") from None
        if not isinstance(record, dict) or not isinstance(record.get("epoch"), int):
            raise ValueError(f"{path}:{number}: expected a JSON object with an 'epoch'")
        records.append(record)
    if torn:
        print(f"{path}: left out its last line, cut short by an interrupted write", flush=True)
    if any(record["epoch"] == 0 for record in records):
        records = [{**record, "epoch": record["epoch"] + 1} for record in records]
    return records


def read_log(run: str | Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(step records, eval records) of a run's ``log.jsonl``."""
    records = read_records(Path(run) / "log.jsonl")
    return [r for r in records if r["type"] == "step"], [r for r in records if r["type"] == "eval"]


def vanishing_peak(run: Path) -> float | None:
    """The peak over the logged steps of the share of anchors in the vanishing regime (gap below
    the run's epsilon, both directions averaged; the steps of a warm-up loss left out); None
    for a loss that does not measure it."""
    steps, _ = read_log(run)
    shares = [
        (record["vanishing_i2t"] + record["vanishing_t2i"]) / 2
        for record in steps
        if "vanishing_i2t" in record and record["objective"] == steps[-1]["objective"]
    ]
    return max(shares) if shares else None


def run_summary(run: Path) -> str:
    """Best dev rSum, its epoch and the epochs trained, and the peak vanishing share where the
    loss measures it (``vanishing_peak``)."""
    _, evals = read_log(run)
    best = max(evals, key=lambda record: record["rsum"])
    peak = vanishing_peak(run)
    vanishing = f"; vanishing peak {peak:.2f}" if peak is not None else ""
    return (
        f"best dev rSum {best['rsum']:.1f} at epoch {best['epoch']} of "
        f"{evals[-1]['epoch']}{vanishing}"
    )


def saved_config(checkpoint: Path, meta: dict[str, Any]) -> Config:
    """The configuration a checkpoint was trained with (``meta``: its ``config.json``), read as
    this version reads its own (``config.upgrade``)."""
    path = checkpoint / "config.json"
    if not isinstance(meta.get("config"), dict):
        raise ValueError(f"{path}: no training configuration ('config'); not a run's checkpoint")
    return upgrade.saved_config(meta["config"], str(path))


def last_config(run: str | Path) -> tuple[Config, Path]:
    """(the configuration saved in ``RUN/last``, not ``config.yaml``, which may have been edited
    or lost; that checkpoint). Writes nothing."""
    last = RunDirectory(run).last
    if not last.exists():
        raise FileNotFoundError(f"{last}: no checkpoint to resume from")
    return saved_config(last, read_meta(last)), last


class RunDirectory:
    """The files of one training run. ``lock`` makes its writer the only one."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = FolderLock(self.path, "training", "wait for it to end or use another --out")

    def lock(self) -> None:
        """Take ``RUN/.lock`` for this process (``locks.FolderLock``): a run that another live
        process writes is refused with that process's id."""
        self._lock.acquire()

    def unlock(self) -> None:
        self._lock.release()

    def remove_temporary(self) -> list[str]:
        """Clean up after a killed checkpoint write: a checkpoint it had moved aside to replace
        is put back, and its unfinished hidden files and directories in ``checkpoints/`` are
        removed. Returns the names removed."""
        folder = self.path / "checkpoints"
        if not folder.is_dir():
            return []
        for old in folder.glob(".epoch-*.old"):
            final = folder / old.name[1:].removesuffix(".old")
            if not final.exists():
                os.replace(old, final)
        removed = []
        for leftover in folder.glob(".epoch-*"):
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
            removed.append(leftover.name)
        for link in (self.path / ".last.tmp", self.path / ".best.tmp"):
            link.unlink(missing_ok=True)
        return removed

    @property
    def last(self) -> Path:
        return self.path / "last"

    @property
    def best(self) -> Path:
        return self.path / "best"

    def has_checkpoint(self) -> bool:
        return self.last.exists()

    def load_last(self) -> tuple[DualEncoder, TextVocabulary, dict[str, Any], dict[str, Any]]:
        """(model, vocabulary, config.json contents, training state) of ``last``."""
        if not self.last.exists():
            raise FileNotFoundError(f"{self.last}: no checkpoint to resume from")
        model, vocab, meta = load_model(self.last)
        target = self.last.resolve()
        state = target.with_name(f"{target.name}.{STATE}.pt")
        if not state.exists():  # selhn 0.1.0 kept it inside the checkpoint
            state = target / f"{STATE}.pt"
        saved = load_tensors(state, f"the saved {STATE}")
        return model, vocab, meta, upgrade.trainer_state(saved, meta)

    def start(self, config: Config, epochs_done: int, resume_step: int) -> RunLog:
        """Create the directory, write ``config.yaml`` and open the log (with TensorBoard events
        in ``tensorboard/`` if configured)."""
        self.path.mkdir(parents=True, exist_ok=True)
        save_config(config, self.path / "config.yaml")
        events = self.path / "tensorboard" if config.train.tensorboard else None
        return RunLog(self.path / "log.jsonl", epochs_done, events, resume_step)

    def save_epoch(
        self,
        epoch: int,
        model: DualEncoder,
        vocab: TextVocabulary,
        meta: dict[str, Any],
        state: dict[str, Any],
        is_best: bool,
    ) -> None:
        """Write checkpoints/epoch-NNN (``epoch``: its number, from 1; with its model card) and
        its training state, point
        ``last`` (and ``best`` if improved) at it, and prune: only ``last``'s state is kept."""
        folder = self.path / "checkpoints"
        directory = folder / f"epoch-{epoch:03d}"
        save_model(directory, model, vocab, meta, card=lambda saved: model_card(model, saved))
        state_file = folder / f"{directory.name}.{STATE}.pt"
        tmp = folder / f".{state_file.name}.tmp"
        save_tensors(state, tmp)
        os.replace(tmp, state_file)
        if is_best:
            point(self.best, directory)
        point(self.last, directory)
        keep = {self.last.resolve(), self.best.resolve()}
        for old in folder.glob("epoch-*"):
            if old.is_dir() and old.resolve() not in keep:
                shutil.rmtree(old)
            elif old.is_dir() and old.resolve() != self.last.resolve():
                (old / f"{STATE}.pt").unlink(missing_ok=True)  # a run of selhn 0.1.0
            elif old.is_file() and old != state_file:
                old.unlink()
