"""``selhn data synth|samples|images`` and ``selhn features``: data sets and image features."""

from __future__ import annotations

import argparse
from typing import Any

from selhn.cli.common import add_device, add_progress, check_output, command
from selhn.utils.extras import require


def add(commands: Any) -> None:
    data = command(commands, "data").add_subparsers(dest="data", required=True)
    synth = command(data, "synth", "write the synthetic default data set")
    synth.add_argument("--out", required=True, help="output directory (SCAN precomp layout)")
    synth.add_argument("--train", type=int, default=10_000, help="training images")
    synth.add_argument("--dev", type=int, default=1_000, help="dev images")
    synth.add_argument("--test", type=int, default=1_000, help="test images")
    synth.add_argument("--regions", type=int, default=12, help="regions per image")
    synth.add_argument("--feature-dim", type=int, default=256, help="channels per region")
    synth.add_argument("--seed", type=int, default=0, help="the data's random draws")
    synth.set_defaults(run=_synth)
    samples = command(data, "samples", "write real sample images (skimage, sklearn digits)")
    samples.add_argument("--out", required=True, help="output folder (PNG files, manifest.jsonl)")
    samples.add_argument("--train", type=int, default=600, help="training digit pairs")
    samples.add_argument("--dev", type=int, default=100, help="dev digit pairs")
    samples.add_argument("--test", type=int, default=150, help="test digit pairs")
    samples.add_argument("--seed", type=int, default=0, help="the pairs' random draws")
    samples.set_defaults(run=_samples)
    folder = command(data, "folder", "a manifest of a folder of images, captions and splits")
    folder.add_argument("folder", help="the image folder (searched recursively)")
    folder.add_argument("--out", required=True, help="the manifest to write (JSON lines)")
    folder.add_argument(
        "--captions",
        help="a caption table: CSV with image and caption columns, or JSON lines with image and "
        "captions (image paths relative to the folder); sidecar .txt files are read too",
    )
    folder.set_defaults(run=_folder)
    images = command(
        data, "images", "captions and image lists of a manifest, to train from images (no features)"
    )
    images.set_defaults(run=_images)
    feats = command(commands, "features")
    feats.set_defaults(run=_features)
    for sub in (images, feats):
        source = sub.add_mutually_exclusive_group(required=True)
        source.add_argument("--manifest", help="JSON-lines manifest: image, captions, split")
        source.add_argument("--karpathy", help="Karpathy split file (dataset_coco.json, ...)")
        sub.add_argument("--images", help="image folder (default for --manifest: its folder)")
        sub.add_argument("--out", required=True, help="output directory (precomp layout)")
    feats.add_argument("--backbone", default="efficientnet-lite0", help="or timm:NAME")
    feats.add_argument("--backbone-weights", help="timm: local weights file")
    feats.add_argument("--image-size", type=int, default=224, help="square input size in pixels")
    feats.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    add_device(feats)
    feats.add_argument("--workers", type=int, default=0, help="image-decoding processes")
    add_progress(feats)


def _synth(args: argparse.Namespace) -> None:
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


def _samples(args: argparse.Namespace) -> None:
    require("samples", "selhn data samples")
    from selhn.data.samples import write_samples

    manifest = write_samples(args.out, args.train, args.dev, args.test, args.seed)
    print(f"wrote {manifest} and its images")


def _folder(args: argparse.Namespace) -> None:
    require("images", "selhn data folder")
    from selhn.data.folder import folder_manifest

    check_output(args.out, "--out")
    found = folder_manifest(args.folder, args.out, args.captions)
    splits = ", ".join(f"{split} {n}" for split, n in found.splits.items())
    print(f"wrote {args.out}: {splits} captioned images; {found.index_only} without captions "
          "(indexed, not trained on)")  # fmt: skip
    if sum(found.splits.values()) and not found.splits["dev"]:
        print("warning: no dev split (fewer than 3 distinct captioned images); training needs one")
    for name, why in found.skipped:
        print(f"left out {name}: {why}")


def _image_records(args: argparse.Namespace, command: str) -> list:
    """The records of ``--manifest`` or ``--karpathy`` (with ``--images``)."""
    from selhn.data.manifest import read_karpathy, read_manifest

    if args.karpathy and not args.images:
        raise SystemExit(f"selhn {command}: --karpathy needs --images DIR (the image folder)")
    if args.karpathy:
        return read_karpathy(args.karpathy, args.images)
    index_only: list[str] = []
    records = read_manifest(args.manifest, args.images, index_only)
    if index_only:
        print(f"{args.manifest}: {len(index_only)} images without captions or split left out "
              "(they are for selhn index)")  # fmt: skip
    return records


def _images(args: argparse.Namespace) -> None:
    from selhn.data.image_files import write_image_splits

    counts = write_image_splits(_image_records(args, "data images"), args.out)
    listed = ", ".join(f"{split} {n}" for split, n in counts.items())
    print(f"wrote {args.out}: captions and image lists of {listed} images")


def _features(args: argparse.Namespace) -> None:
    require("images", "selhn features")
    if args.backbone.startswith("timm:"):
        require("timm", f"backbone {args.backbone}")
    from selhn.features import FeatureJob, extract_features
    from selhn.utils.distributed import resolve_device

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
