"""Bitext filters shared by ``emmax mine`` and ``emmax score``: the checks corpus builders
expect from stopes and Bicleaner, on top of the margin and the semantic rank.

Each filter gives a boolean *drop* mask over the pairs; :func:`apply_filters` runs them in a
fixed order and names, for every dropped pair, the first filter that dropped it, so counts add
up. Text normalisation for duplicates and copies: lower case, no punctuation, no digits, no
whitespace (``normalize``)."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
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
FILTER_REASONS = (
    "threshold",
    "rank",
    "margin_cap",
    "repeated",
    "copy",
    "duplicate",
    "length",
    "src_lang",
    "tgt_lang",
)
# every reason a mined pair may be dropped for: the filters', then the cross scorer's rerank
REASONS = (*FILTER_REASONS, "cross_rank")
MIN_PAIRS_FOR_MEDIAN = 25
_STRIP = re.compile(r"[\W\d_]+", re.UNICODE)


@dataclass
class FilterConfig:
    """Settings of the filters; None switches a filter off.

    Attributes:
        margin_cap: drop pairs whose margin is above this (copies, boilerplate).
        copy_ratio: drop pairs whose normalised sides are equal, or similar at least this much
            (difflib ratio, 0..1).
        max_length_ratio: drop pairs whose source/target length ratio (tokens, or
            characters) is more than this many times off the median ratio of the pairs still
            kept (``length_relative``), or off 1 otherwise.
        length_relative: compare with the median ratio of the kept pairs (when at least 25
            are long enough), which adapts to the language pair (on FLORES-200 devtest, 1.8
            keeps 99.8 % of the true pairs of 36 languages and drops ~78 % of translations
            cut to 40-60 % of their words; the default 2.0 spares the freer translations of
            short Tatoeba sentences).
        min_length_tokens: the length ratio applies only when the longer side has at least
            this many tokens (very short lines vary a lot).
        src_lang, tgt_lang: expected languages (language ID of each side).
        max_repeats: drop pairs where either side occurs more than this many times in its
            input (boilerplate).
        dedup: drop pairs whose normalised source or target repeats a better-scored pair's.
    """

    margin_cap: float | None = None
    copy_ratio: float | None = 0.9
    max_length_ratio: float | None = 2.0
    length_relative: bool = True
    min_length_tokens: int = 10
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
    """NFKC, case-folded, without punctuation, symbols, digits or whitespace: the key of
    duplicate and copy detection (``"The 2 cats!"`` and ``"the cats"`` are the same)."""
    return [_STRIP.sub("", unicodedata.normalize("NFKC", t).casefold()) for t in texts]


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
        elif (
            ratio < 1
            and min(len(x), len(y)) >= ratio * max(len(x), len(y))
            and _trigram_overlap(x, y) >= 0.5  # cheap bound first: most pairs stop here
        ):
            out[i] = SequenceMatcher(None, x, y, autojunk=False).ratio() >= ratio
    return out


def _trigram_overlap(x: str, y: str) -> float:
    a = {x[i : i + 3] for i in range(len(x) - 2)} or {x}
    b = {y[i : i + 3] for i in range(len(y) - 2)} or {y}
    return len(a & b) / len(a | b)


def length_ratio(src_len: np.ndarray, tgt_len: np.ndarray) -> np.ndarray:
    """Longer over shorter side, per pair (lengths of 0 count as 1)."""
    a = np.maximum(np.asarray(src_len, np.float64), 1)
    b = np.maximum(np.asarray(tgt_len, np.float64), 1)
    return np.maximum(a, b) / np.minimum(a, b)


def duplicate_mask(
    src: Sequence[str], tgt: Sequence[str], seen: tuple[set, set] | None = None
) -> np.ndarray:
    """True for a pair whose normalised source or normalised target already occurred in an
    earlier pair (pairs come best first, so the best-scored one of each group stays).

    Args:
        seen: the normalised sources and targets of earlier kept pairs, updated in place
            (to carry the check across chunks of one file).
    """
    seen_s, seen_t = seen if seen is not None else (set(), set())
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
    length_fn: Callable[[list[str]], np.ndarray] | None = None,
    src_repeats: np.ndarray | None = None,
    tgt_repeats: np.ndarray | None = None,
    lang_check: Callable[[list[str], str], np.ndarray] | None = None,
) -> FilterResult:
    """Run every filter that is switched on and attribute each drop to its first reason.

    The cheap, vectorised checks come first; the per-text ones (copies, duplicates, lengths,
    language ID) run only on the pairs still kept.

    Args:
        cfg: the filter settings.
        src, tgt: the pairs' texts (None: the text filters are skipped).
        margin: (n,) margin (or score) of each pair, for ``margin_cap``.
        below_threshold, below_rank: (n,) drop masks computed by the caller.
        src_len, tgt_len: (n,) lengths for the length ratio; else ``length_fn(texts)`` on
            the kept pairs (e.g. subword tokens), else characters.
        src_repeats, tgt_repeats: (n,) times each side occurs in its input.
        lang_check: ``lang_check(texts, lang) -> bool mask`` of texts in ``lang``
            (``langid.matches``); needed when ``cfg.src_lang`` or ``cfg.tgt_lang`` is set.

    Returns:
        A :class:`FilterResult`.
    """
    n = len(margin)
    reason = np.full(n, -1, np.int64)

    def mark(name: str, drop: np.ndarray | None) -> None:
        if drop is not None:
            reason[(reason < 0) & drop] = REASONS.index(name)

    def on_live(fn) -> np.ndarray:
        """A drop mask computed only on the pairs still kept (text checks are per pair)."""
        idx = np.flatnonzero(reason < 0)
        m = np.zeros(n, bool)
        if len(idx):
            m[idx] = fn(idx)
        return m

    def texts(side: Sequence[str], idx: np.ndarray) -> list[str]:
        return [side[j] for j in idx]

    mark("threshold", below_threshold)
    mark("rank", below_rank)
    if cfg.margin_cap is not None:
        mark("margin_cap", np.asarray(margin) > cfg.margin_cap)
    if cfg.max_repeats is not None and src_repeats is not None and tgt_repeats is not None:
        mark("repeated", (src_repeats > cfg.max_repeats) | (tgt_repeats > cfg.max_repeats))
    has_text = src is not None and tgt is not None
    if has_text and cfg.copy_ratio is not None:
        mark("copy", on_live(lambda i: copy_mask(texts(src, i), texts(tgt, i), cfg.copy_ratio)))
    if has_text and cfg.dedup:
        mark("duplicate", on_live(lambda i: duplicate_mask(texts(src, i), texts(tgt, i))))
    if cfg.max_length_ratio is not None and (has_text or src_len is not None):
        mark(
            "length", on_live(lambda i: _length_drop(cfg, i, src, tgt, src_len, tgt_len, length_fn))
        )
    if has_text and lang_check is not None:
        for name, side, lang in (("src_lang", src, cfg.src_lang), ("tgt_lang", tgt, cfg.tgt_lang)):
            if lang:
                mark(name, on_live(lambda i, t=side, g=lang: ~lang_check(texts(t, i), g)))
    counts = {r: int((reason == k).sum()) for k, r in enumerate(FILTER_REASONS)}
    return FilterResult(reason, counts)


def _length_drop(cfg, idx, src, tgt, src_len, tgt_len, length_fn) -> np.ndarray:
    """Length-ratio drops among the pairs ``idx``: log(src/tgt length) more than
    log(max_length_ratio) away from their median (or from 0), longer side long enough."""
    if src_len is not None and tgt_len is not None:
        a, b = np.asarray(src_len)[idx], np.asarray(tgt_len)[idx]
    else:
        fn = length_fn or (lambda ts: np.fromiter(map(len, ts), np.int64, len(ts)))
        a, b = fn([src[j] for j in idx]), fn([tgt[j] for j in idx])
    a, b = np.maximum(a, 1).astype(np.float64), np.maximum(b, 1).astype(np.float64)
    r = np.log(a / b)
    long = np.maximum(a, b) >= cfg.min_length_tokens
    # the median of a few pairs says little about the language pair: then the ratio is 1
    relative = cfg.length_relative and long.sum() >= MIN_PAIRS_FOR_MEDIAN
    centre = float(np.median(r[long])) if relative else 0.0
    return long & (np.abs(r - centre) > np.log(cfg.max_length_ratio))
