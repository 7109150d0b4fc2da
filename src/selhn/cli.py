"""The ``selhn`` command: data, train, eval. The only module that reads argv."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from selhn.config import LOSSES, load_config


def _overrides(extra: list[str]) -> dict[str, str]:
    """``--section.key=value`` or ``--section.key value`` pairs left over by argparse."""
    out: dict[str, str] = {}
    items = iter(extra)
    for item in items:
        if not item.startswith("--") or "." not in item.split("=", 1)[0]:
            raise SystemExit(f"selhn: unrecognised argument {item!r}")
        key, sep, value = item[2:].partition("=")
        if not sep:
            value = next(items, None)
            if value is None:
                raise SystemExit(f"selhn: {item} needs a value")
        out[key] = value
    return out


def _cmd_synth(args: argparse.Namespace) -> None:
    from selhn.data.synth import SynthConfig, generate

    config = SynthConfig(
        train=args.train,
        dev=args.dev,
        test=args.test,
        regions=args.regions,
        feature_dim=args.feature_dim,
        seed=args.seed,
    )
    report = generate(args.out, config)
    print(
        f"wrote {args.out}: {config.train}/{config.dev}/{config.test} images, "
        f"{report['bytes'] / 1e6:.0f} MB in {report['seconds']:.1f} s"
    )


TRAIN_SHORTCUTS = {
    "epochs": "train.epochs",
    "batch_size": "train.batch_size",
    "lr": "train.lr",
    "seed": "train.seed",
    "device": "train.device",
    "amp": "train.amp",
    "loss": "loss.name",
    "epsilon": "loss.epsilon",
    "warmup_epochs": "loss.warmup_epochs",
}


def _cmd_train(args: argparse.Namespace, extra: list[str]) -> None:
    from selhn.trainer import train

    overrides: dict[str, Any] = {
        key: getattr(args, name)
        for name, key in TRAIN_SHORTCUTS.items()
        if getattr(args, name) is not None
    }
    overrides |= _overrides(extra)
    config_file = args.config
    if args.resume:
        saved = Path(args.out) / "config.yaml"
        if args.config is not None:
            raise SystemExit("selhn train: --resume uses RUN/config.yaml; drop --config")
        config_file = saved if saved.exists() else None
    config = load_config(config_file, overrides)
    result = train(config, args.data, args.out, resume=args.resume, progress=not args.no_progress)
    print(f"best dev rSum {result['best_rsum']:.1f} at epoch {result['best_epoch'] + 1}")


def _cmd_eval(args: argparse.Namespace) -> None:
    from selhn.checkpoint import load_model
    from selhn.data.precomp import open_split
    from selhn.evaluation import embedding_metrics, format_table, retrieval_metrics
    from selhn.retrieval import encode_split
    from selhn.trainer import resolve_device

    device = resolve_device(args.device)
    split = open_split(args.data, args.split)
    img_embs, txt_embs = [], []
    for checkpoint in [args.checkpoint, *args.ensemble]:
        model, vocab, _ = load_model(checkpoint, device)
        img, txt = encode_split(model, split, vocab, args.batch_size, device)
        img_embs.append(img)
        txt_embs.append(txt)
    cpi = split.captions_per_image
    if args.save_sims:
        sims = sum(i @ t.T for i, t in zip(img_embs, txt_embs, strict=True)) / len(img_embs)
        torch.save(sims, args.save_sims)
        metrics = retrieval_metrics(sims, cpi, fold5=args.fold5)
    else:
        metrics = embedding_metrics(img_embs, txt_embs, cpi, fold5=args.fold5)
    protocol = "5-fold 1K" if args.fold5 else f"{split.num_images} images"
    models = 1 + len(args.ensemble)
    print(f"{split.name} split, {protocol}, {models} model{'s' if models > 1 else ''}")
    print(format_table(metrics))
    if args.json:
        report = {
            "split": split.name,
            "fold5": args.fold5,
            "checkpoints": [args.checkpoint, *args.ensemble],
            "metrics": metrics,
        }
        Path(args.json).write_text(json.dumps(report, indent=2))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="selhn", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("data", help="data sets").add_subparsers(dest="data", required=True)
    synth = data.add_parser("synth", help="write the synthetic default data set")
    synth.add_argument("--out", required=True, help="output directory (SCAN precomp layout)")
    synth.add_argument("--train", type=int, default=10_000, help="training images")
    synth.add_argument("--dev", type=int, default=1_000, help="dev images")
    synth.add_argument("--test", type=int, default=1_000, help="test images")
    synth.add_argument("--regions", type=int, default=12, help="regions per image")
    synth.add_argument("--feature-dim", type=int, default=256, help="channels per region")
    synth.add_argument("--seed", type=int, default=0)

    train = commands.add_parser(
        "train",
        help="train RVSE++",
        epilog="Any configuration key can be set as --section.key=value, e.g. --train.lr=1e-4.",
    )
    train.add_argument("--data", required=True, help="precomp data directory")
    train.add_argument("--out", required=True, help="run directory")
    train.add_argument("--config", help="YAML file of settings that differ from the defaults")
    train.add_argument("--resume", action="store_true", help="continue from RUN/last")
    train.add_argument("--epochs", type=int)
    train.add_argument("--batch-size", type=int)
    train.add_argument("--lr", type=float)
    train.add_argument("--seed", type=int)
    train.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    train.add_argument("--amp", choices=("none", "bf16"), help="bf16 autocast (CUDA)")
    train.add_argument("--loss", choices=LOSSES)
    train.add_argument("--epsilon", type=float, help="SelHN gap threshold")
    train.add_argument("--warmup-epochs", type=int, help="all-negatives epochs first")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")

    ev = commands.add_parser("eval", help="evaluate checkpoints on a split")
    ev.add_argument("--checkpoint", required=True, help="model directory, e.g. RUN/best")
    ev.add_argument("--data", required=True, help="precomp data directory")
    ev.add_argument("--split", default="test")
    ev.add_argument("--fold5", action="store_true", help="COCO 1K: average over 5 folds")
    ev.add_argument("--ensemble", nargs="+", default=[], help="more checkpoints to average")
    ev.add_argument("--save-sims", help="save the (images, captions) score matrix (torch.save)")
    ev.add_argument("--json", help="write the metrics as JSON")
    ev.add_argument("--batch-size", type=int, default=256)
    ev.add_argument("--device", default="auto")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "train":
        parser.error(f"unrecognised arguments: {' '.join(extra)}")
    try:
        if args.command == "data":
            _cmd_synth(args)
        elif args.command == "train":
            _cmd_train(args, extra)
        else:
            _cmd_eval(args)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"selhn {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
