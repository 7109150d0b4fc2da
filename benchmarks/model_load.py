"""A shared model directory against an older selhn's: the size of a probe's directory (embedding
1024 on 1280-channel features, the frozen all-MiniLM-L6-v2) and the time a new process takes to
import selhn and ``Encoder.load`` it, median of ``--repeats`` processes each.

    python benchmarks/model_load.py --baseline 2a8c5ec

The baseline is a commit of this repository, checked out into a temporary worktree; each
version saves and loads its own directory. Time it on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SAVE = """
import torch
from selhn.checkpoint import save_model
from selhn.models import create_model
from selhn.models.transformer import WordPieceTokenizer
vocab = WordPieceTokenizer()
torch.manual_seed(0)
model = create_model("probe", img_dim=1280, embed_size=1024, vocab_size=len(vocab))
model.load_pretrained(vocab)
save_model({out!r}, model, vocab, {{"epoch": 1}})
"""

LOAD = """
import time
start = time.perf_counter()
from selhn.inference.encoder import Encoder
imported = time.perf_counter()
encoder = Encoder.load({out!r})
encoder.encode_texts(["a dog on a beach"])
print(imported - start, time.perf_counter() - start)
"""


def run(source: Path, code: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(source / "src")}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr)
    return done.stdout


def measure(source: Path, out: Path, repeats: int) -> tuple[float, float, float]:
    """(MB on disk, median seconds to import, load and encode one caption, median seconds of
    the import alone) of one version."""
    run(source, SAVE.format(out=str(out)))
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 1e6
    times = [run(source, LOAD.format(out=str(out))).split() for _ in range(repeats)]
    whole = statistics.median(float(total) for _, total in times)
    return size, whole, statistics.median(float(imported) for imported, _ in times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, help="a commit of this repository")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "baseline"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(old),
                        args.baseline], check=True, capture_output=True)  # fmt: skip
        try:
            before = measure(old, Path(tmp) / "old-model", args.repeats)
            after = measure(ROOT, Path(tmp) / "new-model", args.repeats)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)],
                           check=True)  # fmt: skip
    for name, (size, whole, imported) in ((args.baseline, before), ("this tree", after)):
        print(f"{name}: {size:.1f} MB, {whole:.2f} s to import, load and encode "
              f"({imported:.2f} s of it importing Encoder)")  # fmt: skip
    print(f"ratio: size {after[0] / before[0]:.3f}x, time {after[1] / before[1]:.3f}x")


if __name__ == "__main__":
    main()
