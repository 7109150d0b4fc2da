"""Word-level tokeniser and a vocabulary stored as SCAN-compatible JSON."""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from selhn.utils.textfiles import read_text

PAD, START, END, UNK, MASK = "<pad>", "<start>", "<end>", "<unk>", "<mask>"
SPECIALS = (PAD, START, END, UNK, MASK)

_IDEOGRAPHS = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # CJK: one character, one token
_TOKEN = re.compile(
    rf"[^\W_{_IDEOGRAPHS}]+(?:'[^\W\d_{_IDEOGRAPHS}]+)?"  # a word: letters and digits of any script
    rf"|[{_IDEOGRAPHS}]"
    r"|\S"  # anything else that is not a space (punctuation) on its own
)


def tokenize(text: str) -> list[str]:
    """Lower-cased words of any script, with punctuation as separate tokens and each CJK
    ideograph a token of its own (as BERT's basic tokenizer does): "A dog's toy." -> a dog's toy
    ., "Un café." -> un café ., "猫在垫子上" -> 猫 在 垫 子 上. Text is NFC-normalised first, so
    composed and decomposed accents give the same word."""
    return _TOKEN.findall(unicodedata.normalize("NFC", text.lower()))


class TextVocabulary(Protocol):
    """What turns captions into token ids: ``Vocabulary`` (words) or a transformer's
    ``WordPieceTokenizer`` (pieces)."""

    def __len__(self) -> int: ...

    @property
    def mask_id(self) -> int: ...

    def encode(self, caption: str) -> list[int]: ...

    def unknown_words(self, caption: str) -> list[str]:
        """The caption's words read as the unknown token."""

    def unread_text(self, caption: str) -> str:
        """The end of the caption that ``encode`` leaves out ("" when it reads all of it)."""

    def save(self, path: Path) -> None: ...


class Vocabulary:
    """Maps words to ids; unknown words map to ``<unk>``."""

    def __init__(self, words: Iterable[str]) -> None:
        self.idx2word: list[str] = []
        self.word2idx: dict[str, int] = {}
        for word in words:
            self.add(word)
        missing = [w for w in (PAD, START, END, UNK) if w not in self.word2idx]
        if missing:
            raise ValueError(f"a vocabulary needs the special tokens {missing}")
        if self.word2idx[PAD] != 0:
            raise ValueError(f"{PAD} must have id 0, found {self.word2idx[PAD]}")
        self.add(MASK)  # SCAN vocabularies predate the <mask> token of the augmentation

    def add(self, word: str) -> None:
        if word not in self.word2idx:
            self.word2idx[word] = len(self.idx2word)
            self.idx2word.append(word)

    def __len__(self) -> int:
        return len(self.idx2word)

    @property
    def mask_id(self) -> int:
        return self.word2idx[MASK]

    def __call__(self, word: str) -> int:
        return self.word2idx.get(word, self.word2idx[UNK])

    def unknown_words(self, caption: str) -> list[str]:
        """The caption's words that are not in the vocabulary (each read as ``<unk>``)."""
        return [word for word in tokenize(caption) if word not in self.word2idx]

    def unread_text(self, caption: str) -> str:
        """Nothing: every word is read, however long the caption."""
        return ""

    def encode(self, caption: str) -> list[int]:
        """``<start>`` + token ids + ``<end>``."""
        return [self.word2idx[START], *map(self, tokenize(caption)), self.word2idx[END]]

    @classmethod
    def build(cls, captions: Iterable[str], min_count: int = 1) -> Vocabulary:
        """Vocabulary of the words seen at least ``min_count`` times, most frequent first."""
        counts = Counter(token for caption in captions for token in tokenize(caption))
        words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: -counts[w])
        return cls([*SPECIALS, *(w for w in words if w not in SPECIALS)])

    def save(self, path: str | Path) -> None:
        data = {
            "word2idx": self.word2idx,
            "idx2word": {str(i): w for i, w in enumerate(self.idx2word)},
            "idx": len(self),
        }
        Path(path).write_text(json.dumps(data, indent=0, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        """Load a vocabulary written by ``save`` or by SCAN (``word2idx``, ``idx2word``)."""
        path = Path(path)
        try:
            data = json.loads(read_text(path))
            word2idx = data["word2idx"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(
                f"{path}: not a vocabulary JSON with a 'word2idx' mapping ({err})"
            ) from err
        if not isinstance(word2idx, dict) or not all(
            isinstance(w, str) and isinstance(i, int) and not isinstance(i, bool)
            for w, i in word2idx.items()
        ):
            raise ValueError(f"{path}: 'word2idx' must map each word to an integer id")
        order = sorted(word2idx.items(), key=lambda item: item[1])
        if [i for _, i in order] != list(range(len(order))):
            raise ValueError(f"{path}: 'word2idx' ids must be 0..{len(order) - 1} without gaps")
        try:
            return cls(word for word, _ in order)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from err
