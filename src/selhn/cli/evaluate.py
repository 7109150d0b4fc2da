"""``selhn eval``, ``selhn encode`` and ``selhn search``: a trained model on a split."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from selhn.cli.common import add_device, check_output, command
from selhn.utils.extras import require


def add(commands: Any) -> None:
    ev = command(commands, "eval")
    ev.set_defaults(run=_eval)
    enc = command(commands, "encode")
    enc.set_defaults(run=_encode)
    search = command(commands, "search")
    search.set_defaults(run=_search)
    for sub in (ev, enc, search):
        sub.add_argument("--checkpoint", required=True, help="model directory, e.g. RUN/best")
        sub.add_argument(
            "--data",
            required=True,
            help="data directory (read as images for a model with a backbone)",
        )
        sub.add_argument("--split", default="test", help="the split: train, dev, test, ...")
        sub.add_argument("--batch-size", type=int, default=256, help="items encoded at once")
        add_device(sub)
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
    search.add_argument(
        "--backend", choices=("torch", "faiss"), default="torch", help="the exact search"
    )
    search.add_argument("--json", action="store_true", help="print JSON")


def _eval(args: argparse.Namespace) -> None:
    import torch

    from selhn.evaluation.evaluate import (
        DUPLICATE_AWARE_LIMIT,
        duplicate_aware,
        encode_checkpoints,
    )
    from selhn.evaluation.extended import format_extended
    from selhn.evaluation.metrics import (
        embedding_metrics,
        ensemble_scores,
        format_table,
        retrieval_metrics,
    )
    from selhn.utils.distributed import resolve_device

    check_output(args.save_sims, "--save-sims")
    check_output(args.json, "--json")
    checkpoints = [args.checkpoint, *args.ensemble]
    device = resolve_device(args.device)
    split, img_embs, txt_embs = encode_checkpoints(
        checkpoints, args.data, args.split, args.batch_size, device, progress=True
    )
    owners = split.caption_to_image()
    if args.save_sims:
        sims = ensemble_scores(img_embs, txt_embs)
        torch.save(sims, args.save_sims)
        metrics = retrieval_metrics(sims, fold5=args.fold5, caption_to_image=owners)
    else:
        metrics = embedding_metrics(img_embs, txt_embs, fold5=args.fold5, caption_to_image=owners)
    folds = f"5 folds of {split.num_images // 5} images"
    protocol = folds if args.fold5 else f"{split.num_images} images"
    models = len(checkpoints)
    print(f"{split.name} split, {protocol}, {models} model{'s' if models > 1 else ''}")
    print(format_table(metrics))
    extended = duplicate_aware(split, img_embs, txt_embs, args.fold5)
    if extended is None:
        print(f"duplicate-aware metrics left out: {split.num_images} x {len(owners)} pairs is "
              f"more than {DUPLICATE_AWARE_LIMIT:,}")  # fmt: skip
    else:
        print(format_extended(extended, extended["extra_pairs"], extended["images_compared_by"]))
    if args.json:
        report = {"split": split.name, "fold5": args.fold5, "checkpoints": checkpoints,
                  "metrics": metrics, "duplicate_aware": extended}  # fmt: skip
        Path(args.json).write_text(json.dumps(report, indent=2))


def _encoded(args: argparse.Namespace, saved: str | None = None):
    """(model, vocab, split, image embeddings, caption embeddings) of ``--checkpoint``; the
    embeddings of ``saved`` (a file of selhn encode) where given."""
    from selhn.checkpoint import load_model
    from selhn.evaluation.embeddings import load_embeddings
    from selhn.evaluation.evaluate import encode_split, split_for
    from selhn.utils.distributed import resolve_device

    device = resolve_device(args.device)
    model, vocab, meta = load_model(args.checkpoint, device)
    split = split_for(model, args.data, args.split, meta)
    if saved:
        img_emb, txt_emb = load_embeddings(saved, args.checkpoint, split)
    else:
        img_emb, txt_emb = encode_split(model, split, vocab, args.batch_size, device)
    return model, vocab, split, img_emb, txt_emb


def _encode(args: argparse.Namespace) -> None:
    from selhn.evaluation.embeddings import save_embeddings

    check_output(args.out, "--out")
    _, _, split, img_emb, txt_emb = _encoded(args)
    save_embeddings(args.out, args.checkpoint, split, img_emb, txt_emb)
    print(f"wrote {args.out}: {tuple(img_emb.shape)} images, {tuple(txt_emb.shape)} captions")


def _search(args: argparse.Namespace) -> None:
    from selhn.evaluation.retrieval import caption_hits, image_hits
    from selhn.inference.encoder import Encoder

    if args.backend == "faiss":
        require("faiss", "--backend faiss")
    model, vocab, split, img_emb, txt_emb = _encoded(args, args.embeddings)
    warnings: list[str] = []
    if args.query is not None:
        encoder = Encoder(model, vocab, image_features=None)
        try:
            warnings = encoder.check_query(args.query)
        except ValueError as err:
            raise ValueError(f"--query: {err}") from None
        query = encoder.encode_texts([args.query])
        hits = image_hits(split, query, img_emb, args.k, args.backend)
        header = f"text -> image: {args.query!r}"
    else:
        hits = caption_hits(split, args.image_index, img_emb, txt_emb, args.k, args.backend)
        header = f"image -> text: image {args.image_index} of {split.name}"
    if args.json:
        answer = {"query": args.query, "image_index": args.image_index, "hits": hits,
                  "warnings": warnings}  # fmt: skip
        print(json.dumps(answer, indent=2))
        return
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(header)
    for rank, hit in enumerate(hits, start=1):
        where = f"image {hit['image']}" if "image" in hit else f"caption {hit['caption_index']}"
        where += f" ({hit['file']})" if "file" in hit else ""
        mark = " (ground truth)" if hit.get("match") else ""
        print(f"{rank:3d}. {hit['score']:.3f}  {where}: {hit['caption']}{mark}")
