"""Faults and bad input: every case ends in a clear error or a correct result, none in a
traceback, none silently wrong, and no run loses a finished checkpoint.

Kills are real (SIGKILL to a ``selhn train`` process); a full disk is a file size limit
(RLIMIT_FSIZE) on the training process, whose writes then fail as they would on a full disk.
"""

import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from selhn.checkpoint import load_model
from selhn.cli import main
from selhn.data.layout import read_captions
from selhn.data.manifest import read_manifest
from selhn.data.precomp import open_split
from selhn.data.synth import SynthConfig, generate
from selhn.data.vocab import Vocabulary
from selhn.evaluation.metrics import embedding_metrics, retrieval_metrics
from selhn.evaluation.retrieval import top_k
from selhn.losses import AllNegativesLoss, HardestNegativeLoss, InfoNCELoss, SelHNLoss
from selhn.training.run_dir import read_log

TINY = [
    "--model.embed_size=32",
    "--model.word_dim=16",
    "--model.mlp_hidden=16",
    "--batch-size=16",
    "--lr=2e-3",
    "--train.log_every=1",
    "--train.warmup_steps=0",  # a constant learning rate: no schedule to follow
    "--train.lr_decay_epoch=100",
    "--train.patience=0",
    "--no-progress",
]
# one thread: the same arithmetic in every process, so resumed runs can be compared bit for bit
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def selhn(*argv: str, limit_file_size: int | None = None) -> subprocess.Popen:
    """``selhn ARGV`` in its own process (optionally with a file size limit: a full disk)."""

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_file_size, limit_file_size))

    return subprocess.Popen(
        [sys.executable, "-m", "selhn", *argv],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=limit if limit_file_size else None,
    )


def finish(process: subprocess.Popen, timeout: float = 300) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def train_argv(data: Path, run: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(data), "--out", str(run), *TINY, *extra]


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return load_model(checkpoint)[0].state_dict()


def assert_same_run(a: Path, b: Path) -> None:
    """Same weights in ``last``, same log (steps and evaluations)."""
    for (name, x), (_, y) in zip(
        weights(a / "last").items(), weights(b / "last").items(), strict=True
    ):
        assert torch.equal(x, y), name
    assert read_log(a) == read_log(b)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    generate(root, SynthConfig(train=64, dev=16, test=16, regions=8, feature_dim=32, seed=1))
    return root


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    """A finished 2-epoch run, trained in its own process (the reference for resumes)."""
    out = tmp_path_factory.mktemp("runs") / "whole"
    code, _, err = finish(selhn(*train_argv(data, out, "--epochs", "2")))
    assert code == 0, err
    return out


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---------------------------------------------------------------- silently wrong, now errors


def test_non_finite_embeddings_are_an_error_not_perfect_hits():
    torch.manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(10, 8), dim=1)
    txt = torch.nn.functional.normalize(torch.randn(50, 8), dim=1)
    img[:3] = float("nan")  # 30% of the images
    with pytest.raises(ValueError, match=r"3 of 10 image embeddings are not finite"):
        embedding_metrics(img, txt)
    with pytest.raises(ValueError, match=r"50 of 50 caption embeddings are not finite"):
        embedding_metrics(img.nan_to_num(), torch.full_like(txt, float("nan")))
    member = torch.nn.functional.normalize(torch.randn(10, 8), dim=1)
    with pytest.raises(ValueError, match=r"of ensemble member 1 are not finite"):
        embedding_metrics([member, img], [txt, txt])
    huge = torch.full((10, 8), 1e20)  # finite, but its dot products overflow float32
    with pytest.raises(ValueError, match=r"embeddings too large for torch.float32"):
        embedding_metrics(huge, txt)
    with pytest.raises(ValueError, match=r"3 of 10 gallery embeddings are not finite"):
        top_k(txt[:1], img, 5)


def test_non_finite_scores_are_found_in_the_ranking_pass():
    torch.manual_seed(1)
    sims = torch.randn(40, 200)
    sims[7, 33], sims[39, 199] = float("nan"), float("inf")
    with pytest.raises(ValueError, match=r"2 of 8000 scores are not finite"):
        retrieval_metrics(sims)
    large = torch.full((40, 200), 3e38)  # finite; its chunk sums overflow, its ranks do not
    large[torch.arange(40), torch.arange(0, 200, 5)] = 3.1e38
    assert retrieval_metrics(large)["i2t_r1"] == 100.0


@pytest.mark.subprocess
def test_a_model_with_nan_weights_or_overflowing_features_cannot_be_evaluated(
    data, run, tmp_path, capsys
):
    nan_model = tmp_path / "nan"
    shutil.copytree(run / "best", nan_model)
    state = load_file(nan_model / "model.safetensors")
    nan_state = {
        k: v.float().fill_(float("nan")) if v.is_floating_point() else v for k, v in state.items()
    }
    save_file(nan_state, nan_model / "model.safetensors")
    code, out, err = cli(capsys, "eval", "--checkpoint", str(nan_model), "--data", str(data))
    assert code == 2 and "16 of 16 image embeddings are not finite" in err and "rSum" not in out

    overflow = tmp_path / "overflow"
    shutil.copytree(data, overflow)
    features = np.load(overflow / "test_ims.npy")
    features[5] = 3e38  # finite data that overflows inside the model
    np.save(overflow / "test_ims.npy", features)
    code, out, err = cli(capsys, "eval", "--checkpoint", str(run / "best"), "--data", str(overflow))
    assert code == 2 and "1 of 16 image embeddings are not finite" in err
    argv = ["search", "--checkpoint", str(run / "best"), "--data", str(overflow), "--query", "a"]
    code, out, err = cli(capsys, *argv)
    assert code == 2 and "1 of 16 gallery embeddings are not finite" in err


@pytest.mark.parametrize("separator", ["\u0085", "\u2028", "\u2029", "\x1c", "\x0b", "\x0c"])
def test_unicode_line_breaks_stay_inside_a_caption(tmp_path, separator):
    captions = [f"a dog{separator}runs on grass {i}" for i in range(10)] + ["last one"]
    (tmp_path / "train_caps.txt").write_text("\n".join(captions) + "\r\n", encoding="utf-8")
    assert read_captions(tmp_path / "train_caps.txt") == captions

    image = tmp_path / "a.png"
    image.write_bytes(b"")
    entry = {"image": "a.png", "captions": [f"x{separator}y"], "split": "train"}
    (tmp_path / "manifest.jsonl").write_text(json.dumps(entry, ensure_ascii=False) + "\n")
    [record] = read_manifest(tmp_path / "manifest.jsonl")
    assert record.captions == ("x y",)  # any white space between words is one space


@pytest.mark.subprocess
def test_resume_keeps_the_runs_own_settings(data, run, tmp_path, capsys):
    part = tmp_path / "part"
    code, _, err = finish(selhn(*train_argv(data, part, "--epochs", "1")))
    assert code == 0, err
    saved_yaml = (part / "config.yaml").read_text()
    for change, key in (
        (["--loss", "infonce"], "loss.name: 'selhn' -> 'infonce'"),
        (["--model.embed_size=64"], "model.embed_size: 32 -> 64"),
        (["--train.lr_decay_epoch=1"], "train.lr_decay_epoch: 100.0 -> 1.0"),
    ):
        argv = ["train", "--data", str(data), "--out", str(part), "--resume", *change]
        code, _, err = cli(capsys, *argv)
        assert code == 2 and f"--resume cannot change what {part / 'last'}" in err, err
        assert key in err
        assert (part / "config.yaml").read_text() == saved_yaml  # nothing written
    other = tmp_path / "other-data"
    generate(other, SynthConfig(train=64, dev=16, test=16, regions=8, feature_dim=32, seed=2))
    code, _, err = cli(capsys, "train", "--data", str(other), "--out", str(part), "--resume")
    assert code == 2 and "its train split is not the one" in err

    (part / "config.yaml").unlink()  # lost: the checkpoint's config.json is the source of truth
    argv = ["train", "--data", str(data), "--out", str(part), "--resume", "--epochs", "2"]
    code, out, err = finish(selhn(*argv, "--no-progress"))
    assert code == 0, err
    assert "steps  20 per epoch (global batch 16)" in out  # the run's batch, not the default
    assert "batch_size: 16" in (part / "config.yaml").read_text()
    assert_same_run(run, part)


@pytest.mark.subprocess
def test_a_run_directory_has_one_writer(data, tmp_path):
    out = tmp_path / "conc"
    first = selhn(*train_argv(data, out, "--epochs", "3"))
    deadline = time.monotonic() + 60
    while not (out / ".lock").exists() or not (out / ".lock").read_text().strip():
        assert time.monotonic() < deadline and first.poll() is None
        time.sleep(0.05)
    code, _, err = finish(selhn(*train_argv(data, out, "--epochs", "3")))
    assert code == 2 and f"another training writes it (process {first.pid} on" in err
    code, _, err = finish(first)
    assert code == 0, err
    evals = read_log(out)[1]
    assert [r["epoch"] for r in evals] == [1, 2, 3]  # one run's records, none interleaved


@pytest.mark.subprocess
def test_a_stale_lock_of_a_killed_run_is_taken_over(data, tmp_path):
    out = tmp_path / "stale"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from selhn.training.run_dir import RunDirectory; "
            "run = RunDirectory(sys.argv[1]); run.lock(); print('locked', flush=True); "
            "time.sleep(60)",
            str(out),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    code, _, err = finish(selhn(*train_argv(data, out, "--epochs", "1")))
    assert code == 2 and f"process {holder.pid}" in err
    holder.kill()
    holder.wait()
    code, _, err = finish(selhn(*train_argv(data, out, "--epochs", "1")))
    assert code == 0, err


@pytest.mark.subprocess
def test_embeddings_of_another_split_or_model_are_refused(data, run, tmp_path, capsys):
    model = ["--checkpoint", str(run / "best"), "--data", str(data)]
    emb = tmp_path / "dev.pt"
    assert cli(capsys, "encode", *model, "--split", "dev", "--out", str(emb))[0] == 0
    code, _, err = cli(capsys, "search", *model, "--query", "a", "--embeddings", str(emb))
    assert code == 2 and "encodes another split (dev: 16 images, 80 captions) than test" in err
    changed = tmp_path / "changed"
    shutil.copytree(run / "best", changed)
    state = load_file(changed / "model.safetensors")
    state["image_encoder.fc.bias"] += 0.01
    save_file(state, changed / "model.safetensors")
    other = ["--checkpoint", str(changed), "--data", str(data)]
    code, _, err = cli(capsys, "search", *other, "--split", "dev", "--query", "a",
                       "--embeddings", str(emb))  # fmt: skip
    assert code == 2 and "encoded by another model" in err
    code, out, _ = cli(capsys, "search", *model, "--split", "dev", "--query", "a", "--json",
                       "--embeddings", str(emb))  # fmt: skip
    assert code == 0 and len(json.loads(out)["hits"]) == 5
    (tmp_path / "garbage.pt").write_bytes(b"not a torch file")
    code, _, err = cli(capsys, "search", *model, "--query", "a", "--embeddings",
                       str(tmp_path / "garbage.pt"))  # fmt: skip
    assert code == 2 and "garbage.pt: cannot read embeddings written by selhn encode" in err


@pytest.mark.subprocess
def test_small_silent_cases_now_speak(data, run, tmp_path, capsys):
    with pytest.raises(ValueError, match=r"caption_to_image must hold integer image indices"):
        retrieval_metrics(torch.zeros(2, 4), caption_to_image=[0.0, 1.0, 1.0, 0.0])
    with pytest.raises(ValueError, match=r"neither of them 0"):
        retrieval_metrics(torch.zeros(0, 0))
    with pytest.raises(ValueError, match=r"no images or no captions"):
        embedding_metrics(torch.zeros(0, 4), torch.zeros(0, 4))

    model = ["--checkpoint", str(run / "best"), "--data", str(data), "--json"]
    code, out, _ = cli(capsys, "search", *model, "--query", "a tiny zyzzyva and a quokka")
    warnings = json.loads(out)["warnings"]
    assert code == 0 and warnings == ["words the model does not know: zyzzyva, quokka"]
    code, _, err = cli(capsys, "search", *model, "--query", "  ")
    assert code == 2 and "--query: the query is empty" in err

    specials = tmp_path / "vocab.json"
    Vocabulary(["<pad>", "<start>", "<end>", "<unk>"]).save(specials)
    argv = train_argv(data, tmp_path / "unk", "--epochs", "1", f"--data.vocab={specials}")
    code, _, err = cli(capsys, *argv)
    assert code == 2 and "knows none of the captions' words" in err

    long = tmp_path / "long"
    shutil.copytree(data, long)
    captions = read_captions(long / "train_caps.txt")
    captions[16] = " ".join(["word"] * 2000)
    (long / "train_caps.txt").write_text("\n".join(captions) + "\n")
    code, out, _ = cli(capsys, *train_argv(long, tmp_path / "long-run", "--epochs", "1"))
    assert code == 0
    assert "warning: 1 captions of" in out and "(the longest: 2000 words, line 17)" in out

    image = tmp_path / "x.png"
    image.write_bytes(b"")
    line = json.dumps({"image": "x.png", "captions": ["a"], "split": "train"})
    (tmp_path / "dup.jsonl").write_text(f"{line}\n{line}\n")
    with pytest.raises(ValueError, match=r"dup.jsonl:2: image .*x.png is already listed at "):
        read_manifest(tmp_path / "dup.jsonl")


# ---------------------------------------------------------------- tracebacks, now clear errors


LOSSES = [SelHNLoss(), HardestNegativeLoss(), AllNegativesLoss(), InfoNCELoss()]


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.complex64])
def test_losses_and_metrics_refuse_tensors_that_are_not_real_floats(dtype):
    values = torch.ones(4, 3, dtype=dtype)
    square = torch.ones(4, 4, dtype=dtype)
    named = f"must be a floating-point tensor; got {dtype}"
    for loss in LOSSES:
        with pytest.raises(TypeError, match=f"img_emb {named}"):
            loss(values, torch.randn(4, 3))
        with pytest.raises(TypeError, match=f"txt_emb {named}"):
            loss(torch.randn(4, 3), values)
        with pytest.raises(TypeError, match=f"scores {named}"):
            loss.from_scores(square)
    with pytest.raises(TypeError, match=f"sims {named}"):
        retrieval_metrics(torch.ones(2, 10, dtype=dtype))
    with pytest.raises(TypeError, match=f"img_emb {named}"):
        embedding_metrics(torch.ones(2, 3, dtype=dtype), torch.randn(10, 3))
    with pytest.raises(TypeError, match=f"gallery {named}"):
        top_k(torch.randn(1, 3), values, 2)


def test_losses_refuse_scores_that_overflow():
    torch.manual_seed(0)
    huge = torch.randn(4, 8) * 1e20  # finite; its scores overflow (unchecked: every loss NaN)
    large = (torch.randn(4, 8) * 1e17, torch.randn(4, 8) * 1e18)  # scores up to about 1e36
    for loss in LOSSES:
        for img, txt in ((huge, huge), large):
            with pytest.raises(ValueError, match=r"img_emb and txt_emb are too large"):
                loss(img, txt)
        with pytest.raises(ValueError, match=r"scores are too large: \|score\| reaches 1e\+37"):
            loss.from_scores(torch.eye(4) * 1e37)
        assert torch.isfinite(loss(torch.randn(4, 8) * 1e3, torch.randn(4, 8) * 1e3))


@pytest.mark.subprocess
@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: p.write_bytes(p.read_bytes()[:1000]), "cannot read the model's weights"),
        (lambda p: p.write_bytes(b""), "cannot read the model's weights"),
        (lambda p: p.write_bytes(os.urandom(4000)), "cannot read the model's weights"),
        (lambda p: p.unlink(), "model.safetensors: not found"),
        (
            lambda p: (p.parent / "config.json").write_text(
                (p.parent / "config.json")
                .read_text()
                .replace('"embed_size": 32', '"embed_size": 8', 1)
            ),
            "these weights do not fit the model",
        ),
        (lambda p: (p.parent / "config.json").write_text("{"), "config.json: not valid JSON"),
    ],
    ids=["truncated", "empty", "garbage", "missing", "other-config", "torn-config"],
)
def test_a_damaged_checkpoint_is_a_clear_error(data, run, tmp_path, capsys, damage, message):
    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(run / "best", checkpoint)
    damage(checkpoint / "model.safetensors")
    code, _, err = cli(capsys, "eval", "--checkpoint", str(checkpoint), "--data", str(data))
    assert code == 2 and message in err and str(checkpoint) in err
    assert "Traceback" not in err and "weights_only=False" not in err


@pytest.mark.subprocess
def test_data_of_another_feature_dimension(data, run, tmp_path, capsys):
    other = tmp_path / "dim16"
    generate(other, SynthConfig(train=64, dev=16, test=16, regions=8, feature_dim=16, seed=1))
    code, _, err = cli(capsys, "eval", "--checkpoint", str(run / "best"), "--data", str(other))
    assert code == 2 and "16 channels per region, but the model expects 32" in err
    argv = ["eval", "--checkpoint", str(run / "best"), "--data", str(data)]
    code, _, err = cli(capsys, *argv, "--ensemble", str(run / "last"))
    assert code == 0
    copy = tmp_path / "run"
    shutil.copytree(run, copy, symlinks=True)
    code, _, err = cli(capsys, "train", "--data", str(other), "--out", str(copy), "--resume")
    assert code == 2 and "16 channels per region, but the model expects 32" in err


@pytest.mark.subprocess
def test_outputs_into_a_missing_folder_fail_before_any_work(data, run, tmp_path, capsys,
                                                            monkeypatch):  # fmt: skip
    import selhn.evaluation.evaluate

    def never(*args, **kwargs):
        raise AssertionError("encoded before checking the output")

    monkeypatch.setattr(selhn.evaluation.evaluate, "encode_split", never)
    model = ["--checkpoint", str(run / "best"), "--data", str(data)]
    for argv in (
        ["eval", *model, "--save-sims", str(tmp_path / "no" / "sims.pt")],
        ["eval", *model, "--json", str(tmp_path / "no" / "m.json")],
        ["encode", *model, "--out", str(tmp_path / "no" / "e.pt")],
    ):
        code, _, err = cli(capsys, *argv)
        assert code == 2 and f"folder {tmp_path / 'no'} does not exist" in err


@pytest.mark.training
def test_bad_files_are_named(data, tmp_path, capsys):
    scan = tmp_path / "scan_vocab.json"
    scan.write_text(json.dumps({"word2idx": ["<pad>", "<start>"], "idx2word": {}}))
    with pytest.raises(ValueError, match=r"scan_vocab.json: 'word2idx' must map each word"):
        Vocabulary.load(scan)

    latin = tmp_path / "latin"
    shutil.copytree(data, latin)
    captions = (latin / "test_caps.txt").read_bytes().split(b"\n")
    captions[3] = b"a caf\xe9 on the corner"
    (latin / "test_caps.txt").write_bytes(b"\n".join(captions))
    with pytest.raises(ValueError, match=r"test_caps.txt:4: not UTF-8 text \(byte 0xe9"):
        open_split(latin, "test")

    job = tmp_path / "features" / "features.json"
    job.parent.mkdir()
    job.write_text('{"backbone": "efficientnet-lite0", "image_si')
    manifest = tmp_path / "m.jsonl"
    (tmp_path / "a.png").write_bytes(b"")
    manifest.write_text(json.dumps({"image": "a.png", "captions": ["a"], "split": "train"}))
    code, _, err = cli(capsys, "features", "--manifest", str(manifest), "--out", str(job.parent))
    assert code == 2 and f"{job}: not valid JSON" in err

    code, _, err = cli(capsys, *train_argv(data, tmp_path / "r", "--train.lr=inf"))
    assert code == 2 and "train.lr must be finite; got inf" in err
    assert not (tmp_path / "r").exists()


def test_features_at_a_size_too_small_for_the_backbone(samples, tmp_path, capsys):
    argv = ["features", "--manifest", str(samples), "--out", str(tmp_path / "f"), "--no-progress"]
    code, _, err = cli(capsys, *argv, "--image-size", "8")
    assert code == 2 and "image size 8 px is too small for the backbone" in err
    code, out, err = cli(capsys, *argv, "--image-size", "64")  # the refusal left nothing behind
    assert code == 0 and "(78 computed now)" in out, err


@pytest.mark.training
def test_features_made_otherwise_than_the_models_are_refused(
    features_model, samples, tmp_path, capsys
):
    features, checkpoint = features_model
    other = tmp_path / "f96"
    argv = ["features", "--manifest", str(samples), "--out", str(other), "--no-progress"]
    assert cli(capsys, *argv, "--image-size", "96")[0] == 0
    expected = (
        f"{other}: its features were made by efficientnet-lite0 at 96 px, but the model was "
        "trained on features made by efficientnet-lite0 at 64 px"
    )
    model = ["--checkpoint", str(checkpoint), "--data", str(other)]
    for command in (
        ["eval"],
        ["encode", "--out", str(tmp_path / "e.pt")],
        ["search", "--query", "a cat"],
    ):
        code, _, err = cli(capsys, *command, *model)
        assert code == 2 and expected in err, err
    assert cli(capsys, "eval", "--checkpoint", str(checkpoint), "--data", str(features))[0] == 0
    run = tmp_path / "run"
    shutil.copytree(checkpoint.parent, run, symlinks=True)
    code, _, err = cli(capsys, "train", "--data", str(other), "--out", str(run), "--resume")
    assert code == 2 and "at 96 px, but" in err and "at 64 px" in err, err


@pytest.mark.training
def test_resuming_a_finished_or_stopped_run_says_why_nothing_is_trained(
    data, run, tmp_path, capsys
):
    finished = tmp_path / "finished"
    shutil.copytree(run, finished, symlinks=True)
    code, out, _ = cli(capsys, "train", "--data", str(data), "--out", str(finished), "--resume")
    assert code == 0 and "nothing to train: all 2 epochs are done" in out
    assert "resume with --epochs above 2 to go on" in out
    stalled = tmp_path / "stalled"  # no learning: the dev rSum of epoch 1 is never beaten
    argv = train_argv(data, stalled, "--epochs", "4", "--lr=1e-30")
    code, out, _ = cli(
        capsys, *[a for a in argv if a != "--train.patience=0"], "--train.patience=1"
    )
    assert code == 0 and "stopping early" in out and "epoch 3/4" not in out
    resume = ["train", "--data", str(data), "--out", str(stalled), "--resume"]
    code, out, _ = cli(capsys, *resume, "--epochs", "6")
    assert code == 0 and "nothing to train: the run stopped early after epoch 2 (1 epochs" in out
    assert "resume with --train.patience above 1 (or 0: never stop) to go on" in out
    code, out, _ = cli(capsys, *resume, "--train.patience=0")
    assert code == 0 and "epoch 3/4" in out and "epoch 4/4" in out


@pytest.mark.subprocess
def test_a_torn_log_line_does_not_block_resume(data, run, tmp_path, capsys):
    part = tmp_path / "part"
    code, _, err = finish(selhn(*train_argv(data, part, "--epochs", "1")))
    assert code == 0, err
    with open(part / "log.jsonl", "a") as log:  # a kill in the middle of a record
        log.write('{"type": "step", "epoch": 1, "step": 20, "lo')
    code, out, err = finish(selhn(*train_argv(data, part, "--epochs", "2", "--resume")))
    assert code == 0, err
    assert "left out its last line, cut short by an interrupted write" in out
    assert_same_run(run, part)
    (part / "log.jsonl").write_text('{"type": "step"}\n{"epoch": 0}\n')
    code, _, err = cli(capsys, *train_argv(data, part, "--epochs", "3", "--resume"))
    assert code == 2 and "log.jsonl:1: expected a JSON object with an 'epoch'" in err


# ---------------------------------------------------------------- kills and a full disk


def log_records(run: Path) -> int:
    log = run / "log.jsonl"
    return log.read_bytes().count(b"\n") if log.exists() else 0


@pytest.mark.subprocess
def test_kill_9_at_random_moments_then_resume_exactly(data, run, tmp_path):
    """SIGKILL at seeded random moments of training (up to 4 kills), resuming after each: the
    finished run equals the uninterrupted one, and every kill left loadable ``last``/``best``.

    A moment is a random record of the log (of the 2 x 20 steps and 2 evaluations) plus a
    random delay of up to 20 ms, so kills land in steps, evaluations and checkpoint writes."""
    out, moments = tmp_path / "killed", random.Random(0)
    total = len(read_log(run)[0]) + len(read_log(run)[1])
    kills, resumes = 0, 0
    while True:
        resume = ["--resume"] if (out / "last").exists() else []
        resumes += bool(resume)
        process = selhn(*train_argv(data, out, "--epochs", "2", *resume))
        for line in iter(process.stdout.readline, ""):  # printed once the log is truncated
            if line.startswith("  run "):
                break
        if kills < 4 and log_records(out) < total - 1:
            target = moments.randint(log_records(out) + 1, total - 1)
            while log_records(out) < target and process.poll() is None:
                time.sleep(0.002)
            time.sleep(moments.uniform(0, 0.02))  # less than a step: the kill lands near it
            if process.poll() is None:
                process.kill()
                process.wait()
                kills += 1
                print(f"kill {kills} at record {log_records(out)} of {total}")
                for link in ("last", "best"):
                    if (out / link).exists():
                        load_model(out / link)
                continue
        code, _, err = finish(process)
        assert code == 0, err
        break
    assert kills >= 2 and resumes >= 1, (kills, resumes)  # the run was really interrupted
    assert_same_run(run, out)
    assert not list((out / "checkpoints").glob(".*"))


@pytest.mark.subprocess
def test_kill_9_while_a_checkpoint_is_written(data, run, tmp_path):
    """A kill after a checkpoint's weights are written but before it is complete: the
    hidden directory is removed at the next start, and the resumed run is exact."""
    out = tmp_path / "torn"
    kill_in_save = (
        "import os, signal, sys, selhn.checkpoint as c; save = c.write_weights\n"
        "def dying(value, path):\n"
        "    save(value, path)\n"
        "    if path.name == 'model.safetensors' and '.epoch-002.' in str(path.parent):\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "c.write_weights = dying\n"
        "from selhn.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    process = subprocess.run(
        [sys.executable, "-c", kill_in_save, *train_argv(data, out, "--epochs", "2")],
        env=ENV,
        capture_output=True,
        text=True,
    )
    assert process.returncode == -signal.SIGKILL
    leftovers = list((out / "checkpoints").glob(".epoch-002.*"))
    assert leftovers and (out / "last").resolve().name == "epoch-001"
    code, out_text, err = finish(selhn(*train_argv(data, out, "--epochs", "2", "--resume")))
    assert code == 0, err
    assert f"removed {leftovers[0]}, left by an interrupted write" in out_text
    assert_same_run(run, out)
    assert not list((out / "checkpoints").glob(".*"))


@pytest.mark.subprocess
def test_a_full_disk_stops_the_run_clearly_and_keeps_its_checkpoints(data, run, tmp_path):
    out = tmp_path / "full"
    code, _, err = finish(selhn(*train_argv(data, out, "--epochs", "1")))
    assert code == 0, err
    size = (out / "last" / "model.safetensors").stat().st_size
    # room for the log and small files, not for another weights file
    code, _, err = finish(
        selhn(*train_argv(data, out, "--epochs", "2", "--resume"), limit_file_size=size // 2)
    )
    assert code == 2 and "model.safetensors: writing failed" in err and "is the disk full?" in err
    assert "Traceback" not in err
    assert (out / "last").resolve().name == "epoch-001"
    load_model(out / "last")
    assert not list((out / "checkpoints").glob(".*"))
    code, _, err = finish(selhn(*train_argv(data, out, "--epochs", "2", "--resume")))
    assert code == 0, err
    assert_same_run(run, out)
