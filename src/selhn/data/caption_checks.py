"""What a training run should hear about its captions before it starts: captions so long they
slow every batch they are in, and a vocabulary that reads most of the words as ``<unk>``."""

from __future__ import annotations

import math
from pathlib import Path

from selhn.data.vocab import Vocabulary, tokenize

LONG_CAPTION_WORDS = 100  # a batch is padded to its longest caption
UNKNOWN_SHARE_WARNING = 0.2
SAMPLED_CAPTIONS = 10_000  # enough for the share of unknown words


def caption_warnings(captions: list[str], source: Path, vocab: object) -> list[str]:
    """Warnings about ``captions`` (read from ``source``) for a run with ``vocab``.

    Raises ValueError if the vocabulary knows none of the sampled words: the text encoder would
    see nothing but ``<unk>``.
    """
    warnings = []
    lengths = [len(caption.split()) for caption in captions]
    long = [i for i, n in enumerate(lengths) if n > LONG_CAPTION_WORDS]
    if long:
        longest = max(long, key=lambda i: lengths[i])
        warnings.append(
            f"{len(long)} captions of {source} have more than {LONG_CAPTION_WORDS} words (the "
            f"longest: {lengths[longest]} words, line {longest + 1}); every batch is padded to "
            "its longest caption, so they slow training"
        )
    if isinstance(vocab, Vocabulary):
        step = max(1, math.ceil(len(captions) / SAMPLED_CAPTIONS))
        words = [w for caption in captions[::step] for w in tokenize(caption)]
        unknown = sum(w not in vocab.word2idx for w in words) / max(len(words), 1)
        if words and unknown == 1:
            raise ValueError(
                f"{source}: the vocabulary ({len(vocab)} entries) knows none of the captions' "
                "words, so the text encoder would read only <unk>; check data.vocab and "
                "data.min_word_count"
            )
        if unknown > UNKNOWN_SHARE_WARNING:
            warnings.append(
                f"{unknown:.0%} of the words of {source} are not in the vocabulary and are "
                "read as <unk> (check data.vocab and data.min_word_count)"
            )
    return warnings
