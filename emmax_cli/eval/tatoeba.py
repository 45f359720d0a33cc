"""Tatoeba similarity search (LASER ``data/tatoeba/v1``; XTREME protocol).

For language xx with aligned files ``tatoeba.<xx>-eng.<xx>`` / ``tatoeba.<xx>-eng.eng`` (n lines):
xx->eng accuracy is the share of xx sentences whose nearest English sentence among the n is the
aligned line (exact cosine search, index-based); eng->xx the reverse. The text-based variant
counts a retrieval as correct when the retrieved text equals the gold text. Optional
``margin="ratio"``: the 4 nearest candidates are rescored by the ratio margin (LASER xsim).
Averages are unweighted means over languages, labelled ``XTREME-36`` and ``all (N languages)``."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..console import ProgressFactory, no_progress
from ..errors import InputError
from .xsim import DEFAULT_K, errors, normalize_margin, retrieve_both

log = logging.getLogger(__name__)

# The 36 XTREME Tatoeba languages (ISO 639-3, as in LASER's file names).
XTREME36 = [
    "afr",
    "ara",
    "bul",
    "ben",
    "deu",
    "ell",
    "spa",
    "est",
    "eus",
    "pes",
    "fin",
    "fra",
    "heb",
    "hin",
    "hun",
    "ind",
    "ita",
    "jpn",
    "jav",
    "kat",
    "kaz",
    "kor",
    "mal",
    "mar",
    "nld",
    "por",
    "rus",
    "swh",
    "tam",
    "tel",
    "tha",
    "tgl",
    "tur",
    "urd",
    "vie",
    "cmn",
]


@dataclass
class TatoebaLang:
    """One language's accuracies (fractions), index-based and text-based."""

    lang: str
    n: int
    xx2eng: float  # accuracy (fraction), index-based
    eng2xx: float
    xx2eng_text: float  # text-based: retrieved text == gold text
    eng2xx_text: float

    @property
    def mean(self) -> float:
        """The mean of the two directions (index-based)."""
        return (self.xx2eng + self.eng2xx) / 2.0

    def to_dict(self) -> dict[str, Any]:
        """The row as a dict, with ``mean``."""
        d = asdict(self)
        d["mean"] = self.mean
        return d


@dataclass
class TatoebaResult:
    """Per-language rows, the margin and k used, labelled averages and the model."""

    languages: list[TatoebaLang]
    margin: str | None
    k: int
    averages: dict[str, dict[str, Any]] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)

    def by_lang(self) -> dict[str, TatoebaLang]:
        """The rows by language code."""
        return {r.lang: r for r in self.languages}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: protocol, retrieval, model, averages and languages."""
        return {
            "task": "tatoeba",
            "protocol": (
                "LASER/XTREME Tatoeba v1: accuracy (fraction) of exact nearest-neighbour "
                "retrieval over the n aligned lines, index-based; *_text: text-based"
            ),
            "retrieval": "cosine" if self.margin is None else f"{self.margin} margin, k={self.k}",
            "model": self.model,
            "averages": self.averages,
            "languages": {r.lang: r.to_dict() for r in self.languages},
        }


def available_langs(data_dir: str | os.PathLike) -> list[str]:
    """The languages with a ``tatoeba.<xxx>-eng.eng`` file in ``data_dir``."""
    d = Path(data_dir)
    if not d.is_dir():
        raise InputError(f"{d}: not a directory", hint="pass the tatoeba/v1 folder")
    langs = sorted(p.name[len("tatoeba.") : -len("-eng.eng")] for p in d.glob("tatoeba.*-eng.eng"))
    if not langs:
        raise InputError(f"{d}: no tatoeba.<xxx>-eng.eng files", hint="pass the tatoeba/v1 folder")
    return langs


def resolve_langs(data_dir: str | os.PathLike, langs: str | Sequence[str] = "xtreme") -> list[str]:
    """``"xtreme"`` (the 36), ``"all"`` (every language in the folder), a comma list, or a list."""
    have = available_langs(data_dir)
    if isinstance(langs, str):
        key = langs.strip().lower()
        if key in ("xtreme", "xtreme36", "xtreme-36"):
            wanted = list(XTREME36)
        elif key == "all":
            return have
        else:
            wanted = [x.strip() for x in langs.split(",") if x.strip()]
    else:
        wanted = list(langs)
    missing = [x for x in wanted if x not in have]
    if missing:
        raise InputError(
            f"{data_dir}: no Tatoeba files for {', '.join(missing)}",
            hint="use ISO 639-3 codes as in the file names, e.g. deu,fra,cmn",
        )
    if not wanted:
        raise InputError("no languages selected", hint="use --langs xtreme, all or a comma list")
    return list(dict.fromkeys(wanted))


def lang_files(data_dir: str | os.PathLike, lang: str) -> tuple[Path, Path]:
    """The ``(xx, eng)`` files of ``lang``."""
    d = Path(data_dir)
    return d / f"tatoeba.{lang}-eng.{lang}", d / f"tatoeba.{lang}-eng.eng"


def count_sentences(data_dir: str | os.PathLike, langs: Sequence[str]) -> int:
    """Sentences to embed (both sides) for ``langs``: a progress total."""
    from ..io.text import count_lines

    return sum(
        (count_lines(a) or 0) + (count_lines(b) or 0)
        for a, b in (lang_files(data_dir, x) for x in langs)
    )


def score_lang(
    lang: str,
    X: np.ndarray,
    E: np.ndarray,
    xx_texts: Sequence[str],
    eng_texts: Sequence[str],
    margin: str | None = None,
    k: int = DEFAULT_K,
) -> TatoebaLang:
    """Accuracies for one language from its embeddings (X: xx side, E: English side)."""
    n = len(X)
    p_xe, p_ex = retrieve_both(X, E, margin=margin, k=k)
    e_xe, et_xe = errors(p_xe, xx_texts, eng_texts)
    e_ex, et_ex = errors(p_ex, eng_texts, xx_texts)
    return TatoebaLang(
        lang=lang,
        n=n,
        xx2eng=1 - e_xe / n,
        eng2xx=1 - e_ex / n,
        xx2eng_text=1 - et_xe / n,
        eng2xx_text=1 - et_ex / n,
    )


def _average(rows: list[TatoebaLang], label: str) -> dict[str, Any]:
    a = float(np.mean([r.xx2eng for r in rows]))
    b = float(np.mean([r.eng2xx for r in rows]))
    return {
        "label": label,
        "n_langs": len(rows),
        "xx2eng": a,
        "eng2xx": b,
        "mean": (a + b) / 2,
        "xx2eng_text": float(np.mean([r.xx2eng_text for r in rows])),
        "eng2xx_text": float(np.mean([r.eng2xx_text for r in rows])),
    }


def averages(rows: list[TatoebaLang]) -> dict[str, dict[str, Any]]:
    """``xtreme36`` (only when all 36 were evaluated) and ``all`` (every evaluated language)."""
    out = {}
    by = {r.lang: r for r in rows}
    if all(x in by for x in XTREME36):
        out["xtreme36"] = _average(
            [by[x] for x in XTREME36], "XTREME-36 (unweighted mean of 36 languages)"
        )
    out["all"] = _average(rows, f"all evaluated ({len(rows)} languages, unweighted mean)")
    return out


def eval_tatoeba(
    model: Any,
    data_dir: str | os.PathLike,
    langs: str | Sequence[str] = "xtreme",
    margin: str | None = None,
    k: int = DEFAULT_K,
    progress: ProgressFactory | None = None,
    batch_tokens: int = 8192,
    *,
    device: str = "auto",
    precision: str = "fp32",
) -> TatoebaResult:
    """Tatoeba accuracy per language, both directions, and labelled averages: the library
    function behind ``emmax eval tatoeba``. Every file is read and checked before the model
    is loaded.

    Args:
        model: a built-in name, a model directory, None (the default model) or an Encoder.
        data_dir: the folder of ``tatoeba.<xxx>-eng.<xxx>`` / ``.eng`` files (LASER v1).
        langs: ``"xtreme"`` (36), ``"all"`` (every language in ``data_dir``), a comma string
            or a list of ISO 639-3 codes.
        margin: None (cosine, XTREME/LASER) or ``"ratio"`` (k=4 ratio margin over the
            nearest candidates).
        k: the margin's neighbourhood size.
        progress: a factory ``progress(description, total)`` (see ``console.progress_bar``),
            advanced by sentences embedded.
        batch_tokens: padded tokens per encoder batch.
        device, precision: where and how to embed (fp32 reproduces published figures).

    Returns:
        A :class:`TatoebaResult`.

    Raises:
        InputError: a missing language, a missing or misaligned file.
        ModelLoadError: the model cannot be loaded.
    """
    from ..bitext import load_encoder
    from ..io.text import read_lines

    margin = normalize_margin(margin)
    progress = progress or no_progress
    texts = {}
    for lang in resolve_langs(data_dir, langs):
        fx, fe = lang_files(data_dir, lang)
        if not fx.exists():
            raise InputError(f"{fx}: no such file", hint="each language needs both sides")
        xx, eng = read_lines(fx), read_lines(fe)
        if len(xx) != len(eng):
            raise InputError(
                f"{lang}: {len(xx)} {lang} lines but {len(eng)} English lines",
                hint="the two Tatoeba files must be line-aligned",
            )
        texts[lang] = (xx, eng)
    encoder = load_encoder(model, device, precision)
    rows = []
    with progress("tatoeba", sum(len(a) + len(b) for a, b in texts.values())) as adv:
        for lang, (xx, eng) in texts.items():
            emb = encoder.encode(xx + eng, batch_tokens=batch_tokens, progress=adv)
            row = score_lang(lang, emb[: len(xx)], emb[len(xx) :], xx, eng, margin=margin, k=k)
            log.debug("%s: xx2eng %.4f eng2xx %.4f (n=%d)", lang, row.xx2eng, row.eng2xx, row.n)
            rows.append(row)
    return TatoebaResult(
        languages=rows, margin=margin, k=k, averages=averages(rows), model=dict(encoder.meta)
    )
