"""``selhn train``, ``selhn experiment`` and ``selhn config show``: a run's configuration is
resolved here once (``selhn.config.resolve``), printed with its reasons, and handed to the
trainer."""

from __future__ import annotations

import argparse
from typing import Any

from selhn.cli.common import add_progress, command
from selhn.config.resolve import AUTO, NONE, recipes
from selhn.config.schema import FALSE_NEGATIVES, LOSS_SETUPS, LOSSES, Config, presets
from selhn.models import ARCHITECTURES
from selhn.models.rvsepp import TEXT_ENCODERS
from selhn.utils.extras import require, require_all

# flag -> (the configuration key it sets, what it is, argparse options)
SHORTCUTS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "epochs": ("train.epochs", "passes over the training captions", {"type": int}),
    "batch_size": ("train.batch_size", "the global batch", {"type": int}),
    "lr": ("train.lr", "AdamW learning rate", {"type": float}),
    "seed": ("train.seed", "initialisation, shuffling and augmentation", {"type": int}),
    "device": ("train.device", "auto, cpu, cuda or cuda:N", {}),
    "amp": ("train.amp", "bf16: bfloat16 autocast (CUDA)", {"choices": ("none", "bf16")}),
    "loss": ("loss.name", "the loss", {"choices": LOSSES}),
    "architecture": ("model.architecture", "the model", {"choices": sorted(ARCHITECTURES)}),
    "epsilon": ("loss.epsilon", "SelHN gap threshold", {"type": float}),
    "warmup_epochs": ("loss.warmup_epochs", "all-negatives epochs first", {"type": int}),
    "false_negatives": (
        "loss.false_negatives",
        "which pairs besides a pair's own are not negatives (docs/losses.md)",
        {"choices": FALSE_NEGATIVES},
    ),
    "global_negatives": (
        "train.global_negatives",
        "under torchrun: mine negatives over the batches of all processes",
        {"action": "store_true", "default": None},
    ),
    "text_encoder": ("model.text_encoder", "the text encoder", {"choices": TEXT_ENCODERS}),
    "text_model": (
        "model.text_model", "transformer or sentence: a local Hugging Face model directory", {}
    ),
    "backbone": (
        "model.backbone",
        "train end to end from the listed image files: efficientnet-lite0 or timm:NAME",
        {},
    ),
    "backbone_weights": ("model.backbone_weights", "timm backbone: local weights file", {}),
    "image_size": ("model.image_size", "backbone: square input size in pixels", {"type": int}),
}  # fmt: skip

EXAMPLES = """examples:
  selhn train --data data/synth --out runs/demo --config demo
  selhn train --data DIR --out RUN --recipe paper --loss hardest --warmup-epochs 1
  selhn train --data DIR --out RUN --text-encoder transformer --train.lr=2e-4
  selhn train --data IMAGES --out RUN --backbone efficientnet-lite0 --image-size 224
  selhn train --data DIR --out RUN --resume --epochs 40
  torchrun --standalone --nproc-per-node 4 -m selhn train --data DIR --out RUN --global-negatives

Any configuration key can be set as --section.key=value (e.g. --train.lr=1e-4);
selhn config show [NAME] lists them all."""


def _configured(key: str) -> str:
    """Help text naming the configuration key a flag sets and its default."""
    section, _, name = key.partition(".")
    return f"sets {key} (default {getattr(getattr(Config(), section), name)})"


def add(commands: Any) -> None:
    config = command(commands, "config").add_subparsers(dest="config", required=True)
    show = command(config, "show", "print a configuration, every key commented")
    show.add_argument(
        "name", nargs="?", help=f"a recipe ({', '.join(recipes())}), a preset "
        f"({', '.join(presets())}) or a YAML file; none: the defaults",
    )  # fmt: skip
    show.set_defaults(run=_show)
    train = command(commands, "train", epilog=EXAMPLES)
    train.set_defaults(run=_train, overrides_allowed=True)
    exp = command(
        commands,
        "experiment",
        epilog="Settings shared by every run can be given as --section.key=value.",
    )
    exp.set_defaults(run=_experiment, overrides_allowed=True)
    for sub, out in ((train, "run directory"), (exp, "experiment directory")):
        sub.add_argument(
            "--data",
            required=True,
            help="data directory: precomp features (image lists with --backbone)",
        )
        sub.add_argument("--out", required=True, help=out)
        sub.add_argument(
            "--recipe",
            choices=(AUTO, *recipes(), NONE),
            default=AUTO,
            help="the packaged recipe the run starts from; auto: own-data for features of "
            "selhn features that store efficientnet-lite0's trunk activations, else none (the "
            "defaults: the paper's model and loss, the schedule fitted to the data)",
        )
        sub.add_argument(
            "--config",
            help=f"a packaged preset ({', '.join(presets())}) or a YAML file of settings over "
            "the recipe",
        )
        add_progress(sub)
    train.add_argument("--resume", action="store_true", help="continue from RUN/last")
    for name, (key, text, options) in SHORTCUTS.items():
        flag = "--" + name.replace("_", "-")
        train.add_argument(flag, help=f"{text}; {_configured(key)}", **options)
    train.add_argument(
        "--log",
        choices=("jsonl", "tensorboard"),
        help="tensorboard: also write the log's scalars as TensorBoard events in RUN/tensorboard "
        f"(log.jsonl is always written); {_configured('train.tensorboard')}",
    )
    exp.add_argument(
        "--losses",
        default="all,hardest,hardest+warmup,selhn,infonce",
        help=f"comma-separated, from {', '.join(LOSS_SETUPS)}; NAME:MODE also sets "
        "loss.false_negatives (selhn:same_caption)",
    )
    exp.add_argument("--seeds", type=int, default=3, help="runs per loss, seeds 0, 1, ...")
    exp.add_argument("--plot-epochs", type=int, default=2, help="epochs in grad_norms.png")


def train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The settings ``selhn train``'s flags and ``--section.key=value`` arguments give."""
    overrides: dict[str, Any] = {
        key: getattr(args, name)
        for name, (key, _, _) in SHORTCUTS.items()
        if getattr(args, name) is not None
    }
    if args.log is not None:
        overrides["train.tensorboard"] = args.log == "tensorboard"
    return overrides | args.overrides


def _train(args: argparse.Namespace) -> None:
    from selhn.config.resolve import layered, resolve, resume
    from selhn.data.facts import DataFacts
    from selhn.training.run_dir import last_config
    from selhn.training.trainer import train
    from selhn.utils.distributed import from_environment

    overrides = train_overrides(args)
    if not args.resume:  # the extras the given settings need, named before anything is read
        given = layered(NONE if args.recipe == AUTO else args.recipe, args.config, overrides)[0]
        require_all(given.model.extras(), "this model")
    job, facts = from_environment(), DataFacts.read(args.data)
    if args.resume:
        if args.config is not None or args.recipe != AUTO:
            raise SystemExit(
                "selhn train: --resume continues with the run's own settings; drop --config "
                "and --recipe"
            )
        saved, last = last_config(args.out)
        resolved = resume(saved, overrides, facts, last, job.world_size)
    else:
        resolved = resolve(facts, args.recipe, args.config, overrides, job.world_size)
    if job.is_main:
        for line in resolved.choices:
            print(line, flush=True)
    config = resolved.config
    require_all(config.model.extras(pretrained=not args.resume), "this model")
    if config.train.tensorboard:
        require("tensorboard", "train.tensorboard=true")
    result = train(config, args.data, args.out, resume=args.resume, progress=not args.no_progress)
    if job.is_main:
        print(f"best dev rSum {result['best_rsum']:.1f} at epoch {result['best_epoch']}")


def _show(args: argparse.Namespace) -> None:
    from selhn.config.describe import describe
    from selhn.config.resolve import recipe_loss_settings, recipe_values
    from selhn.config.schema import load_config

    special: dict[str, dict[str, Any]] = {}
    if args.name in recipes():
        config = Config()
        config.update(recipe_values(args.name), f"recipe {args.name}")
        config.validate()
        special = recipe_loss_settings(args.name)
    else:
        config = load_config(args.name)
    print(describe(config), end="")
    if special:
        print(f"# the {args.name} recipe's settings for some losses (over the above):")
    for loss, settings in special.items():
        print(f"#   loss.name={loss}: " + ", ".join(f"{k}={v}" for k, v in settings.items()))


def _experiment(args: argparse.Namespace) -> None:
    from selhn.config.schema import parse_losses
    from selhn.training.experiment import run_experiment

    require("plot", "selhn experiment")
    results = run_experiment(
        args.data,
        args.out,
        parse_losses(args.losses),
        seeds=args.seeds,
        recipe=args.recipe,
        config_file=args.config,
        overrides=args.overrides,
        command=args.command_line,
        plot_epochs=args.plot_epochs,
        progress=not args.no_progress,
    )
    for loss, entry in results["losses"].items():
        print(f"{loss:16s} test rSum {entry['rsum']['mean']:.1f} ± {entry['rsum']['std']:.1f}")
    print(f"wrote {args.out}/results.md, results.json, grad_norms.png, vanishing.png, rsum.png")
