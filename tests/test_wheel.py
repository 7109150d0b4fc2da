"""The wheel is the package a newcomer gets: built from the sources, installed with torch into a
new virtual environment outside the clone, its `selhn` command trains and evaluates from there."""

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import selhn

pytestmark = [pytest.mark.wheel]


ROOT = Path(__file__).resolve().parents[1]
TORCH_PIN = re.search(r"^TORCH := (\S+)", (ROOT / "Makefile").read_text(), re.M).group(1)
NOT_SOURCES = {".venv", ".git", "build", "dist", "data", "runs", "experiments"}  # at the top
NOT_ANYWHERE = shutil.ignore_patterns("__pycache__", "*.egg-info", ".pytest_cache", ".ruff_cache")


def sources(directory: str, names: list[str]) -> set[str]:
    skipped = set(NOT_ANYWHERE(directory, names))
    return skipped | (NOT_SOURCES & set(names)) if Path(directory) == ROOT else skipped


def run(command: list, cwd: Path, env: dict, timeout: int = 600) -> str:
    done = subprocess.run(
        [str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    assert done.returncode == 0, f"{command}:\n{(done.stdout + done.stderr)[-4000:]}"
    return done.stdout


def test_the_wheel_installs_and_runs_outside_the_clone(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env |= {"PIP_DISABLE_PIP_VERSION_CHECK": "1", "OMP_NUM_THREADS": "1"}

    # Built from a copy: building in the clone would write build/ and *.egg-info there, and a
    # stale build/lib can put files the sources no longer have into the wheel.
    source, wheels = tmp_path / "source", tmp_path / "wheels"
    shutil.copytree(ROOT, source, symlinks=True, ignore=sources)
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", *isolation]
    run([*command, "--wheel-dir", wheels, source], tmp_path, env)
    (wheel,) = wheels.glob("selhn-*.whl")
    assert wheel.name.startswith(f"selhn-{selhn.__version__}-")

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", venv], tmp_path, env)
    python, command = venv / "bin" / "python", venv / "bin" / "selhn"
    run([python, "-m", "pip", "install", "--quiet", wheel, TORCH_PIN], tmp_path, env)

    work = tmp_path / "work"  # outside the clone: nothing of it on the path
    work.mkdir()
    where = run([python, "-c", "import selhn; print(selhn.__file__)"], work, env)
    assert Path(where.strip()).is_relative_to(venv)

    assert run([command, "--version"], work, env).strip() == f"selhn {selhn.__version__}"
    synth = ["data", "synth", "--out", "data", "--train", "64", "--dev", "16", "--test", "16"]
    run([command, *synth, "--regions", "8", "--feature-dim", "32"], work, env)
    tiny = ["--model.embed_size=32", "--model.word_dim=16", "--model.mlp_hidden=16"]
    train = ["train", "--config", "demo", "--data", "data", "--out", "run", "--epochs", "1"]
    out = run([command, *train, "--batch-size", "32", "--no-progress", *tiny], work, env)
    assert "best dev rSum" in out and (work / "run" / "best" / "model.safetensors").is_file()
    out = run([command, "eval", "--checkpoint", "run/best", "--data", "data"], work, env)
    assert "test split, 16 images, 1 model" in out and "rSum" in out

    paper = run([command, "config", "show", "paper"], work, env)  # a packaged configuration
    for line in ("embed_size: 1024", "word_dim: 300", "epochs: 30", "batch_size: 128"):
        assert f"  {line}" in paper

    page = "from importlib.resources import files; "
    page += "print(files('selhn.inference.serve') / 'page.html')"
    assert Path(run([python, "-c", page], work, env).strip()).read_text().startswith("<!doctype")
    names = "from selhn.models.class_prior import class_names; print(class_names()[281])"
    assert run([python, "-c", names], work, env).strip() == "tabby, tabby cat"  # package data
    done = subprocess.run([command, "serve", "--index", "index"], cwd=work, env=env,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 2 and "needs the serve extra" in done.stderr  # not installed here
