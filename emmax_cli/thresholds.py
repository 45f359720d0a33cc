"""Margin thresholds: pair counts per threshold (stopes' summary) and the BUCC best-F1
calibration rule (LASER ``BuccOptimize``; docs/mining.md §3)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .errors import InputError


def threshold_counts(
    scores: np.ndarray, thresholds: Sequence[float] = (1.02, 1.04, 1.06, 1.08)
) -> dict[float, int]:
    """Number of pairs with ``score >= t`` for each threshold (stopes' summary).

    Compared in the scores' precision, like the threshold in :func:`mine`: a float32 score
    of 1.06 counts at threshold 1.06."""
    s = np.sort(np.asarray(scores))
    if not np.issubdtype(s.dtype, np.floating):
        s = s.astype(np.float64)
    left = np.searchsorted(s, np.asarray(thresholds, s.dtype), side="left")
    return {float(t): int(len(s) - i) for t, i in zip(thresholds, left, strict=False)}


def calibrate_threshold(
    scores: np.ndarray, is_correct: np.ndarray, n_gold: int | None = None
) -> tuple[float, float, float, float]:
    """Best-F1 threshold, BUCC style (LASER ``BuccOptimize``; docs/mining.md §3 step 3).

    Candidates are walked down by decreasing score. Candidates with equal scores form one
    group (no threshold separates them), so P/R/F1 are evaluated after each whole group.
    At the first best F1 the threshold is the midpoint between that group's score and the
    next lower score; if the best is the last group, its own score (sentence-transformers'
    clamped index). Keeping ``score >= threshold`` then reproduces the best P/R/F1.

    Args:
        scores: (m,) candidate scores.
        is_correct: (m,) bool, the candidate is a gold pair.
        n_gold: number of gold pairs (recall denominator); default: number of correct
            candidates.

    Returns:
        ``(threshold, precision, recall, f1)`` as floats.

    Raises:
        InputError: no candidate, no correct candidate, or ``n_gold`` below the correct count.
    """
    s = np.asarray(scores, np.float64).reshape(-1)
    correct = np.asarray(is_correct, bool).reshape(-1)
    if len(s) != len(correct):
        raise InputError(f"{len(s)} scores but {len(correct)} correctness flags")
    n_correct = int(correct.sum())
    if n_correct == 0:
        raise InputError(
            "cannot calibrate a threshold: no candidate is a gold pair",
            hint="check that the gold file matches the mined sentences",
        )
    n_gold = n_correct if n_gold is None else int(n_gold)
    if n_gold < n_correct:
        raise InputError(f"n_gold={n_gold} is below the {n_correct} correct candidates")
    order = np.argsort(-s, kind="stable")
    s, correct = s[order], correct[order]
    ends = np.flatnonzero(np.append(s[1:] != s[:-1], True))  # last row of each tie group
    tp = np.cumsum(correct)[ends]
    precision = tp / (ends + 1)
    recall = tp / n_gold
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(tp > 0, 2 * precision * recall / (precision + recall), 0.0)
    g = int(np.argmax(f1))  # first best, as LASER's strict `f1 > best_f1`
    i = ends[g]
    # float32 scores are exact in float64, so the midpoint is exact and strictly between.
    thr = (s[i] + s[min(i + 1, len(s) - 1)]) / 2
    return float(thr), float(precision[g]), float(recall[g]), float(f1[g])
