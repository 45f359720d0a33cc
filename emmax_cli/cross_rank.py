"""Semantic rank of sentence pairs read jointly by a model's cross scorer: ``emmax rank
--cross`` (``rank.rank_files(..., cross=True)``).

The same ``RankedChunk`` rows as the GMM path (rank, the probability of every rank, cosine),
from the cross-attention plug-in (``models.cross``) instead of the GMM head on two separate
embeddings (``CrossScorer.scores``: the cosine costs little, the plain top layers run from the
plug-in's lower states). Pairs stream in the chunks of ``rank.read_pair_chunks``; each chunk is cut
into length-sorted batches of at most ``batch_tokens`` padded tokens (both sides)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from .console import Progress
from .models.cross_scorer import DEFAULT_PAIR_TOKENS, CrossScorer
from .models.encoder import Encoder
from .pairscore import RankedChunk

__all__ = ["CrossRanker", "DEFAULT_PAIR_TOKENS"]


class CrossRanker:
    """``emmax rank --cross``: a :class:`CrossScorer` behind the interface ``rank_files``
    uses for a GMM head (``encoder``, ``num_ranks``, ``rank_names``, ``rank_pairs``).

    Args:
        scorer: a loaded cross scorer.
    """

    def __init__(self, scorer: CrossScorer):
        self.scorer = scorer

    @classmethod
    def load(
        cls,
        model: str | os.PathLike | Encoder | None = None,
        device: str = "auto",
        precision: str = "auto",
    ) -> CrossRanker:
        """Load a model's encoder and cross scorer (the plug-in files are read first, so a
        model without one fails before the encoder weights are read).

        Raises:
            ModelLoadError: no such model, no cross scorer (the hint names ``emmax train
                --phase cross``), or a corrupt or mismatched one.
        """
        return cls(CrossScorer.load(model, device=device, precision=precision))

    @property
    def encoder(self) -> Encoder:
        return self.scorer.encoder

    @property
    def num_ranks(self) -> int:
        return self.scorer.num_ranks

    @property
    def rank_names(self) -> list[str]:
        """The names of the ranks (those of the plug-in's card, else the GMM defaults)."""
        from .models.gmm_head import default_rank_names

        names = (self.scorer.plugin.card or {}).get("rank_names")
        if isinstance(names, list) and len(names) == self.num_ranks:
            return [str(x) for x in names]
        return default_rank_names(self.num_ranks)

    def score(
        self,
        src: Sequence[str],
        tgt: Sequence[str],
        batch_tokens: int = DEFAULT_PAIR_TOKENS,
        ids: np.ndarray | None = None,
        progress: Progress | None = None,
    ) -> RankedChunk:
        """Rank in-memory pairs ``(src[i], tgt[i])`` (one chunk); symmetric by construction."""
        probs, cosine = self.scorer.scores(src, tgt, batch_tokens, progress)
        return RankedChunk(
            ids=np.arange(len(src), dtype=np.int64) if ids is None else np.asarray(ids),
            rank=probs.argmax(1).astype(np.int64),
            probs=probs,
            cosine=cosine,
        )

    def rank_pairs(
        self,
        chunks: Iterable[tuple[np.ndarray, Sequence[str], Sequence[str]]],
        batch_tokens: int = DEFAULT_PAIR_TOKENS,
        progress: Progress | None = None,
    ) -> Iterator[RankedChunk]:
        """Score a stream of ``(ids, src_texts, tgt_texts)`` chunks, one ``RankedChunk`` per
        chunk, in input order; ``progress(n)`` per batch of pairs."""
        for ids, src, tgt in chunks:
            yield self.score(src, tgt, batch_tokens, ids=ids, progress=progress)
