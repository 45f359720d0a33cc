"""Near-miss translations: a translation with one fact changed, a clause dropped, or part of
another sentence spliced in. The cross scorer trains on them (``train/cross.py``) and
``bench/hard_pairs.py`` tests on them; each function returns None where it does not apply.

Rules work on any language for numbers, names in Latin script, truncation and splicing, and on
English for negation (the target side of emmax's training and benchmark pairs is English)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import numpy as np

KINDS = ("number", "name", "negation", "truncation")

_NUMBER = re.compile(r"\d+")
# a capitalised word that does not start the sentence or follow a sentence end
_NAME = re.compile(r"(?<=[\w,;:] )[A-Z][a-z]{2,}\b")
_NEGATIONS = [  # (pattern, replacement), tried in order: the first that matches is applied once
    (
        re.compile(
            r"\b(is|are|was|were|has|have|had|will|would|could|should|must|does|did|do)"
            r" not\b"
        ),
        r"\1",
    ),
    (re.compile(r"\b(is|are|was|were|has|have|had|does|did|do)n't\b"), r"\1"),
    (re.compile(r"\bcannot\b"), "can"),
    (re.compile(r"\bnever\b"), "always"),
    (re.compile(r"\b(is|are|was|were)\b"), r"\1 not"),
    (re.compile(r"\b(has|have|had) (been|\w+ed)\b"), r"\1 not \2"),
    (re.compile(r"\b(will|would|could|should|must|may|might)\b"), r"\1 not"),
    (re.compile(r"\bcan\b"), "cannot"),
]
_CLAUSE = re.compile(r"[,;:](?= )")


def change_number(text: str, rng: np.random.Generator) -> str | None:
    """Replace one number with another of the same number of digits."""
    found = list(_NUMBER.finditer(text))
    if not found:
        return None
    m = found[int(rng.integers(len(found)))]
    old = m.group()
    for _ in range(10):
        digits = rng.integers(0, 10, len(old))
        if len(old) > 1:
            digits[0] = rng.integers(1, 10)
        new = "".join(map(str, digits))
        if new != old:
            return text[: m.start()] + new + text[m.end() :]
    return None


def name_pool(texts: Iterable[str], limit: int = 5000) -> list[str]:
    """Capitalised words found inside sentences (names, mostly), most frequent first."""
    counts: dict[str, int] = {}
    for t in texts:
        for w in _NAME.findall(t):
            counts[w] = counts.get(w, 0) + 1
    return sorted(counts, key=lambda w: (-counts[w], w))[:limit]


def change_name(text: str, rng: np.random.Generator, names: Sequence[str]) -> str | None:
    """Replace one capitalised word inside the sentence with another from ``names``."""
    found = list(_NAME.finditer(text))
    if not found or len(names) < 2:
        return None
    m = found[int(rng.integers(len(found)))]
    for _ in range(10):
        new = names[int(rng.integers(len(names)))]
        if new != m.group() and new not in text:
            return text[: m.start()] + new + text[m.end() :]
    return None


def negate(text: str) -> str | None:
    """Flip the polarity of an English sentence at its first auxiliary (None if none)."""
    for pat, repl in _NEGATIONS:
        out, n = pat.subn(repl, text, count=1)
        if n and out != text:
            return out
    return None


def _units(text: str) -> tuple[list[str], str]:
    """Words joined by spaces, or characters for scripts written without spaces."""
    words = text.split(" ")
    if len(words) >= 4 or len(text) < 12:
        return words, " "
    return list(text), ""


def truncate(text: str, rng: np.random.Generator, lo: float = 0.3, hi: float = 0.75):
    """Keep a leading share of the sentence, at a clause boundary when one is in range.

    Returns:
        ``(text, kept share)`` or None for sentences under 6 words/characters.
    """
    units, sep = _units(text)
    if len(units) < 6:
        return None
    keep = float(rng.uniform(lo, hi))
    n = max(1, min(len(units) - 1, round(keep * len(units))))
    if sep:  # prefer a clause boundary within the range
        cuts = [i + 1 for i, w in enumerate(units[:-1]) if _CLAUSE.search(w + " ")]
        cuts = [c for c in cuts if lo * len(units) <= c <= hi * len(units)]
        if cuts:
            n = cuts[int(rng.integers(len(cuts)))]
    out = sep.join(units[:n]).rstrip(",;: ")
    return out, n / len(units)


def splice(a: str, b: str, share: float) -> str:
    """The first ``share`` of ``a`` followed by the end of ``b`` (a text interpolation)."""
    ua, sa = _units(a)
    ub, _ = _units(b)
    na = max(1, round(share * len(ua)))
    nb = max(1, round((1 - share) * len(ub)))
    return sa.join(ua[:na] + ub[len(ub) - nb :]) if sa else "".join(ua[:na] + ub[-nb:])


def perturb(kind: str, text: str, rng: np.random.Generator, names: Sequence[str] = ()):
    """Apply one kind of ``KINDS`` to a sentence; None where it does not apply."""
    if kind == "number":
        return change_number(text, rng)
    if kind == "name":
        return change_name(text, rng, names)
    if kind == "negation":
        return negate(text)
    if kind == "truncation":
        r = truncate(text, rng)
        return None if r is None else r[0]
    raise ValueError(f"unknown perturbation {kind!r}")
