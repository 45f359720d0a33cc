"""Margin-based bitext mining on embedding arrays (Artetxe & Schwenk, ACL 2019).

Pure array code: no text I/O. The arithmetic matches LASER's ``source/mine_bitexts.py``
(see docs/mining.md §1), with the per-candidate Python loops replaced by numpy:

* :func:`margin_scores` the ratio / distance / absolute margin of every k-NN candidate;
* :func:`mine` k-NN both ways, margins, then a retrieval mode -> :class:`MinedPairs`;
* :func:`greedy_one_to_one` LASER's ``max`` pass, as array operations.

Re-exported from their own modules: :func:`knn` (:mod:`emmax_cli.knn`, blocked exact k-NN
as LASER's ``knnGPU``), :func:`unify` / :func:`dedup_embeddings` (:mod:`emmax_cli.dedup`)
and :func:`threshold_counts` / :func:`calibrate_threshold` (:mod:`emmax_cli.thresholds`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .dedup import dedup_embeddings, unify
from .errors import EmmaxError, InputError
from .knn import DEFAULT_BLOCK_SIZE, _as_2d, knn
from .knn_both import knn_both, one_pass_device
from .thresholds import calibrate_threshold, threshold_counts

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "MARGINS",
    "RETRIEVALS",
    "MinedPairs",
    "calibrate_threshold",
    "dedup_embeddings",
    "greedy_one_to_one",
    "knn",
    "margin_scores",
    "mine",
    "mine_from_neighbours",
    "neighbour_mean",
    "threshold_counts",
    "unify",
]

log = logging.getLogger(__name__)

Progress = Callable[[int], None]

MARGINS = ("ratio", "distance", "absolute")
# public name -> canonical name
RETRIEVALS = {
    "max": "max",
    "intersect": "intersect",
    "fwd": "fwd",
    "forward": "fwd",
    "bwd": "bwd",
    "backward": "bwd",
    "union": "union",
}


def _choice(what: str, value: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise EmmaxError(f"unknown {what} {value!r}", hint="choose one of " + ", ".join(choices))
    return value


def _check_unit_norm(x: np.ndarray, name: str) -> None:
    """Cheap check on up to 1000 evenly spaced rows: margins assume cosine = inner product."""
    if len(x) == 0:
        return
    norms = np.linalg.norm(x[:: max(1, len(x) // 1000)][:1000].astype(np.float32), axis=1)
    bad = np.abs(norms - 1) > 1e-2  # fp16 round trips stay well inside this
    if bad.any():
        raise InputError(
            f"{name} embeddings are not L2-normalised (a row has norm {norms[bad][0]:.4g})",
            hint="normalise them first, e.g. faiss.normalize_L2(emb)",
        )


def neighbour_mean(sims: np.ndarray, idx: np.ndarray | None = None) -> np.ndarray:
    """Mean k-NN similarity per row, (n,) float32 (LASER ``x2y_sim.mean(axis=1)``).

    Slots with ``idx == -1`` (missing neighbours of an approximate index) are ignored."""
    if idx is None or (idx >= 0).all():
        return sims.mean(axis=1)
    valid = idx >= 0
    count = np.maximum(valid.sum(axis=1), 1)
    return (np.where(valid, sims, 0).sum(axis=1) / count).astype(np.float32)


def margin_scores(
    sims: np.ndarray,
    idx: np.ndarray,
    mean_query: np.ndarray,
    mean_db: np.ndarray,
    margin: str = "ratio",
) -> np.ndarray:
    """Margin score of every k-NN candidate (Artetxe & Schwenk 2019, eq. 2-4).

    ``score[i, c] = margin(sims[i, c], (mean_query[i] + mean_db[idx[i, c]]) / 2)`` with
    ``absolute: a``, ``distance: a - b``, ``ratio: a / b``, in float32 as LASER computes it.

    Args:
        sims: (n, k) float32 k-NN similarities of the queries.
        idx: (n, k) int64 database rows of those neighbours (-1: missing).
        mean_query: (n,) float32 mean k-NN similarity of each query.
        mean_db: (nb,) float32 mean k-NN similarity of each database row (other direction).
        margin: ``ratio``, ``distance`` or ``absolute``.

    Returns:
        (n, k) float32 scores; -inf where ``idx == -1``.
    """
    _choice("margin", margin, MARGINS)
    sims = np.asarray(sims, np.float32)
    if margin == "absolute":
        scores = sims.copy()
    else:
        avg = np.asarray(mean_query, np.float32)[:, None] + np.asarray(mean_db, np.float32)[idx]
        avg /= np.float32(2)
        scores = sims - avg if margin == "distance" else sims / avg
    scores[idx < 0] = -np.inf
    return scores


@dataclass
class MinedPairs:
    """Mined sentence pairs, sorted by score, highest first."""

    src_idx: np.ndarray  # (m,) int64 source rows
    tgt_idx: np.ndarray  # (m,) int64 target rows
    score: np.ndarray  # (m,) float32 margin scores

    def __len__(self) -> int:
        return len(self.score)


def check_sides(src_emb: Any, tgt_emb: Any) -> tuple[np.ndarray, np.ndarray]:
    """Both sides as 2-d arrays, checked: same dimension, not empty, of unit norm.

    Raises:
        InputError: naming the side and the problem.
    """
    x, y = _as_2d(src_emb, "source"), _as_2d(tgt_emb, "target")
    if x.shape[1] != y.shape[1]:
        raise InputError(
            f"source embeddings have dimension {x.shape[1]}, target {y.shape[1]}",
            hint="embed both sides with the same model",
        )
    if len(x) == 0 or len(y) == 0:
        raise InputError(
            "cannot mine with an empty side", hint=f"source has {len(x)} rows, target {len(y)}"
        )
    _check_unit_norm(x, "source")
    _check_unit_norm(y, "target")
    return x, y


def mine(
    src_emb: np.ndarray,
    tgt_emb: np.ndarray,
    k: int = 4,
    margin: str = "ratio",
    retrieval: str = "max",
    threshold: float | None = None,
    top: int | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    progress: Progress | None = None,
    *,
    src_index: Any = None,
    tgt_index: Any = None,
    nprobe: int | None = None,
    device: str = "auto",
) -> MinedPairs:
    """Mine parallel sentence pairs by margin score (LASER ``mine_bitexts.py --mode mine``).

    Pass unique sentences: duplicates fill several k-NN slots and depress the true pair's
    margin (docs/mining.md §1). Use :func:`dedup_embeddings` first and map the rows back.

    Args:
        src_emb: (n_src, dim) float32 (or float16), L2-normalised source embeddings;
            a memory-mapped array is read block by block.
        tgt_emb: (n_tgt, dim) likewise, target embeddings.
        k: neighbourhood size of the margin (LASER and BUCC: 4); clipped, with a
            warning, to the size of a smaller side.
        margin: ``ratio`` (default), ``distance`` or ``absolute``.
        retrieval: ``max`` (LASER default, greedy 1:1), ``intersect``, ``fwd``/``forward``,
            ``bwd``/``backward`` or ``union`` (stopes: fwd and bwd pooled, no 1:1).
        threshold: keep pairs with ``score >= threshold`` (in every mode, unlike LASER).
        top: keep only the ``top`` best pairs.
        block_size: k-NN block rows (memory cost: see :data:`DEFAULT_BLOCK_SIZE`).
        progress: called with the number of query rows searched (n_src + n_tgt in all).
        src_index, tgt_index: optional faiss indexes holding the same rows as ``src_emb`` /
            ``tgt_emb``, searched instead of exact k-NN (approximate mining).
        nprobe: IVF lists to visit in those indexes.
        device: k-NN device, ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

    Returns:
        :class:`MinedPairs` sorted by score, highest first, without duplicate pairs.

    Raises:
        EmmaxError: unknown margin or retrieval mode.
        InputError: empty, mismatched or non-normalised embeddings, bad k or top.
    """
    _choice("margin", margin, MARGINS)
    mode = RETRIEVALS[_choice("retrieval mode", retrieval, tuple(RETRIEVALS))]
    if k < 1:
        raise InputError(f"k must be at least 1, got {k}")
    if top is not None and top < 0:
        raise InputError(f"top must be non-negative, got {top}")
    x, y = check_sides(src_emb, tgt_emb)

    # The absolute margin needs no neighbour means, so one direction suffices there.
    need_fwd = mode != "bwd" or margin != "absolute"
    need_bwd = mode != "fwd" or margin != "absolute"
    if k > min(len(x), len(y)):  # LASER clips silently; say so, once
        log.warning(
            "k=%d is more than the source (%d rows) or target (%d rows) holds; "
            "each direction uses at most as many neighbours as the other side has",
            k,
            len(x),
            len(y),
        )
    # Exact search both ways: one pass over X·Yᵀ (knn_both), unless a faiss GPU does it.
    one_pass = need_fwd and need_bwd and src_index is None and tgt_index is None
    both_device = one_pass_device(device) if one_pass else None
    if both_device is not None:
        x2y, y2x = knn_both(
            x,
            y,
            min(k, len(y)),
            block_size=block_size,
            progress=progress,
            device=both_device,
            k_yx=min(k, len(x)),
        )
    else:
        opts = dict(block_size=block_size, progress=progress, nprobe=nprobe, device=device)
        x2y = y if tgt_index is None else tgt_index
        y2x = x if src_index is None else src_index
        x2y = knn(x, x2y, min(k, len(y)), **opts) if need_fwd else None
        y2x = knn(y, y2x, min(k, len(x)), **opts) if need_bwd else None
    pairs = mine_from_neighbours(
        x2y,
        y2x,
        margin=margin,
        retrieval=retrieval,
        threshold=threshold,
        top=top,
        n_src=len(x),
        n_tgt=len(y),
    )
    log.debug(
        "mined %d pairs from %d x %d sentences (k=%d, %s margin, %s retrieval)",
        len(pairs),
        len(x),
        len(y),
        k,
        margin,
        mode,
    )
    return pairs


def mine_from_neighbours(
    x2y: tuple[np.ndarray, np.ndarray] | None,
    y2x: tuple[np.ndarray, np.ndarray] | None,
    margin: str = "ratio",
    retrieval: str = "max",
    threshold: float | None = None,
    top: int | None = None,
    *,
    n_src: int | None = None,
    n_tgt: int | None = None,
) -> MinedPairs:
    """The part of :func:`mine` after the k-NN search, for precomputed neighbours.

    Args:
        x2y: ``(sims, idx)`` (n_src, k) k-NN of the sources among the targets.
        y2x: ``(sims, idx)`` (n_tgt, k) k-NN of the targets among the sources. Either may
            be None only when the margin is ``absolute`` and the mode does not need it.
        margin, retrieval, threshold, top: as in :func:`mine`.
        n_src, n_tgt: side sizes (default: the lengths of the k-NN lists).
    """
    _choice("margin", margin, MARGINS)
    mode = RETRIEVALS[_choice("retrieval mode", retrieval, tuple(RETRIEVALS))]
    need_fwd = mode != "bwd" or margin != "absolute"
    need_bwd = mode != "fwd" or margin != "absolute"
    if (need_fwd and x2y is None) or (need_bwd and y2x is None):
        raise InputError(f"margin {margin!r} with retrieval {retrieval!r} needs both k-NN lists")
    # side sizes: from the lists, else given, else inferred from the neighbour rows
    if n_src is None:
        n_src = len(x2y[0]) if x2y is not None else int(y2x[1].max()) + 1
    if n_tgt is None:
        n_tgt = len(y2x[0]) if y2x is not None else int(x2y[1].max()) + 1
    x2y_mean = neighbour_mean(*x2y) if x2y is not None else None
    y2x_mean = neighbour_mean(*y2x) if y2x is not None else None

    def best(nn, mean_q, mean_db):
        """Per query: the candidate with the highest margin (first one on ties, argmax)."""
        sims, idx = nn
        scores = margin_scores(sims, idx, mean_q, mean_db, margin)
        col = scores.argmax(axis=1)[:, None]
        return (np.take_along_axis(idx, col, 1)[:, 0], np.take_along_axis(scores, col, 1)[:, 0])

    empty = np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    fwd = bwd = empty
    if mode != "bwd":
        tgt, score = best(x2y, x2y_mean, y2x_mean)
        fwd = np.arange(n_src, dtype=np.int64), tgt, score
    if mode != "fwd":
        src, score = best(y2x, y2x_mean, x2y_mean)
        bwd = src, np.arange(n_tgt, dtype=np.int64), score
    if mode == "intersect":  # bwd_best(fwd_best(x)) == x
        keep = bwd[0][fwd[1]] == fwd[0]
        fwd, bwd = tuple(a[keep] for a in fwd), empty
    src, tgt, score = (np.concatenate((f, b)) for f, b in zip(fwd, bwd, strict=False))

    # Filtering before the greedy 1:1 pass of ``max`` gives the same pairs as LASER's
    # filtering after it: the pass goes by decreasing score, so every pair below the
    # threshold comes after all pairs above it and cannot block them.
    keep = np.isfinite(score)  # -inf: query without a valid neighbour (approximate index)
    if threshold is not None:
        keep &= score >= threshold
    src, tgt, score = src[keep], tgt[keep], score[keep]
    # Stable: equal scores keep the fwd-before-bwd, by-row order, so results are reproducible.
    order = np.argsort(-score, kind="stable")
    src, tgt, score = src[order], tgt[order], score[order]

    if mode == "max":
        keep = greedy_one_to_one(src, tgt, n_src, n_tgt)
    else:  # drop repeated (src, tgt) pairs, keeping the first (best) one
        keep = _first_occurrence(src * n_tgt + tgt)
    src, tgt, score = src[keep], tgt[keep], score[keep]
    if top is not None:
        src, tgt, score = src[:top], tgt[:top], score[:top]
    return MinedPairs(src.astype(np.int64), tgt.astype(np.int64), score.astype(np.float32))


def _first_occurrence(keys: np.ndarray) -> np.ndarray:
    """(m,) bool: True where ``keys[i]`` does not occur in ``keys[:i]``.

    O(m) with a lookup table when the keys are small (< 4m), else a sort, O(m log m)."""
    m = len(keys)
    if m == 0:
        return np.zeros(0, bool)
    if keys.max() < 4 * m + 1024:
        first = np.full(int(keys.max()) + 1, m, np.int64)
        np.minimum.at(first, keys, np.arange(m))
        return first[keys] == np.arange(m)
    mask = np.zeros(m, bool)
    mask[np.unique(keys, return_index=True)[1]] = True
    return mask


def greedy_one_to_one(src: np.ndarray, tgt: np.ndarray, n_src: int, n_tgt: int) -> np.ndarray:
    """LASER's ``max`` pass: accept a pair iff neither side was accepted before.

    Args:
        src, tgt: (m,) int64 candidate pairs, in priority order (best first).
        n_src, n_tgt: side sizes.

    Returns:
        (m,) bool, the accepted candidates.

    The sequential greedy is computed in rounds of array operations. A candidate that comes
    first, among the undecided ones, both for its source and for its target ("locally
    dominant") is accepted by the sequential pass: nothing before it can block it. Accepting
    all of them at once and dropping the undecided candidates that share a side with them
    leaves a smaller problem with the same greedy answer. Each round accepts at least the
    best undecided candidate; in mining data almost all pairs go in the first few rounds.
    Adversarial chains could need many rounds, so when a round accepts under 1/64 of the
    remaining candidates, the rest (the conflicting tail only) is finished by a plain loop.
    """
    m = len(src)
    accepted = np.zeros(m, bool)
    src_used, tgt_used = np.zeros(n_src, bool), np.zeros(n_tgt, bool)
    alive = np.arange(m)
    while len(alive):
        s, t = src[alive], tgt[alive]
        win = alive[_first_occurrence(s) & _first_occurrence(t)]
        accepted[win] = True
        src_used[src[win]] = True
        tgt_used[tgt[win]] = True
        alive = alive[~(src_used[s] | tgt_used[t])]
        if len(win) * 64 < len(alive):
            break
    for i in alive.tolist():  # the slow tail, if any: exact sequential greedy
        if not (src_used[src[i]] or tgt_used[tgt[i]]):
            accepted[i] = src_used[src[i]] = tgt_used[tgt[i]] = True
    return accepted
