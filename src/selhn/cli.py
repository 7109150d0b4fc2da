"""The ``selhn`` command: data, features, train, experiment, eval, encode, search, index, serve.
The only module that reads the command line."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from selhn import __version__
from selhn.config import LOSSES, Config, load_config, packaged_configs
from selhn.experiment import LOSS_SETUPS
from selhn.extras import require, require_all
from selhn.models import ARCHITECTURES
from selhn.models.rvsepp import TEXT_ENCODERS


def config_overrides(extra: list[str]) -> dict[str, str]:
    """``--section.key=value`` or ``--section.key value`` pairs left over by argparse."""
    out: dict[str, str] = {}
    items = iter(extra)
    for item in items:
        if not item.startswith("--") or "." not in item.split("=", 1)[0]:
            raise ValueError(f"unrecognised argument {item!r}")
        key, sep, value = item[2:].partition("=")
        if not sep:
            value = next(items, None)
            if value is None:
                raise ValueError(f"{item} needs a value")
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


def _cmd_samples(args: argparse.Namespace) -> None:
    require("samples", "selhn data samples")
    from selhn.data.samples import write_samples

    manifest = write_samples(args.out, args.train, args.dev, args.test, args.seed)
    print(f"wrote {manifest} and its images")


def _image_records(args: argparse.Namespace, command: str) -> list:
    """The records of ``--manifest`` or ``--karpathy`` (with ``--images``)."""
    from selhn.data.manifest import read_karpathy, read_manifest

    if args.karpathy and not args.images:
        raise SystemExit(f"selhn {command}: --karpathy needs --images DIR (the image folder)")
    if args.karpathy:
        return read_karpathy(args.karpathy, args.images)
    return read_manifest(args.manifest, args.images)


def _cmd_images(args: argparse.Namespace) -> None:
    from selhn.data.image_files import write_image_splits

    counts = write_image_splits(_image_records(args, "data images"), args.out)
    listed = ", ".join(f"{split} {n}" for split, n in counts.items())
    print(f"wrote {args.out}: captions and image lists of {listed} images")


def _cmd_features(args: argparse.Namespace) -> None:
    from selhn.distributed import resolve_device
    from selhn.features import FeatureJob, extract_features

    require("images", "selhn features")
    if args.backbone.startswith("timm:"):
        require("timm", f"backbone {args.backbone}")

    report = extract_features(
        _image_records(args, "features"),
        args.out,
        FeatureJob(args.backbone, args.image_size, args.backbone_weights),
        batch_size=args.batch_size,
        device=resolve_device(args.device),
        num_workers=args.workers,
        progress=not args.no_progress,
    )
    counts = ", ".join(f"{split} {n}" for split, n in report["images"].items())
    print(
        f"wrote {args.out}: {counts} images ({report['computed']} computed now) "
        f"in {report['seconds']:.1f} s"
    )


TRAIN_SHORTCUTS = {
    "epochs": "train.epochs",
    "batch_size": "train.batch_size",
    "lr": "train.lr",
    "seed": "train.seed",
    "device": "train.device",
    "amp": "train.amp",
    "loss": "loss.name",
    "architecture": "model.architecture",
    "epsilon": "loss.epsilon",
    "warmup_epochs": "loss.warmup_epochs",
    "global_negatives": "train.global_negatives",
    "text_encoder": "model.text_encoder",
    "text_model": "model.text_model",
    "backbone": "model.backbone",
    "backbone_weights": "model.backbone_weights",
    "image_size": "model.image_size",
}


def _cmd_train(args: argparse.Namespace, extra: list[str]) -> None:
    from selhn.defaults import choose_for_data
    from selhn.distributed import from_environment
    from selhn.run_dir import resume_config
    from selhn.trainer import train

    overrides: dict[str, Any] = {
        key: getattr(args, name)
        for name, key in TRAIN_SHORTCUTS.items()
        if getattr(args, name) is not None
    }
    if args.log is not None:
        overrides["train.tensorboard"] = args.log == "tensorboard"
    overrides |= config_overrides(extra)
    if args.resume:
        if args.config is not None:
            raise SystemExit(
                "selhn train: --resume continues with the run's own settings; drop --config"
            )
        config = resume_config(args.out, overrides)
    else:
        config = load_config(args.config, overrides)
        for line in choose_for_data(config, args.data):
            print(line, flush=True)
    require_all(config.model.extras(pretrained=not args.resume), "this model")
    result = train(config, args.data, args.out, resume=args.resume, progress=not args.no_progress)
    if from_environment().is_main:
        print(f"best dev rSum {result['best_rsum']:.1f} at epoch {result['best_epoch'] + 1}")


def _cmd_config(args: argparse.Namespace) -> None:
    from selhn.config import describe

    print(describe(load_config(args.name)), end="")


def _cmd_experiment(args: argparse.Namespace, extra: list[str], command: str) -> None:
    from selhn.experiment import parse_losses, run_experiment

    require("plot", "selhn experiment")
    overrides = config_overrides(extra)
    require_all(load_config(args.config, overrides).model.extras(), "this model")
    results = run_experiment(
        args.data,
        args.out,
        parse_losses(args.losses),
        seeds=args.seeds,
        config_file=args.config,
        overrides=overrides,
        command=command,
        plot_epochs=args.plot_epochs,
        progress=not args.no_progress,
    )
    for loss, entry in results["losses"].items():
        print(f"{loss:16s} test rSum {entry['rsum']['mean']:.1f} ± {entry['rsum']['std']:.1f}")
    print(f"wrote {args.out}/results.md, results.json, grad_norms.png, vanishing.png, rsum.png")


def _check_output(path: str | None, flag: str) -> None:
    """Fail before any work if ``path``'s folder does not exist."""
    if path is not None and not Path(path).resolve().parent.is_dir():
        raise FileNotFoundError(f"{flag} {path}: folder {Path(path).parent} does not exist")


def _cmd_eval(args: argparse.Namespace) -> None:
    from selhn.checkpoint import load_model
    from selhn.distributed import resolve_device
    from selhn.evaluation import embedding_metrics, format_table, retrieval_metrics
    from selhn.retrieval import encode_split, split_for

    _check_output(args.save_sims, "--save-sims")
    _check_output(args.json, "--json")
    device = resolve_device(args.device)
    img_embs, txt_embs = [], []
    for checkpoint in [args.checkpoint, *args.ensemble]:
        model, vocab, meta = load_model(checkpoint, device)
        split = split_for(model, args.data, args.split, meta)  # images or features, as it reads
        img, txt = encode_split(model, split, vocab, args.batch_size, device)
        img_embs.append(img)
        txt_embs.append(txt)
    owners = split.caption_to_image()
    if args.save_sims:
        sims = sum(i @ t.T for i, t in zip(img_embs, txt_embs, strict=True)) / len(img_embs)
        torch.save(sims, args.save_sims)
        metrics = retrieval_metrics(sims, fold5=args.fold5, caption_to_image=owners)
    else:
        metrics = embedding_metrics(img_embs, txt_embs, fold5=args.fold5, caption_to_image=owners)
    folds = f"5 folds of {split.num_images // 5} images"
    protocol = folds if args.fold5 else f"{split.num_images} images"
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


def _encoded_split(args: argparse.Namespace):
    """(model, vocab, split, image embeddings, caption embeddings) of ``--checkpoint``."""
    from selhn.checkpoint import load_model
    from selhn.distributed import resolve_device
    from selhn.retrieval import encode_split, split_for

    device = resolve_device(args.device)
    model, vocab, meta = load_model(args.checkpoint, device)
    split = split_for(model, args.data, args.split, meta)
    if getattr(args, "embeddings", None):
        img_emb, txt_emb = _saved_embeddings(Path(args.embeddings), args.checkpoint, split)
    else:
        img_emb, txt_emb = encode_split(model, split, vocab, args.batch_size, device)
    return model, vocab, split, img_emb, txt_emb


def _made_by(checkpoint: str, split) -> dict[str, Any]:
    """What an embeddings file records of its origin: the model's weights and the split."""
    from selhn.checkpoint import weights_sha256
    from selhn.data.inputs import fingerprint

    return {"weights_sha256": weights_sha256(checkpoint), "split": fingerprint(split)}


def _saved_embeddings(path: Path, checkpoint: str, split) -> tuple[torch.Tensor, torch.Tensor]:
    """The embeddings of a ``selhn encode`` file, checked to come from this model and split."""
    from selhn.checkpoint import load_tensors

    saved = load_tensors(path, "embeddings written by selhn encode")
    if not isinstance(saved, dict) or "made_by" not in saved:
        raise ValueError(f"{path}: not a file of selhn encode (no 'made_by' record); encode again")
    made_by = _made_by(checkpoint, split)
    if saved["made_by"]["weights_sha256"] != made_by["weights_sha256"]:
        raise ValueError(
            f"{path}: encoded by another model (checkpoint {saved.get('checkpoint')}), not by "
            f"{checkpoint}; encode again with this checkpoint"
        )
    if saved["made_by"]["split"] != made_by["split"]:
        was = saved["made_by"]["split"]
        raise ValueError(
            f"{path}: encodes another split ({was['split']}: {was['images']} images, "
            f"{was['captions']} captions) than {split.name} of this data directory; encode again"
        )
    return saved["images"], saved["captions"]


def _cmd_encode(args: argparse.Namespace) -> None:
    _check_output(args.out, "--out")
    _, _, split, img_emb, txt_emb = _encoded_split(args)
    torch.save(
        {
            "images": img_emb,
            "captions": txt_emb,
            "caption_to_image": torch.from_numpy(split.caption_to_image()),
            "split": split.name,
            "checkpoint": str(args.checkpoint),
            "made_by": _made_by(args.checkpoint, split),
        },
        args.out,
    )
    print(f"wrote {args.out}: {tuple(img_emb.shape)} images, {tuple(txt_emb.shape)} captions")


def _cmd_search(args: argparse.Namespace) -> None:
    from selhn.encoder import Encoder
    from selhn.retrieval import top_k

    if args.backend == "faiss":
        require("faiss", "--backend faiss")
    model, vocab, split, img_emb, txt_emb = _encoded_split(args)
    owner = split.caption_to_image()
    warnings: list[str] = []
    if args.query is not None:
        encoder = Encoder(model, vocab, image_features=None)
        try:
            warnings = encoder.check_query(args.query)
        except ValueError as err:
            raise ValueError(f"--query: {err}") from None
        query = encoder.encode_texts([args.query])
        scores, indices = top_k(query, img_emb, args.k, args.backend)
        files = split.image_files()
        hits = [
            {"image": i, "score": s, "caption": split.captions[int((owner == i).argmax())]}
            | ({"file": files[i]} if files else {})
            for i, s in zip(indices[0].tolist(), scores[0].tolist(), strict=True)
        ]
        header = f"text -> image: {args.query!r}"
    else:
        if not 0 <= args.image_index < split.num_images:
            raise ValueError(
                f"--image-index must be in [0, {split.num_images}); got {args.image_index}"
            )
        scores, indices = top_k(
            img_emb[args.image_index : args.image_index + 1], txt_emb, args.k, args.backend
        )
        hits = [
            {
                "caption_index": j,
                "score": s,
                "caption": split.captions[j],
                "match": bool(owner[j] == args.image_index),
            }
            for j, s in zip(indices[0].tolist(), scores[0].tolist(), strict=True)
        ]
        header = f"image -> text: image {args.image_index} of {split.name}"
    if args.json:
        print(
            json.dumps(
                {
                    "query": args.query,
                    "image_index": args.image_index,
                    "hits": hits,
                    "warnings": warnings,
                },
                indent=2,
            )
        )
        return
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(header)
    for rank, hit in enumerate(hits, start=1):
        where = f"image {hit['image']}" if "image" in hit else f"caption {hit['caption_index']}"
        where += f" ({hit['file']})" if "file" in hit else ""
        mark = " (ground truth)" if hit.get("match") else ""
        print(f"{rank:3d}. {hit['score']:.3f}  {where}: {hit['caption']}{mark}")


def _cmd_index(args: argparse.Namespace) -> None:
    import torch.distributed as dist

    from selhn.distributed import device_for, from_environment, init_process_group, resolve_device
    from selhn.encoder import Encoder
    from selhn.index.build import SKIPPED, IndexJob, build_index
    from selhn.index.collection import from_folder, from_manifest

    require("faiss", "selhn index")
    require("images", "selhn index")
    job = IndexJob(args.shard_size, args.dtype, args.batch_size, args.exact_limit)
    if args.root and not args.manifest:
        raise SystemExit("selhn index: --root goes with --manifest (--images is the root)")
    if args.images:
        collection = from_folder(args.images)
    else:
        collection = from_manifest(args.manifest, args.root)
    process = from_environment()
    device = device_for(process, resolve_device(args.device))
    encoder = Encoder.load(args.checkpoint, device)
    created = init_process_group(process, device)
    try:
        report = build_index(
            encoder, collection, args.out, job, args.workers, not args.no_progress, process
        )
    finally:
        if created:
            dist.destroy_process_group()
    if report is None:  # another process of a torchrun job: rank 0 reports
        return
    faiss = report["faiss"]
    kind = "exact inner product" if faiss["kind"] == "exact" else (
        f"IVF, {faiss['nlist']} lists, nprobe {faiss['nprobe']} (recall@10 "
        f"{faiss['calibration_recall_at_10']:.3f} on stored vectors)"
    )  # fmt: skip
    rate = report["read_now"] / report["seconds"]
    print(
        f"wrote {args.out}: {report['images']} images indexed ({report['encoded_now']} encoded "
        f"now, {report['read_now']} files read, {rate:.1f} files/s), {report['skipped']} "
        f"skipped (listed in {Path(args.out) / SKIPPED}); faiss: {kind}"
    )


def _cmd_serve(args: argparse.Namespace) -> None:
    from selhn.distributed import resolve_device
    from selhn.index.store import ImageIndex

    require("serve", "selhn serve")
    require("faiss", "selhn serve")
    import uvicorn

    from selhn.encoder import Encoder
    from selhn.serve.app import LOOPBACK, Limits, create_app, return_freed_memory

    index = ImageIndex(args.index)
    model = index.meta["model"]
    checkpoint = args.checkpoint or model["checkpoint"]
    if checkpoint is None:
        raise ValueError(
            f"{args.index}: its model was not saved as a checkpoint; give --checkpoint"
        )
    if not Path(checkpoint, "config.json").is_file() and not args.checkpoint:
        raise FileNotFoundError(
            f"{checkpoint}: the model that built {args.index} is no longer there; give its new "
            "place with --checkpoint"
        )
    encoder = Encoder.load(checkpoint, resolve_device(args.device))
    if model["weights_sha256"] and encoder.reference["weights_sha256"] != model["weights_sha256"]:
        raise ValueError(
            f"{checkpoint}: not the model that built {args.index} (its weights differ from "
            f"those of {model['checkpoint']}); queries would not match the index"
        )
    limits = Limits(
        max_k=args.max_k,
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        max_decodes=args.max_decodes,
    )
    hosts = [*LOOPBACK, *args.allow_host]
    if args.host not in ("0.0.0.0", "::", ""):
        hosts.append(args.host)
    app = create_app(index, encoder, limits, hosts)
    _check_port(args.host, args.port)
    return_freed_memory()
    print(f"serving {len(index)} images of {args.index} at http://{args.host}:{args.port}/")
    print(f"answering requests for hosts: {', '.join(dict.fromkeys(hosts))} (--allow-host adds)")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


def _check_port(host: str, port: int) -> None:
    """Fail with a clear error, before announcing anything, if the address cannot be bound."""
    import socket

    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.create_server((host, port), family=family):
            pass
    except OSError as err:
        raise OSError(
            f"cannot listen on {host}:{port} ({err.strerror}); is another server using it? "
            "choose another --port"
        ) from None


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown where there is one; descriptions and epilogs kept as written."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or action.help is None:
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)


def _command(group: Any, name: str, summary: str, **kwargs: Any) -> argparse.ArgumentParser:
    """A subcommand whose one-line summary is both its entry in the list and its description."""
    return group.add_parser(name, help=summary, description=summary, **kwargs)


def _configured(key: str) -> str:
    """Help text naming the configuration key a flag sets and its default."""
    section, _, name = key.partition(".")
    return f"sets {key} (default {getattr(getattr(Config(), section), name)})"


TRAIN_EXAMPLES = """examples:
  selhn train --data data/synth --out runs/demo --config demo
  selhn train --data DIR --out RUN --config paper --loss hardest --warmup-epochs 1
  selhn train --data DIR --out RUN --text-encoder transformer --train.lr=2e-4
  selhn train --data IMAGES --out RUN --backbone efficientnet-lite0 --image-size 224
  selhn train --data DIR --out RUN --resume --epochs 40
  torchrun --standalone --nproc-per-node 4 -m selhn train --data DIR --out RUN --global-negatives

Any configuration key can be set as --section.key=value (e.g. --train.lr=1e-4);
selhn config show [NAME] lists them all."""


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="selhn",
        description="Image-text matching with selectively hard negatives (SelHN) and RVSE++.",
    )
    parser.add_argument("--version", action="version", version=f"selhn {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    config = _command(commands, "config", "configurations").add_subparsers(
        dest="config", required=True
    )
    show = _command(config, "show", "print a resolved configuration, every key commented")
    show.add_argument(
        "name", nargs="?", help="a packaged configuration (demo, paper, ...) or a YAML file; "
        "none: the defaults",
    )  # fmt: skip

    data = _command(commands, "data", "write data sets").add_subparsers(dest="data", required=True)
    synth = _command(data, "synth", "write the synthetic default data set")
    synth.add_argument("--out", required=True, help="output directory (SCAN precomp layout)")
    synth.add_argument("--train", type=int, default=10_000, help="training images")
    synth.add_argument("--dev", type=int, default=1_000, help="dev images")
    synth.add_argument("--test", type=int, default=1_000, help="test images")
    synth.add_argument("--regions", type=int, default=12, help="regions per image")
    synth.add_argument("--feature-dim", type=int, default=256, help="channels per region")
    synth.add_argument("--seed", type=int, default=0)
    samples = _command(data, "samples", "write real sample images (skimage, sklearn digits)")
    samples.add_argument("--out", required=True, help="output folder (PNG files, manifest.jsonl)")
    samples.add_argument("--train", type=int, default=600, help="training digit pairs")
    samples.add_argument("--dev", type=int, default=100, help="dev digit pairs")
    samples.add_argument("--test", type=int, default=150, help="test digit pairs")
    samples.add_argument("--seed", type=int, default=0)
    images = _command(
        data, "images", "captions and image lists of a manifest, to train from images (no features)"
    )
    feats = _command(commands, "features", "grid features of raw images (precomp layout)")
    for sub in (images, feats):
        source = sub.add_mutually_exclusive_group(required=True)
        source.add_argument("--manifest", help="JSON-lines manifest: image, captions, split")
        source.add_argument("--karpathy", help="Karpathy split file (dataset_coco.json, ...)")
        sub.add_argument("--images", help="image folder (default for --manifest: its folder)")
        sub.add_argument("--out", required=True, help="output directory (precomp layout)")
    feats.add_argument("--backbone", default="efficientnet-lite0", help="or timm:NAME")
    feats.add_argument("--backbone-weights", help="timm: local weights file")
    feats.add_argument("--image-size", type=int, default=224, help="square input size in pixels")
    feats.add_argument("--batch-size", type=int, default=32)
    feats.add_argument("--device", default="auto")
    feats.add_argument("--workers", type=int, default=0, help="image-decoding processes")
    feats.add_argument("--no-progress", action="store_true", help="no progress bar")

    train = _command(commands, "train", "train a model (RVSE++ by default)", epilog=TRAIN_EXAMPLES)
    exp = _command(
        commands,
        "experiment",
        "train the same model once per loss and seed, compare, plot",
        epilog="Settings shared by every run can be given as --section.key=value.",
    )
    for sub, out in ((train, "run directory"), (exp, "experiment directory")):
        sub.add_argument(
            "--data",
            required=True,
            help="data directory: precomp features (image lists with --backbone)",
        )
        sub.add_argument("--out", required=True, help=out)
        sub.add_argument(
            "--config",
            help=f"a packaged configuration ({', '.join(packaged_configs())}) or a YAML file of "
            "settings that differ from the defaults",
        )
        sub.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("--resume", action="store_true", help="continue from RUN/last")
    shortcut_help = {
        "epochs": "passes over the training captions",
        "batch_size": "the global batch",
        "lr": "AdamW learning rate",
        "seed": "initialisation, shuffling and augmentation",
        "device": "auto, cpu, cuda or cuda:N",
        "amp": "bf16: bfloat16 autocast (CUDA)",
        "loss": "the loss",
        "architecture": "the model",
        "epsilon": "SelHN gap threshold",
        "warmup_epochs": "all-negatives epochs first",
        "global_negatives": "under torchrun: mine negatives over the batches of all processes",
        "text_encoder": "the text encoder",
        "text_model": "transformer or sentence: a local Hugging Face model directory",
        "backbone": "train end to end from the listed image files: efficientnet-lite0 or timm:NAME",
        "backbone_weights": "timm backbone: local weights file",
        "image_size": "backbone: square input size in pixels",
    }
    kinds: dict[str, dict[str, Any]] = {
        "epochs": {"type": int}, "batch_size": {"type": int}, "lr": {"type": float},
        "seed": {"type": int}, "amp": {"choices": ("none", "bf16")}, "loss": {"choices": LOSSES},
        "architecture": {"choices": sorted(ARCHITECTURES)}, "epsilon": {"type": float},
        "warmup_epochs": {"type": int}, "text_encoder": {"choices": TEXT_ENCODERS},
        "image_size": {"type": int},
        "global_negatives": {"action": "store_true", "default": None},
    }  # fmt: skip
    for name, key in TRAIN_SHORTCUTS.items():
        flag = "--" + name.replace("_", "-")
        text = f"{shortcut_help[name]}; {_configured(key)}"
        train.add_argument(flag, help=text, **kinds.get(name, {}))
    train.add_argument(
        "--log",
        choices=("jsonl", "tensorboard"),
        help="tensorboard: also write the log's scalars as TensorBoard events in RUN/tensorboard "
        f"(log.jsonl is always written); {_configured('train.tensorboard')}",
    )

    exp.add_argument(
        "--losses",
        default="all,hardest,hardest+warmup,selhn,infonce",
        help=f"comma-separated, from {', '.join(LOSS_SETUPS)}",
    )
    exp.add_argument("--seeds", type=int, default=3, help="runs per loss, seeds 0, 1, ...")
    exp.add_argument("--plot-epochs", type=int, default=2, help="epochs in grad_norms.png")

    ev = _command(commands, "eval", "evaluate checkpoints on a split")
    enc = _command(commands, "encode", "save the image and caption embeddings of a split")
    search = _command(commands, "search", "top-k text->image or image->text search")
    for sub in (ev, enc, search):
        sub.add_argument("--checkpoint", required=True, help="model directory, e.g. RUN/best")
        sub.add_argument(
            "--data",
            required=True,
            help="data directory (read as images for a model with a backbone)",
        )
        sub.add_argument("--split", default="test")
        sub.add_argument("--batch-size", type=int, default=256)
        sub.add_argument("--device", default="auto")
    ev.add_argument("--fold5", action="store_true", help="COCO 1K: average over 5 folds")
    ev.add_argument("--ensemble", nargs="+", default=[], help="more checkpoints to average")
    ev.add_argument("--save-sims", help="save the (images, captions) score matrix (torch.save)")
    ev.add_argument("--json", help="write the metrics as JSON")
    enc.add_argument("--out", required=True, help="output file (torch.save of a dict)")
    query = search.add_mutually_exclusive_group(required=True)
    query.add_argument("--query", help="a caption: find the images it describes")
    query.add_argument("--image-index", type=int, help="an image of the split: find its captions")
    search.add_argument("--k", type=int, default=5, help="results to show")
    search.add_argument("--embeddings", help="a file from selhn encode, instead of encoding")
    search.add_argument("--backend", choices=("torch", "faiss"), default="torch")
    search.add_argument("--json", action="store_true", help="print JSON")

    index = _command(
        commands, "index", "encode a folder or manifest of images into a searchable index"
    )
    index.add_argument("--checkpoint", required=True, help="model directory, e.g. RUN/best")
    source = index.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", help="an image folder, indexed recursively")
    source.add_argument(
        "--manifest", help="JSON-lines: image (relative to the manifest), captions (optional)"
    )
    index.add_argument(
        "--root",
        help="with --manifest: the folder that holds its images (default: the manifest's "
        "folder); files outside it are not indexed",
    )
    index.add_argument("--out", required=True, help="index directory (resumed if unfinished)")
    index.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    index.add_argument("--shard-size", type=int, default=4096, help="images per stored shard")
    index.add_argument("--dtype", choices=("float16", "float32"), default="float16",
                       help="stored embeddings")  # fmt: skip
    index.add_argument(
        "--exact-limit",
        type=int,
        default=100_000,
        help="largest index searched exactly; above it an IVF index, sized and calibrated",
    )
    index.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    index.add_argument("--workers", type=int, default=0, help="image-decoding processes")
    index.add_argument("--no-progress", action="store_true", help="no progress bar")

    serve = _command(commands, "serve", "a web page and JSON API to search an index")
    serve.add_argument("--index", required=True, help="index directory of selhn index")
    serve.add_argument("--checkpoint", help="the index's model, if it has moved")
    serve.add_argument("--host", default="127.0.0.1", help="0.0.0.0: reachable from other hosts")
    serve.add_argument("--port", type=_port, default=8000, help="TCP port, 1 to 65535")
    serve.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    serve.add_argument("--max-k", type=int, default=100, help="most results per query")
    serve.add_argument("--max-upload-mb", type=float, default=10.0, help="largest image upload")
    serve.add_argument("--max-decodes", type=int, default=2, help="images decoded at once")
    serve.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="also answer requests for this host name (repeatable; '*': any); loopback names "
        "and --host are always allowed",
    )
    return parser


def _port(value: str) -> int:
    """A TCP port number, for argparse."""
    if not value.isdigit() or not 1 <= int(value) <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 1 to 65535; got {value!r}")
    return int(value)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command not in ("train", "experiment"):
        parser.error(f"unrecognised arguments: {' '.join(extra)}")
    try:
        if args.command == "data" and args.data == "synth":
            _cmd_synth(args)
        elif args.command == "data" and args.data == "samples":
            _cmd_samples(args)
        elif args.command == "data":
            _cmd_images(args)
        elif args.command == "config":
            _cmd_config(args)
        elif args.command == "features":
            _cmd_features(args)
        elif args.command == "train":
            _cmd_train(args, extra)
        elif args.command == "experiment":
            _cmd_experiment(args, extra, shlex.join(["selhn", *argv]))
        elif args.command == "eval":
            _cmd_eval(args)
        elif args.command == "encode":
            _cmd_encode(args)
        elif args.command == "index":
            _cmd_index(args)
        elif args.command == "serve":
            _cmd_serve(args)
        else:
            _cmd_search(args)
    except (ValueError, OSError, ImportError) as err:  # OSError: missing files, a full disk
        print(f"selhn {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"\nselhn {args.command}: interrupted. {RESUMING.get(args.command, '')}",
            file=sys.stderr,
        )
        return 130
    return 0


RESUMING = {  # what an interrupted command keeps
    "features": "The images done are kept: the same command continues where it stopped.",
    "index": "The images done are kept: the same command continues where it stopped.",
    "train": "Every finished epoch is kept: run it again with --resume to continue.",
}


if __name__ == "__main__":
    sys.exit(main())
