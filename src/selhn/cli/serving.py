"""``selhn index`` and ``selhn serve``: a collection of images encoded once, searched from a page
and a JSON API."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from selhn.cli.common import add_device, add_progress, command, port
from selhn.utils.extras import require


def add(commands: Any) -> None:
    index = command(commands, "index")
    index.set_defaults(run=_index)
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
    add_device(index)
    index.add_argument("--workers", type=int, default=0, help="image-decoding processes")
    add_progress(index)

    serve = command(commands, "serve")
    serve.set_defaults(run=_serve)
    serve.add_argument("--index", required=True, help="index directory of selhn index")
    serve.add_argument("--checkpoint", help="the index's model, if it has moved")
    serve.add_argument("--host", default="127.0.0.1", help="0.0.0.0: reachable from other hosts")
    serve.add_argument("--port", type=port, default=8000, help="TCP port, 1 to 65535")
    add_device(serve)
    serve.add_argument("--max-k", type=int, default=100, help="most results per query")
    serve.add_argument("--max-upload-mb", type=float, default=10.0, help="largest image upload")
    serve.add_argument("--max-decodes", type=int, default=2, help="images decoded at once")
    serve.add_argument(
        "--upload-timeout", type=float, default=10.0,
        help="seconds an upload may send nothing before it is refused",
    )  # fmt: skip
    serve.add_argument(
        "--log-level",
        choices=("critical", "error", "warning", "info", "debug"),
        default="info",
        help="info: a line per request (the access log); warning: problems only",
    )
    serve.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="also answer requests for this host name (repeatable; '*': any); loopback names "
        "and --host are always allowed",
    )


def _index(args: argparse.Namespace) -> None:
    require("faiss", "selhn index")
    require("images", "selhn index")
    from selhn.inference.encoder import Encoder
    from selhn.inference.index.build import SKIPPED, IndexJob, build_index
    from selhn.inference.index.collection import from_folder, from_manifest
    from selhn.utils.distributed import device_for, from_environment, process_group, resolve_device

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
    with process_group(process, device):
        report = build_index(
            encoder, collection, args.out, job, args.workers, not args.no_progress, process
        )
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


def _serve(args: argparse.Namespace) -> None:
    require("serve", "selhn serve")
    require("faiss", "selhn serve")
    import uvicorn

    from selhn.inference.index.store import ImageIndex
    from selhn.inference.serve.app import Limits, create_app
    from selhn.inference.serve.guards import LOOPBACK
    from selhn.inference.serve.images import return_freed_memory
    from selhn.utils.distributed import resolve_device

    index = ImageIndex(args.index)
    encoder = index.encoder(args.checkpoint, resolve_device(args.device))
    limits = Limits(
        max_k=args.max_k,
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        max_decodes=args.max_decodes,
        upload_timeout_s=args.upload_timeout,
    )
    hosts = [*LOOPBACK, *args.allow_host]
    if args.host not in ("0.0.0.0", "::", ""):
        hosts.append(args.host)
    app = create_app(index, encoder, limits, hosts)
    _check_port(args.host, args.port)
    return_freed_memory()
    print(f"serving {len(index)} images of {args.index} at http://{args.host}:{args.port}/")
    print(f"answering requests for hosts: {', '.join(dict.fromkeys(hosts))} (--allow-host adds)")
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)


def _check_port(host: str, number: int) -> None:
    """Fail with a clear error, before announcing anything, if the address cannot be bound."""
    import socket

    try:
        family = socket.getaddrinfo(host, number, type=socket.SOCK_STREAM)[0][0]
        with socket.create_server((host, number), family=family):
            pass
    except OSError as err:
        raise OSError(
            f"cannot listen on {host}:{number} ({err.strerror}); is another server using it? "
            "choose another --port"
        ) from None
