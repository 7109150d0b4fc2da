"""DistributedDataParallel training on the CPU: 2 processes, gloo backend.

The reference is a single process on the concatenated batch. BatchNorm runs in eval mode in both
(per-rank batch statistics differ from the global batch's by nature; SyncBatchNorm is the CUDA
answer), so the comparison is exact up to float rounding.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from selhn.checkpoint import load_model
from selhn.config.resolve import resolve
from selhn.config.schema import load_config
from selhn.data.batch import Batch
from selhn.data.duplicates import SplitDuplicates
from selhn.data.facts import DataFacts
from selhn.data.image_files import write_image_splits
from selhn.data.manifest import read_manifest
from selhn.data.synth import SynthConfig, generate
from selhn.models import RVSEPP, create_model
from selhn.models.backbones import build_backbone
from selhn.training.objective import TrainingObjective, make_loss
from selhn.training.run_dir import read_log
from selhn.training.trainer import train, train_step
from selhn.utils.distributed import Distributed

pytestmark = [pytest.mark.distributed]


WORLD = 2
PER_RANK = 5
SCENARIOS = [  # (loss, false negatives, global negatives)
    ("selhn", "same_image", True),
    ("selhn", "none", False),
    ("infonce", "none", True),
    ("infonce", "none", False),
    ("selhn", "same_caption", True),
    ("infonce", "same_caption", True),
    ("selnce", "same_caption", True),
]
# same_caption: image 4 is image 1's file again; caption 3 (of image 3) reads as caption 0 (of
# image 0) and caption 8 (of image 6) as caption 4 (of image 4), on the other rank
DUPLICATES = SplitDuplicates.of(
    np.array([0, 1, 2, 3, 1, 5, 6]),
    np.array([0, 1, 2, 0, 4, 5, 6, 7, 4, 9]),
    np.array([0, 1, 2, 3, 4, 0, 5, 2, 6, 1]),
)


def global_batch() -> Batch:
    """10 pairs over 7 images; images 0 and 2 have a caption on each rank."""
    gen = torch.Generator().manual_seed(3)
    ids = torch.tensor([0, 1, 2, 3, 4, 0, 5, 2, 6, 1])
    image_features = torch.randn(7, 6, 8, generator=gen)
    lengths = torch.tensor([6, 4, 5, 3, 6, 2, 4])
    tokens = torch.randint(1, 30, (10, 7), generator=gen)
    token_lengths = torch.tensor([7, 5, 3, 6, 4, 7, 2, 5, 6, 3])
    tokens[torch.arange(7)[None, :] >= token_lengths[:, None]] = 0
    return Batch((image_features[ids], lengths[ids]), tokens, token_lengths, ids,
                 caption_ids=torch.arange(10))  # fmt: skip


def shard(batch: Batch, rank: int) -> Batch:
    rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
    images = tuple(t[rows] for t in batch.image_input)
    return Batch(images, batch.tokens[rows], batch.token_lengths[rows], batch.image_ids[rows],
                 caption_ids=batch.caption_ids[rows])  # fmt: skip


def one_step(
    batch: Batch, loss_name: str, false_negatives: str, global_negatives: bool, job: Distributed
) -> dict:
    """Loss and gradients of one step from the seeded model, BatchNorm in eval mode."""
    torch.manual_seed(0)
    model = create_model(
        "rvsepp", vocab_size=30, img_dim=8, embed_size=16, word_dim=8, mlp_hidden=8
    )
    for module in model.modules():
        if isinstance(module, nn.BatchNorm1d):
            module.eval()
    if false_negatives != "none":  # the trainer encodes each image of a batch once
        batch = batch.one_row_per_image()
    loss_fn = make_loss(loss_name, margin=0.2, epsilon=0.05, gather=global_negatives)
    duplicates = DUPLICATES if false_negatives == "same_caption" else None
    objective = TrainingObjective(model, {loss_name: loss_fn}, false_negatives == "same_image",
                                  duplicates)  # fmt: skip
    optimizer = torch.optim.SGD(objective.parameters(), lr=0.0)
    network = nn.parallel.DistributedDataParallel(objective) if job.enabled else objective
    loss = train_step(network, objective, model, optimizer, batch, 0.0)["loss"]
    named = [*model.named_parameters(), *loss_fn.named_parameters()]
    return {"loss": loss.item(), "grads": {n: p.grad.clone() for n, p in named}}


def worker(rank: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    job = Distributed(rank, WORLD, rank)
    mine = shard(global_batch(), rank)
    results = [one_step(mine, *scenario, job) for scenario in SCENARIOS]
    torch.save(results, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    mp.spawn(worker, args=(str(tmp / "store"), str(tmp)), nprocs=WORLD, join=True)
    return [torch.load(tmp / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def assert_grads_close(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-5, rtol=1e-5, msg=name)


@pytest.mark.parametrize("index", range(len(SCENARIOS)), ids=[str(s) for s in SCENARIOS])
def test_two_processes_match_one(ranks, index):
    loss_name, false_negatives, global_negatives = SCENARIOS[index]
    single = Distributed()
    if global_negatives:  # every rank: the loss and gradients of one process on the whole batch
        whole = one_step(global_batch(), loss_name, false_negatives, False, single)
        for rank in range(WORLD):
            assert ranks[rank][index]["loss"] == pytest.approx(whole["loss"], abs=1e-5)
            assert_grads_close(ranks[rank][index]["grads"], whole["grads"])
    else:  # each rank: its own shard's loss; gradients: the mean over the shards
        batch = global_batch()
        shards = [one_step(shard(batch, r), loss_name, false_negatives, False, single)
                  for r in range(WORLD)]  # fmt: skip
        for rank in range(WORLD):
            assert ranks[rank][index]["loss"] == pytest.approx(shards[rank]["loss"], abs=1e-5)
            mean = {n: (g + shards[1]["grads"][n]) / 2 for n, g in shards[0]["grads"].items()}
            assert_grads_close(ranks[rank][index]["grads"], mean)


TINY = [
    "--model.embed_size=16",
    "--model.word_dim=8",
    "--model.mlp_hidden=8",
    "--train.batch_size=16",
    "--train.lr=2e-3",
    "--train.log_every=1",
    "--train.warmup_steps=0",  # a constant learning rate: no schedule to follow
    "--train.lr_decay_epoch=100",
    "--train.patience=0",
    "--no-progress",
]


def torchrun(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += [f"--nproc-per-node={WORLD}", "-m", "selhn", "train", *args, *TINY]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_torchrun_trains_and_resumes_with_another_process_count(tmp_path):
    data, run = tmp_path / "data", tmp_path / "run"
    generate(data, SynthConfig(train=48, dev=16, test=16, regions=8, feature_dim=8, seed=2))
    first = torchrun("--data", str(data), "--out", str(run), "--epochs", "1", "--global-negatives")
    assert first.stdout.count("best dev rSum") == 1  # rank 0 alone reports
    # 240 captions over 2 ranks of 8 pairs: 15 steps, logged once each (by rank 0 only)
    assert [r["step"] for r in read_log(run)[0]] == list(range(15))
    assert [r["epoch"] for r in read_log(run)[1]] == [1]

    config = load_config(run / "config.yaml", {"train.epochs": 2})
    assert config.train.global_negatives
    train(config, data, run, resume=True, progress=False)  # one process: 240 / 16 = 15 steps
    assert [r["step"] for r in read_log(run)[0]] == list(range(30))

    torchrun("--data", str(data), "--out", str(run), "--resume", "--epochs", "3")
    evals = read_log(run)[1]
    assert [r["epoch"] for r in evals] == [1, 2, 3]
    assert (run / "last").resolve().name == "epoch-003"
    model, _, meta = load_model(run / "last")
    assert meta["epoch"] == 3 and isinstance(model, RVSEPP)
    assert max(r["rsum"] for r in evals) > evals[0]["rsum"]


def test_settings_that_need_cuda_or_several_processes_are_refused(tmp_path):
    data = tmp_path / "data"
    generate(data, SynthConfig(train=8, dev=4, test=4, regions=8, feature_dim=8, seed=2))
    cases = [
        ({"train.compile": True}, r"train.compile=true needs a CUDA device"),
        ({"train.sync_batchnorm": True}, r"train.sync_batchnorm=true needs several processes"),
        ({"train.amp": "bf16"}, r"train.amp=bf16 needs a CUDA device"),
    ]
    for overrides, message in cases:
        facts = DataFacts.read(data)
        config = resolve(facts, "none", overrides={"train.device": "cpu", **overrides}).config
        with pytest.raises(ValueError, match=message):
            train(config, data, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def images_worker(rank: int, store: str, data: str, out: str) -> None:
    """Train from images in a 2-process job; save this rank's backbone weights."""
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    models = []
    original = RVSEPP.set_backbone_trainable

    def capture(model, trainable):  # the model this rank trains
        models.append(model)
        return original(model, trainable)

    RVSEPP.set_backbone_trainable = capture
    config = resolve(DataFacts.read(data), "none", overrides={
        "model.backbone": "efficientnet-lite0", "model.image_size": 64, "model.embed_size": 16,
        "model.word_dim": 8, "model.mlp_hidden": 8, "train.batch_size": 16, "train.epochs": 2,
        "train.lr": 1e-3, "train.device": "cpu",
    }, world_size=WORLD).config  # fmt: skip
    train(config, data, f"{out}/run", progress=False)
    torch.save(models[-1].image_encoder.backbone.state_dict(), f"{out}/backbone{rank}.pt")
    dist.destroy_process_group()


def test_every_rank_trains_the_same_backbone_once_it_learns(samples, tmp_path):
    """The backbone learns from epoch 2; DDP must then average its gradients too."""
    write_image_splits(read_manifest(samples), tmp_path / "data")
    args = (str(tmp_path / "store"), str(tmp_path / "data"), str(tmp_path))
    mp.spawn(images_worker, args=args, nprocs=WORLD, join=True)
    states = [torch.load(tmp_path / f"backbone{r}.pt", weights_only=True) for r in range(WORLD)]
    pretrained = build_backbone().state_dict()
    assert any(not torch.equal(states[0][k], pretrained[k]) for k in pretrained)
    for name in pretrained:
        torch.testing.assert_close(states[1][name], states[0][name], atol=1e-6, rtol=0, msg=name)
    saved = load_model(tmp_path / "run" / "last")[0].image_encoder.backbone.state_dict()
    assert all(torch.equal(saved[k], states[0][k]) for k in pretrained)
