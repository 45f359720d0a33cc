"""Reranking mined pairs with a model's cross scorer: ``emmax mine --rerank``
(``bitext.mine_files(..., rerank=True)``).

After the k-NN search and the filters, every kept pair is read jointly by the cross scorer
(``models.cross_scorer``) and kept only if its probability of the top rank (N-1, translation)
is at least ``min_prob``. Pairs are scored best first in chunks, so memory stays bounded and,
with ``top``, scoring stops once enough pairs passed. The verdicts travel in a
:class:`CrossVerdict` beside the candidates; the JSON lines and Parquet outputs get two more
columns, ``cross_rank`` (argmax rank) and ``cross_prob`` (probability of the top rank), null
for candidates the scorer did not read (dropped earlier, or past ``top``), and the pairs it
dropped get ``keep`` false and the reason ``cross_rank``. The TSV output is unchanged."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .console import Progress, ProgressFactory, no_progress
from .errors import InputError
from .pairscore import is_encoder

__all__ = [
    "REASON",
    "CrossVerdict",
    "load_plugin",
    "scorer_for",
    "rerank_pairs",
    "rerank_candidates",
]

REASON = "cross_rank"  # the drop reason of a pair the rerank removed (``filters.REASONS``)
CHUNK = 4096  # pairs scored at a time (texts and probabilities in memory)
NO_CROSS_HINT = "train one with `emmax train --phase cross`, or drop --rerank"


@dataclass
class CrossVerdict:
    """The rerank's verdicts, aligned with the n mined candidates.

    Attributes:
        rank: (n,) int64 argmax rank of the cross scorer; -1 where it did not read the pair.
        prob: (n,) float32 probability of the top rank (translation); NaN where not read.
        dropped: (n,) bool, pairs the rerank removed.
        min_prob: the threshold applied.
    """

    rank: np.ndarray
    prob: np.ndarray
    dropped: np.ndarray
    min_prob: float

    @property
    def removed(self) -> int:
        return int(self.dropped.sum())


def load_plugin(model: Any):
    """The cross-attention plug-in of ``model`` (a name, a directory, None for the default,
    or an Encoder): cheap, read before any mining so a model without one fails first.

    Raises:
        ModelLoadError: no such model, no cross scorer (the message names the model, the hint
            ``emmax train --phase cross``), or a corrupt one.
    """
    from .errors import ModelLoadError
    from .models.cross import CrossPlugin, has_cross

    if is_encoder(model):
        root, name = getattr(model, "root", None), model.config.name
    else:
        from .models.loading import resolve

        rm = resolve(model, verify=False)
        root, name = rm.root, rm.config.name
    if root is None or not has_cross(root):
        where = f" ({root})" if root is not None else ""
        raise ModelLoadError(f"model {name}{where} has no cross scorer", hint=NO_CROSS_HINT)
    return CrossPlugin.from_dir(root)


def scorer_for(plugin: Any, model: Any, encoder: Any = None, device="auto", precision="auto"):
    """A ``CrossScorer`` of ``plugin`` on ``encoder`` (the one mining loaded) when it can run
    the plug-in, else on the model's encoder loaded here (fp32 instead of int8).

    Raises:
        ModelLoadError: the encoder cannot run the plug-in, or does not fit it.
    """
    from .models.cross_scorer import CrossScorer
    from .models.encoder import Encoder

    if is_encoder(model):
        encoder = model
    elif encoder is None or getattr(encoder, "precision", None) == "int8":
        precision = "fp32" if precision == "int8" else precision
        encoder = Encoder.load(model, device=device, precision=precision)
    return CrossScorer(encoder, plugin)


def rerank_pairs(
    scorer: Any,
    src_texts: Sequence[str],
    tgt_texts: Sequence[str],
    min_prob: float = 0.5,
    batch_tokens: int | None = None,
    progress: Progress | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rescore aligned pairs with a cross scorer.

    Args:
        scorer: a ``CrossScorer`` (``rank_probs``).
        src_texts, tgt_texts: the pairs' sentences.
        min_prob: keep a pair when its probability of the top rank is at least this.
        batch_tokens: padded tokens of both sides per batch (None: the scorer's default).
        progress: called with the number of pairs done after each batch.

    Returns:
        ``keep`` (n,) bool, ``rank`` (n,) int64 (argmax), ``prob`` (n,) float32 (the
        probability of the top rank, N-1 = translation).
    """
    if len(src_texts) != len(tgt_texts):
        raise InputError(f"{len(src_texts)} source sentences but {len(tgt_texts)} targets")
    kw = {} if batch_tokens is None else {"batch_tokens": batch_tokens}
    probs = scorer.rank_probs(src_texts, tgt_texts, progress=progress, **kw)
    prob = probs[:, -1].astype(np.float32)
    return prob >= min_prob, probs.argmax(1).astype(np.int64), prob


def rerank_candidates(
    scorer: Any,
    cand: Any,
    src_texts: Sequence[str],
    tgt_texts: Sequence[str],
    judged: Any,
    min_prob: float = 0.5,
    top: int | None = None,
    batch_tokens: int | None = None,
    progress: ProgressFactory | None = None,
) -> tuple[np.ndarray, CrossVerdict]:
    """Rerank the kept candidates, best first, in chunks; with ``top``, stop once ``top``
    pairs passed.

    Args:
        scorer: a ``CrossScorer``.
        cand: the mined candidates (``MinedPairs``: ``src_idx``, ``tgt_idx``, ``score``).
        src_texts, tgt_texts: the texts of the two sides (rows of the unified sides).
        judged: the candidates' ``pairscore.Judged`` (rows it keeps are reranked, best
            first); the pairs the rerank drops get the reason ``cross_rank`` there.
        min_prob, batch_tokens: as :func:`rerank_pairs`.
        top: keep at most this many pairs.
        progress: a factory ``progress(description, total)``.

    Returns:
        The candidate rows still kept (at most ``top``), and the :class:`CrossVerdict`.
    """
    from .filters import REASONS

    n, kept = len(cand.score), np.flatnonzero(judged.keep)
    rank = np.full(n, -1, np.int64)
    prob = np.full(n, np.nan, np.float32)
    dropped = np.zeros(n, bool)
    out: list[np.ndarray] = []
    passed = 0
    with (progress or no_progress)("rerank", len(kept)) as adv:
        for i in range(0, len(kept), CHUNK):
            if top is not None and passed >= top:
                break
            rows = kept[i : i + CHUNK]
            keep, r, p = rerank_pairs(
                scorer,
                [src_texts[j] for j in cand.src_idx[rows]],
                [tgt_texts[j] for j in cand.tgt_idx[rows]],
                min_prob,
                batch_tokens,
                adv,
            )
            rank[rows], prob[rows], dropped[rows[~keep]] = r, p, True
            out.append(rows[keep])
            passed += int(keep.sum())
    judged.reason[dropped] = REASONS.index(REASON)
    judged.counts[REASON] = int(dropped.sum())
    rows = np.concatenate(out) if out else np.zeros(0, np.int64)
    return rows[:top] if top is not None else rows, CrossVerdict(rank, prob, dropped, min_prob)
