"""Bitext filters shared by ``emmax mine`` and ``emmax score``: the checks corpus builders
expect from stopes and Bicleaner, on top of the margin and the semantic rank.

Each filter gives a boolean *drop* mask over the pairs; :func:`apply_filters` runs them in a
fixed order and names, for every dropped pair, the first filter that dropped it, so counts add
up. Text normalisation for duplicates and copies: lower case, no punctuation, no digits, no
whitespace (``normalize``)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from difflib import SequenceMatcher

import numpy as np

__all__ = [
    "FilterConfig",
    "FilterResult",
    "REASONS",
    "normalize",
    "copy_mask",
    "length_ratio",
    "duplicate_mask",
    "apply_filters",
]

# the order in which drops are attributed; `keep` is no reason
REASONS = (
    "threshold",
    "rank",
    "margin_cap",
    "copy",
    "length",
    "src_lang",
    "tgt_lang",
    "repeated",
    "duplicate",
)
_STRIP = re.compile(r"[\W\d_]+", re.UNICODE)


@dataclass
class FilterConfig:
    """Settings of the filters; None switches a filter off.

    Attributes:
        margin_cap: drop pairs whose margin is above this (copies, boilerplate).
        copy_ratio: drop pairs whose normalised sides are equal, or similar at least this much
            (difflib ratio, 0..1).
        max_length_ratio: drop pairs whose longer side has more than this many times the
            tokens (or characters) of the shorter one.
        min_length_tokens: the length ratio applies only when the longer side has at least
            this many tokens (very short lines vary a lot).
        src_lang, tgt_lang: expected languages (language ID of each side).
        max_repeats: drop pairs where either side occurs more than this many times in its
            input (boilerplate).
        dedup: drop pairs whose normalised source or target repeats a better-scored pair's.
    """

    margin_cap: float | None = None
    copy_ratio: float | None = 0.9
    max_length_ratio: float | None = 3.0
    min_length_tokens: int = 6
    src_lang: str | None = None
    tgt_lang: str | None = None
    max_repeats: int | None = 2
    dedup: bool = True


@dataclass
class FilterResult:
    """``reason[i]``: index into ``REASONS`` of the first filter that dropped pair i, or -1;
    ``counts``: pairs dropped per reason (each pair counted once)."""

    reason: np.ndarray
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def keep(self) -> np.ndarray:
        return self.reason < 0

    def reason_names(self) -> list[str]:
        return ["" if r < 0 else REASONS[r] for r in self.reason.tolist()]


def normalize(texts: Sequence[str]) -> list[str]:
    """Lower case without punctuation, symbols, digits or whitespace: the key of duplicate
    and copy detection (``"The 2 cats!"`` and ``"the cats"`` are the same)."""
    return [_STRIP.sub("", t).casefold() for t in texts]


def copy_mask(src: Sequence[str], tgt: Sequence[str], ratio: float = 0.9) -> np.ndarray:
    """True where the target is a copy of the source: normalised sides equal (both non-empty),
    or at least ``ratio`` similar (``difflib`` ratio on the normalised text, computed only
    for pairs whose lengths allow it). Pairs with no letters on either side count as copies
    when their raw text is equal."""
    a, b = normalize(src), normalize(tgt)
    out = np.zeros(len(a), bool)
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        if not x or not y:
            out[i] = src[i].strip() == tgt[i].strip()
        elif x == y:
            out[i] = True
        elif ratio < 1 and min(len(x), len(y)) >= ratio * max(len(x), len(y)):
            out[i] = SequenceMatcher(None, x, y, autojunk=False).ratio() >= ratio
    return out


def length_ratio(src_len: np.ndarray, tgt_len: np.ndarray) -> np.ndarray:
    """Longer over shorter side, per pair (lengths of 0 count as 1)."""
    a = np.maximum(np.asarray(src_len, np.float64), 1)
    b = np.maximum(np.asarray(tgt_len, np.float64), 1)
    return np.maximum(a, b) / np.minimum(a, b)


def duplicate_mask(src: Sequence[str], tgt: Sequence[str]) -> np.ndarray:
    """True for a pair whose normalised source or normalised target already occurred in an
    earlier pair (pairs come best first, so the best-scored one of each group stays)."""
    seen_s: set[str] = set()
    seen_t: set[str] = set()
    out = np.zeros(len(src), bool)
    for i, (x, y) in enumerate(zip(normalize(src), normalize(tgt), strict=True)):
        if (x and x in seen_s) or (y and y in seen_t):
            out[i] = True
        else:
            seen_s.add(x)
            seen_t.add(y)
    return out


def apply_filters(
    cfg: FilterConfig,
    src: Sequence[str] | None,
    tgt: Sequence[str] | None,
    margin: np.ndarray,
    *,
    below_threshold: np.ndarray | None = None,
    below_rank: np.ndarray | None = None,
    src_len: np.ndarray | None = None,
    tgt_len: np.ndarray | None = None,
    src_repeats: np.ndarray | None = None,
    tgt_repeats: np.ndarray | None = None,
    lang_check=None,
) -> FilterResult:
    """Run every filter that is switched on and attribute each drop to its first reason.

    Args:
        cfg: the filter settings.
        src, tgt: the pairs' texts (None: the text filters are skipped).
        margin: (n,) margin (or score) of each pair, for ``margin_cap``.
        below_threshold, below_rank: (n,) drop masks computed by the caller.
        src_len, tgt_len: (n,) lengths for the length ratio (tokens; default: characters).
        src_repeats, tgt_repeats: (n,) times each side occurs in its input.
        lang_check: ``lang_check(texts, lang) -> bool mask`` of texts in ``lang``
            (``langid.matches``); needed when ``cfg.src_lang`` or ``cfg.tgt_lang`` is set.

    Returns:
        A :class:`FilterResult`.
    """
    n = len(margin)
    reason = np.full(n, -1, np.int64)

    def mark(name: str, drop: np.ndarray | None) -> None:
        if drop is None:
            return
        reason[(reason < 0) & drop] = REASONS.index(name)

    def live() -> np.ndarray:
        return np.flatnonzero(reason < 0)

    def on_live(fn) -> np.ndarray:
        """A drop mask computed only on the pairs still kept (text checks are per pair)."""
        idx = live()
        m = np.zeros(n, bool)
        if len(idx):
            m[idx] = fn(idx)
        return m

    mark("threshold", below_threshold)
    mark("rank", below_rank)
    if cfg.margin_cap is not None:
        mark("margin_cap", np.asarray(margin) > cfg.margin_cap)
    has_text = src is not None and tgt is not None
    if has_text and cfg.copy_ratio is not None:
        mark(
            "copy",
            on_live(lambda i: copy_mask([src[j] for j in i], [tgt[j] for j in i], cfg.copy_ratio)),
        )
    if cfg.max_length_ratio is not None and (has_text or src_len is not None):
        if src_len is None or tgt_len is None:
            src_len = np.fromiter((len(t) for t in src), np.int64, len(src))
            tgt_len = np.fromiter((len(t) for t in tgt), np.int64, len(tgt))
        long = np.maximum(src_len, tgt_len) >= cfg.min_length_tokens
        mark("length", long & (length_ratio(src_len, tgt_len) > cfg.max_length_ratio))
    if has_text and lang_check is not None:
        for name, texts, lang in (("src_lang", src, cfg.src_lang), ("tgt_lang", tgt, cfg.tgt_lang)):
            if lang:
                mark(name, on_live(lambda i, t=texts, g=lang: ~lang_check([t[j] for j in i], g)))
    if cfg.max_repeats is not None and src_repeats is not None and tgt_repeats is not None:
        mark("repeated", (src_repeats > cfg.max_repeats) | (tgt_repeats > cfg.max_repeats))
    if has_text and cfg.dedup:
        mark(
            "duplicate", on_live(lambda i: duplicate_mask([src[j] for j in i], [tgt[j] for j in i]))
        )
    counts = {r: int((reason == k).sum()) for k, r in enumerate(REASONS)}
    return FilterResult(reason, counts)
