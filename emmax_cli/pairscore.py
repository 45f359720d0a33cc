"""Judging candidate pairs after the k-NN search: cosine, GMM semantic rank, and the standard
filters (``filters.py``), with one reason per dropped pair.

``emmax mine`` calls :func:`judge_pairs` on its mined candidates; the pieces (``load_head``,
``rank_probs``, ``token_counts``) are shared with ``emmax score``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError
from .filters import REASONS, FilterConfig, apply_filters

__all__ = [
    "Judged",
    "load_head",
    "load_tokenizer_for",
    "rank_probs",
    "token_counts",
    "judge_pairs",
    "default_min_rank",
    "rank_below",
    "mine_settings",
    "default_filters",
    "check_langs",
    "judge_candidates",
]

RANK_CHUNK = 65_536  # pairs per GMM call: bounded memory


@dataclass
class Judged:
    """Scores and verdicts of n candidate pairs (arrays aligned with the candidates).

    ``rank``/``probs`` are None when the model has no GMM head; ``reason[i]`` indexes
    ``filters.REASONS`` (-1: kept); ``counts``: pairs dropped per reason."""

    cosine: np.ndarray
    rank: np.ndarray | None
    probs: np.ndarray | None
    reason: np.ndarray
    counts: dict[str, int] = field(default_factory=dict)
    min_rank: int | None = None

    @property
    def keep(self) -> np.ndarray:
        return self.reason < 0

    def reason_names(self) -> list[str]:
        return ["" if r < 0 else REASONS[r] for r in self.reason.tolist()]


@dataclass
class RankedChunk:
    """Semantic ranks of one chunk of aligned pairs (``emmax rank``; arrays of length n)."""

    ids: np.ndarray  # (n,) int64, 0-based input line numbers
    rank: np.ndarray  # (n,) int64, argmax of probs
    probs: np.ndarray  # (n, N) float32, rows sum to 1
    cosine: np.ndarray  # (n,) float32

    def __len__(self) -> int:
        return len(self.ids)


def is_encoder(model: Any) -> bool:
    """True for a loaded Encoder (or a look-alike), False for a name, a path or None (a
    ``str`` has an ``encode`` method too)."""
    return not isinstance(model, (str, os.PathLike)) and hasattr(model, "encode")


def _model_root(model: Any) -> Path | None:
    if is_encoder(model):
        return Path(model.root) if getattr(model, "root", None) else None
    from .models.loading import resolve

    return Path(resolve(model, verify=False).root)


def load_head(model: Any, dim: int | None = None):
    """The GMM head of ``model`` (a name, a path, None for the default, or an Encoder), or
    None when the model has none.

    Raises:
        ModelLoadError: a corrupt head, or one of another dimension than ``dim``.
    """
    from .models.gmm import WEIGHTS_FILE, GMMHead

    root = _model_root(model)
    if root is None or not (root / WEIGHTS_FILE).exists():
        return None
    return GMMHead.from_dir(root, dim=dim)


def load_tokenizer_for(model: Any):
    """The model's tokenizer (for length ratios), without loading the encoder weights."""
    if hasattr(model, "tokenizer"):
        return model.tokenizer
    from .models.loading import resolve
    from .models.tokenizer import load_tokenizer

    rm = resolve(model, verify=False)
    return load_tokenizer(rm.encoder_dir, rm.config.max_length or 512)


def token_counts(tokenizer: Any, texts: Sequence[str]) -> np.ndarray:
    """Subword tokens per text (no special tokens, not truncated): a length that is roughly
    comparable across scripts, unlike characters (Chinese/English ~1:3.5 in characters,
    ~1:1 in tokens on FLORES-200)."""
    if not len(texts):
        return np.zeros(0, np.int64)
    encs = tokenizer.encode_batch(list(texts), add_special_tokens=False)
    return np.fromiter((len(e.ids) for e in encs), np.int64, len(encs))


def rank_probs(head: Any, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, N) rank probabilities of the aligned pairs (a_i, b_i), both orders averaged."""
    import torch

    out = np.empty((len(a), head.num_ranks), np.float32)
    with torch.no_grad():
        for i in range(0, len(a), RANK_CHUNK):
            sl = slice(i, i + RANK_CHUNK)
            ta = torch.from_numpy(np.ascontiguousarray(a[sl], np.float32))
            tb = torch.from_numpy(np.ascontiguousarray(b[sl], np.float32))
            out[sl] = head.rank_probs_pairs(ta, tb).numpy()
    return out


def judge_pairs(
    src_emb: np.ndarray,
    tgt_emb: np.ndarray,
    margin: np.ndarray,
    cfg: FilterConfig | None,
    *,
    head: Any = None,
    min_rank: int | None = None,
    rank_prob: float = 0.5,
    threshold: float | None = None,
    src_texts: Sequence[str] | None = None,
    tgt_texts: Sequence[str] | None = None,
    tokenizer: Any = None,
    src_repeats: np.ndarray | None = None,
    tgt_repeats: np.ndarray | None = None,
) -> Judged:
    """Score and filter n candidate pairs (row i of ``src_emb`` with row i of ``tgt_emb``),
    best first.

    Args:
        src_emb, tgt_emb: (n, d) L2-normalised embeddings of the pairs' two sides.
        margin: (n,) margin score of each pair.
        cfg: filter settings; None: no filters beyond threshold and rank.
        head: a GMM head, or None (no ranks, no rank filter).
        min_rank, rank_prob: drop pairs whose probability of a rank >= ``min_rank`` is below
            ``rank_prob`` (needs ``head``; see :func:`rank_below`).
        threshold: drop pairs whose margin is below this.
        src_texts, tgt_texts: the pairs' texts (None: text filters off).
        tokenizer: for token lengths (default: characters).
        src_repeats, tgt_repeats: occurrences of each side in its input.
    """
    cos = np.einsum("ij,ij->i", src_emb, tgt_emb, dtype=np.float32).reshape(-1)
    probs = rank_probs(head, src_emb, tgt_emb) if head is not None else None
    rank = probs.argmax(1).astype(np.int64) if probs is not None else None
    below_thr = None if threshold is None else np.asarray(margin) < threshold
    below_rank = (
        None if probs is None or min_rank is None else rank_below(probs, min_rank, rank_prob)
    )
    if cfg is None:
        cfg = FilterConfig(copy_ratio=None, max_length_ratio=None, max_repeats=None, dedup=False)
    has_text = src_texts is not None and tgt_texts is not None
    lang_check = None
    if cfg.src_lang or cfg.tgt_lang:
        from .langid import matches as lang_check
    fr = apply_filters(
        cfg,
        src_texts if has_text else None,
        tgt_texts if has_text else None,
        margin,
        below_threshold=below_thr,
        below_rank=below_rank,
        length_fn=None if tokenizer is None else (lambda ts: token_counts(tokenizer, ts)),
        src_repeats=src_repeats,
        tgt_repeats=tgt_repeats,
        lang_check=lang_check,
    )
    return Judged(cos, rank, probs, fr.reason, fr.counts, min_rank if head is not None else None)


def rank_below(probs: np.ndarray, min_rank: int, rank_prob: float = 0.5) -> np.ndarray:
    """True where a pair fails the rank filter: its probability of a rank >= ``min_rank``
    is below ``rank_prob``. With 0.5 this is nearly "the most likely rank is below
    ``min_rank``"; ``emmax calibrate`` lowers it so that 98 % of the true pairs of its
    samples pass (the model's ``rank_prob``)."""
    return probs[:, min_rank:].sum(1) < rank_prob


def mine_settings(cfg: Any) -> dict:
    """The calibrated mining settings of a model (``emmax.json`` ``mine``: margin_cap,
    rank_prob), empty when it has none."""
    extra = getattr(cfg, "extra", None)
    m = extra.get("mine", {}) if isinstance(extra, dict) else {}
    return m if isinstance(m, dict) else {}


def default_min_rank(head: Any) -> int | None:
    """The top rank (N-1) of a head, None without one."""
    return None if head is None else int(head.num_ranks) - 1


def default_filters(cfg: Any, src_lang: str | None, tgt_lang: str | None) -> FilterConfig:
    """The filters ``emmax mine`` runs by default: the model's calibrated margin cap (from
    ``emmax calibrate``), copies, token length ratio, language ID (when the languages are
    given), repeated lines and normalised duplicates."""
    mine_cfg = mine_settings(cfg)
    return FilterConfig(margin_cap=mine_cfg.get("margin_cap"), src_lang=src_lang, tgt_lang=tgt_lang)


def check_langs(src_lang, tgt_lang, filters) -> tuple[str | None, str | None]:
    """Language codes normalised when language ID will run (an unknown code fails here,
    before anything is read); as given otherwise."""
    if isinstance(filters, FilterConfig):
        on = bool(filters.src_lang or filters.tgt_lang)
    elif isinstance(filters, dict):
        on = filters.get("src_lang", 1) is not None or filters.get("tgt_lang", 1) is not None
    else:
        on = filters == "auto"
    if not on or (src_lang is None and tgt_lang is None):
        return src_lang, tgt_lang
    from .langid import normalize_lang

    return (
        None if src_lang is None else normalize_lang(src_lang),
        None if tgt_lang is None else normalize_lang(tgt_lang),
    )


def judge_candidates(cand, s, t, source, cfg, thr, min_rank, filters, src_lang, tgt_lang) -> Judged:
    """Cosine, GMM rank and filter verdicts of every mined candidate (``MinedPairs`` of the
    sides ``s`` and ``t``; ``source``: the model or loaded Encoder)."""

    if filters == "auto" or isinstance(filters, dict):
        overrides = filters if isinstance(filters, dict) else {}
        filters = replace(default_filters(cfg, src_lang, tgt_lang), **overrides)
    head = None
    if min_rank is not None:
        head = load_head(source, dim=s.emb.shape[1])
        if min_rank == "auto":
            min_rank = default_min_rank(head)
        elif head is None:
            raise InputError(
                f"--min-rank needs a model with a GMM head; {cfg.name} has none",
                hint="pass --model with a trained emmax model, or drop --min-rank",
            )
    has_text = s.texts is not None and t.texts is not None
    si, ti = cand.src_idx, cand.tgt_idx
    tok = None
    if has_text and filters is not None and filters.max_length_ratio is not None:
        tok = load_tokenizer_for(source)
    return judge_pairs(
        s.emb[si],
        t.emb[ti],
        cand.score,
        filters,
        head=head,
        min_rank=min_rank,
        rank_prob=float(mine_settings(cfg).get("rank_prob", 0.5)),
        threshold=thr,
        src_texts=[s.texts[i] for i in si] if has_text else None,
        tgt_texts=[t.texts[i] for i in ti] if has_text else None,
        tokenizer=tok,
        src_repeats=None if s.repeats is None else s.repeats[si],
        tgt_repeats=None if t.repeats is None else t.repeats[ti],
    )
