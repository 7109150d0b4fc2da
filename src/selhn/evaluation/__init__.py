"""Evaluation: exact retrieval metrics (``metrics``), encoding and evaluating a split
(``evaluate``), top-k search (``retrieval``)."""

from selhn.evaluation.metrics import (
    METRIC_NAMES,
    embedding_metrics,
    format_table,
    metrics_from_ranks,
    ranks_from_embeddings,
    ranks_from_sims,
    retrieval_metrics,
)

__all__ = [
    "METRIC_NAMES",
    "embedding_metrics",
    "format_table",
    "metrics_from_ranks",
    "ranks_from_embeddings",
    "ranks_from_sims",
    "retrieval_metrics",
]
