"""A run directory: ``config.yaml`` (the resolved configuration), ``log.jsonl`` (one JSON record
per logged step and per evaluation), ``checkpoints/epoch-NNN/`` model directories and the
symlinks ``last`` and ``best`` that point at them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from selhn.checkpoint import load_extra, load_model, point, save_model
from selhn.config import Config, save_config
from selhn.data.vocab import TextVocabulary
from selhn.extras import require
from selhn.models import DualEncoder

STATE = "trainer_state"  # the training state beside a checkpoint's weights


class RunLog:
    """Appends JSON records to ``log.jsonl``; on resume, drops records of unfinished epochs.

    With ``tensorboard`` (a directory) every numeric value of a record is also a TensorBoard
    scalar, tagged ``train/NAME`` for step records and ``SPLIT/NAME`` for evaluations, at the
    record's ``step``; a resume purges the events of unfinished epochs (from ``resume_step`` on).
    """

    def __init__(
        self,
        path: Path,
        keep_before_epoch: int,
        tensorboard: Path | None = None,
        resume_step: int = 0,
    ) -> None:
        self.path = path
        if path.exists():
            kept = [
                line
                for line in path.read_text().splitlines()
                if json.loads(line)["epoch"] < keep_before_epoch
            ]
            path.write_text("".join(line + "\n" for line in kept))
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


def read_log(run: str | Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(step records, eval records) of a run's ``log.jsonl``."""
    records = [json.loads(line) for line in (Path(run) / "log.jsonl").read_text().splitlines()]
    return [r for r in records if r["type"] == "step"], [r for r in records if r["type"] == "eval"]


def _current_state(state: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """A training state as ``TrainState`` reads it. selhn 0.1.0 saved one loss's state as
    ``loss`` and the epoch only in ``config.json``."""
    if "losses" in state:
        return state
    loss = meta["config"]["loss"]["name"]
    old = dict(state)
    losses = {f"{loss}.{key}": value for key, value in old.pop("loss").items()}
    return {**old, "losses": losses, "epoch": meta["epoch"] + 1}


class RunDirectory:
    """The files of one training run."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

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
        return model, vocab, meta, _current_state(load_extra(self.last, STATE), meta)

    def start(self, config: Config, keep_before_epoch: int, resume_step: int) -> RunLog:
        """Create the directory, write ``config.yaml`` and open the log (with TensorBoard events
        in ``tensorboard/`` if configured)."""
        self.path.mkdir(parents=True, exist_ok=True)
        save_config(config, self.path / "config.yaml")
        events = self.path / "tensorboard" if config.train.tensorboard else None
        return RunLog(self.path / "log.jsonl", keep_before_epoch, events, resume_step)

    def save_epoch(
        self,
        epoch: int,
        model: DualEncoder,
        vocab: TextVocabulary,
        meta: dict[str, Any],
        state: dict[str, Any],
        is_best: bool,
    ) -> None:
        """Write checkpoints/epoch-NNN, point ``last`` (and ``best`` if improved) at it, prune."""
        directory = self.path / "checkpoints" / f"epoch-{epoch:03d}"
        save_model(directory, model, vocab, meta, extra={STATE: state})
        if is_best:
            point(self.best, directory)
        point(self.last, directory)
        keep = {self.last.resolve(), self.best.resolve()}
        for old in (self.path / "checkpoints").glob("epoch-*"):
            if old.resolve() not in keep:
                shutil.rmtree(old)
            elif old.resolve() != self.last.resolve():  # only a resume reads the state
                (old / f"{STATE}.pt").unlink(missing_ok=True)
