"""Exact-duplicate sentences collapsed before mining (LASER ``--unify``): duplicates fill
several k-NN slots and depress the true pair's margin (docs/mining.md §1)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .errors import InputError


def unify(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Collapse exact-duplicate sentences (LASER ``--unify``), first occurrence kept.

    Args:
        texts: n sentences.

    Returns:
        ``(keep, inverse)``: keep (u,) int64 ascending rows of the first occurrence of each
        distinct sentence; inverse (n,) int64 with ``texts[i] == texts[keep[inverse[i]]]``.
    """
    n = len(texts)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    codes = _text_codes(texts)
    _, first, inv = np.unique(codes, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")  # distinct sentences in first-occurrence order
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    return first[order].astype(np.int64), rank[inv.reshape(-1)]


def _text_codes(texts: Sequence[str]) -> np.ndarray:
    """An integer per text, equal iff the texts are equal (hashing via Arrow when possible)."""
    import pyarrow as pa

    try:
        arr = pa.array(texts, type=pa.string())
    except (pa.ArrowException, UnicodeEncodeError):  # e.g. lone surrogates: sort instead
        return np.unique(np.asarray(texts, dtype=object), return_inverse=True)[1].reshape(-1)
    if arr.null_count:
        raise InputError("cannot unify: some texts are missing (None)")
    return arr.dictionary_encode().indices.to_numpy(zero_copy_only=False).astype(np.int64)


def dedup_embeddings(
    texts: Sequence[str], emb: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep the embedding of the first occurrence of each distinct sentence.

    Args:
        texts: n sentences.
        emb: (n, dim) embeddings, row i for texts[i].

    Returns:
        ``(unique_emb, keep, inverse)``: unique_emb (u, dim) = ``emb[keep]``; keep and
        inverse as in :func:`unify`. Mined row r of unique_emb is original row ``keep[r]``.
    """
    if len(texts) != len(emb):
        raise InputError(f"{len(texts)} texts but {len(emb)} embeddings")
    keep, inverse = unify(texts)
    return emb[keep], keep, inverse
