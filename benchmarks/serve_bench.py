"""Index and serve at scale, measured on this machine in one run.

1. Build rate from files: ``selhn index`` of the sample images (``selhn data samples``, 864
   PNG files) with an RVSE++ model of selhn features at 224 px (EfficientNet-Lite0 backbone,
   untrained heads: the rate does not depend on the weights).
2. 1,000,000 synthetic 1024-d embeddings (float16 shards, as ``selhn index`` stores them) made
   with neighbours that mean something but do not sit in tight clusters: a 64-d Gaussian mixture
   (2,000 components, spread 0.8 of the spread of their means) mapped to 1,024 dimensions by a
   random linear map, plus 5% isotropic noise, normalised. The spread sets how hard the search
   is: at 0.5, one list of 1,024 held a query's ten nearest (recall@10 0.996 at nprobe 1); at
   1.0, on 200,000 x 256, a quarter of the lists was needed. Both an exact index and the
   automatic approximate index (IVF, sized and calibrated when built) are built, and timed.
3. Recall@10 of the approximate index against exact search on 1,000 held-out vectors of the
   same distribution (not the calibration's queries).
4. Latency through the HTTP API on loopback (``selhn serve`` in its own process; text queries
   encoded by a 1024-d RVSE++ model): p50/p99 of 200 sequential queries for each index.
5. A bounded load test on the approximate index: 2,000 requests from 16 concurrent clients in
   4 rounds, one in ten an upload of a 2400 x 1800 JPEG photo (the others text queries);
   errors, throughput, p50/p99 latency, and the server's resident memory after each round
   (the first round makes the server's worker threads: its last three rounds are compared with
   the memory after it).

Usage: python benchmarks/serve_bench.py [--vectors 1000000] [--work DIR]
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

import numpy as np
import torch
from common import memory_bytes
from PIL import Image

from selhn.checkpoint import save_model
from selhn.data.facts import PREPROCESSING
from selhn.data.samples import write_samples
from selhn.data.vocab import Vocabulary
from selhn.inference.encoder import Encoder
from selhn.inference.index import ann
from selhn.inference.index.build import IndexJob, build_index, write_index
from selhn.inference.index.collection import from_manifest
from selhn.models import create_model

WORDS = [
    *("a", "the", "dog", "cat", "man", "woman", "child", "red", "blue", "green", "small"),
    *("large", "running", "sitting", "on", "in", "near", "street", "park", "beach", "table"),
    *("car", "bike", "tree", "house", "water", "grass", "snow", "ball", "hat", "shirt"),
]


def make_model(directory: Path, embed_size: int) -> Path:
    """An untrained RVSE++ of 1280-channel EfficientNet-Lite0 features at 224 px."""
    torch.manual_seed(0)
    vocab = Vocabulary.build([" ".join(WORDS)])
    model = create_model(
        "rvsepp", vocab_size=len(vocab), img_dim=1280, embed_size=embed_size, word_dim=300,
        text_encoder="bigru",
    )  # fmt: skip
    job = {"backbone": "efficientnet-lite0", "image_size": 224, "weights": None}
    save_model(directory, model, vocab, {"image_features": {**job, "preprocessing": PREPROCESSING}})
    return directory


def synthetic(count: int, dim: int, seed: int, chunk: int = 100_000):
    """Float16 chunks of unit vectors: a 64-d mixture of 2,000 Gaussians mapped to ``dim``."""
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((2000, 64)).astype(np.float32)
    lift = rng.standard_normal((64, dim)).astype(np.float32) / 8
    for start in range(0, count, chunk):
        n = min(chunk, count - start)
        latent = means[rng.integers(0, 2000, n)] + 0.8 * rng.standard_normal((n, 64))
        x = latent.astype(np.float32) @ lift
        x += (
            0.05
            * np.linalg.norm(x, axis=1, keepdims=True)
            / np.sqrt(dim)
            * rng.standard_normal((n, dim), dtype=np.float32)
        )
        yield (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)


class Server:
    """``selhn serve`` in a subprocess on a free loopback port."""

    def __init__(self, index: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        command = [sys.executable, "-m", "selhn", "serve", "--index", str(index), "--log-level",
                   "warning"]  # fmt: skip
        self.process = subprocess.Popen([*command, "--port", str(self.port), "--device", "cpu"])
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            try:
                if self.get("/api/info")[0] == 200:
                    return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError("selhn serve did not start")

    def get(self, path: str, connection: http.client.HTTPConnection | None = None):
        own = connection is None
        connection = connection or http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            if own:
                connection.close()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)


def query_path(rng: np.random.Generator, k: int = 10) -> str:
    text = " ".join(rng.choice(WORDS, rng.integers(3, 9)))
    return "/api/search?" + urllib.parse.urlencode({"text": text, "k": k})


def latency(server: Server, queries: int, seed: int) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    for _ in range(5):  # warm up
        server.get(query_path(rng), connection)
    times = []
    for _ in range(queries):
        path = query_path(rng)
        start = time.perf_counter()
        status, _ = server.get(path, connection)
        times.append(time.perf_counter() - start)
        assert status == 200
    connection.close()
    return float(np.percentile(times, 50)) * 1e3, float(np.percentile(times, 99)) * 1e3


def photo_upload() -> tuple[bytes, dict[str, str]]:
    """A multipart upload of a smooth 2400 x 1800 JPEG (about a photo's size)."""
    pixels = np.random.default_rng(1).integers(0, 255, (18, 24, 3), dtype=np.uint8)
    photo = io.BytesIO()
    Image.fromarray(pixels).resize((2400, 1800), Image.Resampling.BICUBIC).save(photo, "JPEG")
    boundary = "selhnbenchboundary"
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="p.jpg"\r\n\r\n'
    body = head.encode() + photo.getvalue() + f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def load_test(server: Server, requests: int, clients: int, rounds: int = 4) -> dict:
    """``requests`` requests from ``clients`` threads with a connection each, in ``rounds``
    equal rounds, one in ten an image upload; the server's resident memory after each round."""
    errors, times, lock = [], [], threading.Lock()
    upload, headers = photo_upload()

    def client(number: int, left: list[int]) -> None:
        rng = np.random.default_rng(1000 + number)
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        while True:
            with lock:
                if left[0] == 0:
                    break
                left[0] -= 1
                image = left[0] % 10 == 0
            start = time.perf_counter()
            try:
                if image:
                    connection.request("POST", "/api/search?k=10", upload, headers)
                    response = connection.getresponse()
                    status, body = response.status, response.read()
                else:
                    status, body = server.get(query_path(rng), connection)
                if status != 200 or not json.loads(body)["hits"]:
                    errors.append(status)
            except (OSError, http.client.HTTPException) as err:
                errors.append(repr(err))
                connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
            with lock:
                times.append(time.perf_counter() - start)
        connection.close()

    memory = [memory_bytes(pid=server.process.pid) / 2**20]
    start = time.perf_counter()
    for _ in range(rounds):
        left = [requests // rounds]
        threads = [threading.Thread(target=client, args=(n, left)) for n in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        memory.append(memory_bytes(pid=server.process.pid) / 2**20)
    seconds = time.perf_counter() - start
    p50, p99 = (float(np.percentile(times, q)) * 1e3 for q in (50, 99))
    return {"errors": len(errors), "per_second": requests / seconds, "rss_mb": memory,
            "p50_ms": p50, "p99_ms": p99}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vectors", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--queries", type=int, default=1000, help="recall queries")
    parser.add_argument("--latency-queries", type=int, default=200)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--work", help="scratch folder (default: a temporary one)")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="serve_bench."))
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    print(f"{torch.get_num_threads()} threads; work in {work}")

    # 1. build rate from files
    manifest = write_samples(work / "samples")
    encoder = Encoder.load(make_model(work / "model224", 1024))
    start = time.perf_counter()
    report = build_index(encoder, from_manifest(manifest), work / "files", progress=False)
    seconds = time.perf_counter() - start
    rate = report["images"] / seconds
    print(f"build from files: {report['images']} images in {seconds:.1f} s = {rate:.1f} "
          "images/s (224 px, EfficientNet-Lite0, batch 32)")  # fmt: skip

    # 2. a million synthetic embeddings, exact and approximate indexes
    vectors = list(synthetic(args.vectors + args.queries, args.dim, seed=0))
    everything = np.concatenate(vectors)
    del vectors
    parts, queries = [everything[: args.vectors]], everything[args.vectors :].astype(np.float32)
    files = [
        {"name": f"{i:07d}.jpg", "target": f"{i:07d}.jpg", "size": 0, "mtime_ns": 0, "sha256": ""}
        for i in range(args.vectors)
    ]
    model = make_model(work / "model", args.dim)
    reference = Encoder.load(model).reference
    built = {}
    for name, limit in (("approximate", ann.EXACT_LIMIT), ("exact", args.vectors)):
        (work / name).mkdir()
        start = time.perf_counter()
        meta = write_index(work / name, parts, files, None, [], reference,
                           IndexJob(exact_limit=limit), work / "synthetic")  # fmt: skip
        built[name] = meta
        print(f"{name} index of {args.vectors:,} x {args.dim}: built in "
              f"{time.perf_counter() - start:.1f} s; {json.dumps(meta['faiss'])}")  # fmt: skip

    # 3. recall of the approximate index on held-out queries
    truth = ann.exact_top(queries, parts, 10)
    index = ann.load(work / "approximate" / "index.faiss", built["approximate"]["faiss"])
    start = time.perf_counter()
    _, found = index.search(queries, 10)
    per_query = (time.perf_counter() - start) / len(queries) * 1e3
    recall = ann.recall_at(found, truth, 10)
    print(f"approximate recall@10 on {len(queries)} held-out queries: {recall:.4f} "
          f"(target >= 0.95); faiss alone {per_query:.2f} ms/query in a batch")  # fmt: skip
    del index, everything, parts

    # 4. and 5. through the HTTP API
    for name in ("exact", "approximate"):
        server = Server(work / name)
        try:
            p50, p99 = latency(server, args.latency_queries, seed=1)
            rss = memory_bytes(pid=server.process.pid) / 2**20
            print(f"{name}: HTTP text query p50 {p50:.1f} ms, p99 {p99:.1f} ms "
                  f"({args.latency_queries} sequential); server RSS {rss:.0f} MB")  # fmt: skip
            if name == "approximate":
                load = load_test(server, args.requests, args.clients)
                memory = " -> ".join(f"{m:.0f}" for m in load["rss_mb"])
                ratio = load["rss_mb"][-1] / load["rss_mb"][1]
                print(f"load test: {args.requests} requests (10% image uploads) from "
                      f"{args.clients} clients in 4 rounds, {load['errors']} errors, "
                      f"{load['per_second']:.0f} requests/s, p50 {load['p50_ms']:.0f} ms, p99 "
                      f"{load['p99_ms']:.0f} ms; server RSS before and after each round {memory} "
                      f"MB: last / after the first round {ratio:.2f}x")  # fmt: skip
        finally:
            server.stop()
    if not args.work:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
