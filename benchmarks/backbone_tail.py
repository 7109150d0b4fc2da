"""Does letting the backbone's last stage learn beat the probe's frozen features on real sets?

Two image sides, the same everything else: EfficientNet-Lite0's last stage (blocks 11-15 and the
1x1 head convolution, stride 32) frozen, which gives the probe's features (the 7 x 7 grid of
``selhn features``, mean-pooled, one linear map), or learning. The stage runs on trunk
activations cached once per set (the input of block 11: 112 channels x 14 x 14 at 224 px), so a
step costs the stage, not the whole backbone. Its BatchNorm statistics stay frozen.

Text side: frozen all-MiniLM-L6-v2 sentence embeddings (the mean of its token features) and one
linear map, as the probe. selhn's InfoNCE (learnable temperature from 0.07), AdamW (learning rate
5e-4, the learning stage 1e-3, weight decay 0.01), batches of 128 captions, early stop after 8
epochs without a better dev rSum (at most 60); the test rSum is that of the best dev epoch.
Training images are flipped left-right with probability 0.5 in both arms (cached both ways).

Sets are built under ``--work`` as ``real_data.py`` builds them; the ratio to the probe of
``real_data.py`` is printed where its runs of the same seeds are there.

Usage: python benchmarks/backbone_tail.py [--sets emoji,openclipart,samples] [--seeds 3]
           [--work runs/real_data]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from real_data import mean_std, report_path, set_manifest
from torch import Tensor, nn

from selhn.data.image_files import load_image
from selhn.data.manifest import by_split, read_manifest
from selhn.evaluation import embedding_metrics
from selhn.losses import InfoNCELoss
from selhn.models.backbones import GridBackbone, build_backbone
from selhn.models.probe import SentenceProbe
from selhn.models.stage import LastStage, trunk_activations

IMAGE_SIZE = 224
BATCH, MAX_EPOCHS, PATIENCE = 128, 60, 8
LR, STAGE_LR, WEIGHT_DECAY = 5e-4, 1e-3, 0.01
EMBED_SIZE = 1024


def sentences(captions: list[str]) -> Tensor:
    """(N, 384) frozen all-MiniLM-L6-v2 sentence embeddings, as the probe computes them."""
    probe = SentenceProbe(None, EMBED_SIZE)  # only its frozen transformer is used
    probe.load_pretrained()
    return probe.embed_texts(captions, batch_size=64)


def cached_inputs(
    manifest: Path, cache: Path, backbone: GridBackbone
) -> dict[str, dict[str, Tensor]]:
    """Per split: trunk activations ('flipped' too for train), sentence embeddings and the image
    of each caption; computed once into ``cache`` (the seconds that took are printed)."""
    if cache.exists():
        return torch.load(cache)
    started = time.perf_counter()
    data = {}
    for split, records in by_split(read_manifest(manifest)).items():
        acts, flipped = [], []
        for start in range(0, len(records), 32):
            part = records[start : start + 32]
            images = torch.stack([load_image(r.image, IMAGE_SIZE, r.source) for r in part])
            acts.append(trunk_activations(backbone, images).half())
            if split == "train":
                flipped.append(trunk_activations(backbone, images.flip(3)).half())
        captions = [(i, c) for i, r in enumerate(records) for c in r.captions]
        data[split] = {
            "trunk": torch.cat(acts),
            "sentences": sentences([c for _, c in captions]),
            "caption_image": torch.tensor([i for i, _ in captions]),
        }
        if flipped:
            data[split]["flipped"] = torch.cat(flipped)
    torch.save(data, cache)
    print(f"{manifest}: inputs computed in {time.perf_counter() - started:.0f} s", flush=True)
    return data


class StageImageSide(nn.Module):
    """Trunk activations -> the last stage and head (frozen or learning) -> mean of the 7 x 7
    cells -> Linear -> L2 norm."""

    def __init__(self, backbone: GridBackbone, learning: bool) -> None:
        super().__init__()
        self.stage = LastStage(backbone).requires_grad_(learning)
        self.fc = nn.Linear(backbone.channels, EMBED_SIZE)

    def train(self, mode: bool = True) -> StageImageSide:
        super().train(mode)
        self.stage.eval()  # BatchNorm statistics stay frozen
        return self

    def forward(self, acts: Tensor) -> Tensor:
        return F.normalize(self.fc(self.stage(acts).mean((2, 3))), dim=-1)


def rsum(image_side: nn.Module, text_side: nn.Module, split: dict[str, Tensor]) -> float:
    """rSum of a split's images against its captions (the image side left in train mode)."""
    image_side.eval()
    with torch.no_grad():
        images = torch.cat([image_side(a) for a in split["trunk"].split(256)])
        texts = F.normalize(text_side(split["sentences"]), dim=-1)
    image_side.train()
    owners = split["caption_image"].tolist()
    return embedding_metrics(images, texts, caption_to_image=owners)["rsum"]


def train(data: dict, backbone: GridBackbone, learning: bool, seed: int) -> dict[str, float]:
    """Train one arm; its test rSum at the best dev epoch, that dev rSum, epochs, seconds."""
    torch.manual_seed(seed)
    image_side, text_side = StageImageSide(backbone, learning), nn.Linear(384, EMBED_SIZE)
    loss = InfoNCELoss(0.07)
    heads = [*image_side.fc.parameters(), *text_side.parameters(), *loss.parameters()]
    groups = [{"params": heads, "lr": LR}]
    if learning:
        groups.append({"params": list(image_side.stage.parameters()), "lr": STAGE_LR})
    optimiser = torch.optim.AdamW(groups, weight_decay=WEIGHT_DECAY)
    train_split, started = data["train"], time.perf_counter()
    best = {"dev": -1.0, "epoch": 0, "state": None}
    epochs = 0
    while epochs < MAX_EPOCHS and epochs - best["epoch"] < PATIENCE:
        order = torch.randperm(len(train_split["caption_image"]))
        for batch in order.split(BATCH):
            owners = train_split["caption_image"][batch]
            flip = (torch.rand(len(batch)) < 0.5)[:, None, None, None]
            acts = torch.where(flip, train_split["flipped"][owners], train_split["trunk"][owners])
            texts = F.normalize(text_side(train_split["sentences"][batch]), dim=-1)
            value = loss(image_side(acts), texts, ids=owners)
            optimiser.zero_grad()
            value.backward()
            optimiser.step()
        epochs += 1
        dev = rsum(image_side, text_side, data["dev"])
        if dev > best["dev"]:
            state = (image_side.state_dict(), text_side.state_dict())
            best = {"dev": dev, "epoch": epochs, "state": copy.deepcopy(state)}
    image_side.load_state_dict(best["state"][0])
    text_side.load_state_dict(best["state"][1])
    return {
        "test": rsum(image_side, text_side, data["test"]),
        "dev": best["dev"],
        "best_epoch": best["epoch"],
        "epochs": epochs,
        "seconds": time.perf_counter() - started,
    }


def probe_rsum(work: Path, name: str, seed: int) -> float | None:
    """Test rSum of real_data.py's probe run of this seed, if it is there."""
    path = report_path(work / name / "runs" / f"probe-seed{seed}")
    return json.loads(path.read_text())["metrics"]["rsum"] if path.exists() else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", default="emoji,openclipart,samples")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path("runs/real_data"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    backbone = build_backbone()
    rows = []
    for name in args.sets.split(","):
        manifest = set_manifest(name, args.work)
        data = cached_inputs(manifest, args.work / name / "backbone_tail_inputs.pt", backbone)
        runs = {arm: [] for arm in ("frozen", "learning")}
        for seed in range(args.seeds):
            for arm in runs:
                run = train(data, backbone, arm == "learning", seed)
                runs[arm].append(run)
                print(
                    f"{name} {arm} seed {seed}: test rSum {run['test']:.1f}, best dev "
                    f"{run['dev']:.1f} at epoch {run['best_epoch']} of {run['epochs']}, "
                    f"{run['seconds']:.0f} s",
                    flush=True,
                )
        frozen = [r["test"] for r in runs["frozen"]]
        learning = [r["test"] for r in runs["learning"]]
        probes = [probe_rsum(args.work, name, s) for s in range(args.seeds)]
        to_probe = (
            f"{statistics.mean(learning) / statistics.mean(probes):.2f}"
            if None not in probes
            else "n/a"
        )
        minutes = statistics.mean(r["seconds"] for r in runs["learning"]) / 60
        rows.append(
            f"| {name} | {mean_std(frozen)} | {mean_std(learning)} | "
            f"{statistics.mean(learning) / statistics.mean(frozen):.2f} | {to_probe} | "
            f"{minutes:.1f} |"
        )
    print(f"\ntest rSum, mean ± std over {args.seeds} seeds")
    print("| set | last stage frozen | last stage learning | learning / frozen | "
          "learning / real_data.py probe | learning: train min |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
