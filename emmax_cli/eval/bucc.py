"""BUCC 2018 parallel sentence spotting (Zweigenbaum et al. 2018), LASER's protocol.

Files (per language pair ``xx-en`` and split): ``xx-en.<split>.xx`` and ``xx-en.<split>.en``
hold ``ID<TAB>sentence`` lines; ``xx-en.<split>.gold`` holds ``xx_ID<TAB>en_ID`` lines.

Per split: unify exact duplicate sentences on each side (the first copy is embedded and
searched), mine with :func:`emmax_cli.mine.mine` (ratio margin, k=4, ``max`` retrieval), map
the mined texts back to IDs; a text that occurs more than once in a split is dropped from the
text->ID map, so candidates with it are ignored (LASER ``tasks/bucc/bucc.py``). The threshold
is tuned on the sample split (best F1, midpoint rule: :func:`emmax_cli.mine.calibrate_threshold`)
and applied to the test split (keep score >= threshold), scored as

    P = |E ∩ G| / |E|,  R = |E ∩ G| / |G|,  F1 = 2PR / (P + R).

Default convention (XTREME): ``sample`` tunes, the official ``training`` split is reported."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..console import Progress, ProgressFactory, no_progress, null_progress
from ..errors import InputError

log = logging.getLogger(__name__)

BUCC_PAIRS = ("de-en", "fr-en", "ru-en", "zh-en")
SAMPLE_SPLITS = ("sample", "dev")  # preferred split names in the tuning folder
TEST_SPLITS = ("training", "test", "train")  # ... and in the test folder
_SENT_FILE = re.compile(r"^([a-z]{2,3})-en\.([A-Za-z0-9_]+)\.en$")


# ---- readers --------------------------------------------------------------------------------
def read_sentences(path: str | os.PathLike) -> tuple[list[str], list[str]]:
    """``(ids, texts)`` of a BUCC ``ID<TAB>sentence`` file."""
    from ..io.text import read_lines

    ids, texts = [], []
    for i, line in enumerate(read_lines(path)):
        if not line.strip():
            continue
        sid, tab, text = line.partition("\t")
        if not tab:
            raise InputError(
                f"{path} line {i + 1}: expected ID<TAB>sentence",
                hint="BUCC sentence files have two tab-separated columns",
            )
        ids.append(sid.strip())
        texts.append(text)
    return ids, texts


def read_gold(path: str | os.PathLike) -> set[tuple[str, str]]:
    """Gold pairs ``{(src_id, en_id)}`` of a BUCC ``.gold`` file."""
    from ..io.text import read_lines

    gold = set()
    for i, line in enumerate(read_lines(path)):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) < 2:
            raise InputError(
                f"{path} line {i + 1}: expected SRC_ID<TAB>EN_ID",
                hint="BUCC gold files have two tab-separated columns",
            )
        gold.add((parts[0].strip(), parts[1].strip()))
    return gold


@dataclass
class BuccSplit:
    """One split of one language pair."""

    pair: str  # "de-en"
    split: str  # "sample", "training", ...
    src_ids: list[str]
    src_texts: list[str]
    tgt_ids: list[str]
    tgt_texts: list[str]
    gold: set[tuple[str, str]] | None  # None when the gold file is absent (official test)


def _split_files(d: Path) -> dict[tuple[str, str], Path]:
    """``{(lang, split): path of the English file}`` under d (searched recursively)."""
    out = {}
    for p in sorted(d.rglob("*-en.*.en")):
        m = _SENT_FILE.match(p.name)
        if m and (p.parent / f"{m.group(1)}-en.{m.group(2)}.{m.group(1)}").exists():
            out.setdefault((m.group(1), m.group(2)), p)
    return out


def pair_lang(pair: str) -> str:
    """``"de-en"`` or ``"de"`` -> ``"de"``."""
    p = pair.strip().lower()
    lang = p.removesuffix("-en")
    if not re.fullmatch(r"[a-z]{2,3}", lang):
        raise InputError(
            f"bad BUCC language pair {pair!r}", hint="use e.g. de-en,fr-en,ru-en,zh-en"
        )
    return lang


def find_split(directory: str | os.PathLike, lang: str, prefer: Sequence[str]) -> BuccSplit:
    """Read the split of ``lang``-en found under ``directory`` (preferring names in ``prefer``)."""
    d = Path(directory)
    if not d.is_dir():
        raise InputError(f"{d}: not a directory", hint="pass the folder holding the BUCC files")
    found = {s: p for (lg, s), p in _split_files(d).items() if lg == lang}
    if not found:
        raise InputError(
            f"{d}: no {lang}-en.<split>.{{{lang},en}} files",
            hint="expected BUCC 2018 files such as de-en.sample.de and de-en.sample.en",
        )
    names = [s for s in prefer if s in found] or sorted(found)
    if len(names) > 1 and not any(s in found for s in prefer):
        raise InputError(
            f"{d}: several {lang}-en splits ({', '.join(sorted(found))})",
            hint="pass a folder that holds one split",
        )
    split = names[0]
    en = found[split]
    src = en.parent / f"{lang}-en.{split}.{lang}"
    gold_path = en.parent / f"{lang}-en.{split}.gold"
    src_ids, src_texts = read_sentences(src)
    tgt_ids, tgt_texts = read_sentences(en)
    gold = read_gold(gold_path) if gold_path.exists() else None
    return BuccSplit(f"{lang}-en", split, src_ids, src_texts, tgt_ids, tgt_texts, gold)


def available_pairs(directory: str | os.PathLike) -> list[str]:
    """The ``xx-en`` pairs with files in ``directory``."""
    langs = sorted({lg for lg, _ in _split_files(Path(directory))})
    return [f"{lg}-en" for lg in langs]


def write_split(
    directory: str | os.PathLike,
    lang: str,
    split: str,
    src: Iterable[tuple[str, str]],
    tgt: Iterable[tuple[str, str]],
    gold: Iterable[tuple[str, str]] | None = None,
) -> None:
    """Write a split in BUCC format (used by tests and to build small BUCC-style sets)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    stem = d / f"{lang}-en.{split}"
    for suffix, rows in ((lang, src), ("en", tgt)):
        with open(f"{stem}.{suffix}", "w", encoding="utf-8") as f:
            f.writelines(f"{i}\t{t}\n" for i, t in rows)
    if gold is not None:
        with open(f"{stem}.gold", "w", encoding="utf-8") as f:
            f.writelines(f"{a}\t{b}\n" for a, b in gold)


# ---- metric and threshold -------------------------------------------------------------------
def bucc_metrics(
    pred_pairs: Iterable[tuple[str, str]], gold_pairs: Iterable[tuple[str, str]]
) -> dict[str, Any]:
    """P = |E∩G|/|E|, R = |E∩G|/|G|, F1 = 2PR/(P+R) over sets of ID pairs (0 when undefined)."""
    E, G = set(pred_pairs), set(gold_pairs)
    tp = len(E & G)
    p = tp / len(E) if E else 0.0
    r = tp / len(G) if G else 0.0
    f1 = 2 * p * r / (p + r) if p + r > 0 else 0.0
    return {
        "precision": p,
        "recall": r,
        "f1": f1,
        "n_pred": len(E),
        "n_gold": len(G),
        "n_correct": tp,
    }


@dataclass
class Candidates:
    """Mined ID pairs of one split, sorted by margin score, highest first."""

    pairs: list[tuple[str, str]]
    scores: np.ndarray  # (m,) float32

    def above(self, threshold: float) -> list[tuple[str, str]]:
        """The pairs scoring at least ``threshold``."""
        return [p for p, s in zip(self.pairs, self.scores, strict=False) if s >= threshold]


def tune_threshold(
    cands: Candidates, gold: set[tuple[str, str]]
) -> tuple[float, float, float, float]:
    """``(threshold, P, R, F1)``: best F1 over the candidates (midpoint rule, LASER
    ``BuccOptimize``; ties in score form one group), recall over all ``len(gold)`` pairs."""
    from ..mine import calibrate_threshold

    if not gold:
        raise InputError(
            "cannot tune a threshold without gold pairs",
            hint="the tuning split needs its .gold file",
        )
    correct = np.fromiter((p in gold for p in cands.pairs), dtype=bool, count=len(cands.pairs))
    return calibrate_threshold(cands.scores, correct, n_gold=len(gold))


def _unique_text_ids(ids: Sequence[str], texts: Sequence[str]) -> dict[str, str]:
    """text -> ID for texts that occur exactly once (LASER drops the ambiguous ones)."""
    seen: dict[str, str | None] = {}
    for i, t in zip(ids, texts, strict=False):
        seen[t] = None if t in seen else i
    return {t: i for t, i in seen.items() if i is not None}


def mine_split(
    encoder,
    split: BuccSplit,
    k: int = 4,
    progress: Progress | None = None,
    batch_tokens: int = 8192,
) -> Candidates:
    """Embed the unique sentences of a split, mine (ratio margin, ``max``), map back to IDs."""
    from ..mine import mine, unify

    progress = progress or null_progress
    if not split.src_texts or not split.tgt_texts:
        raise InputError(
            f"{split.pair} {split.split}: a side is empty", hint="check the BUCC files"
        )
    s_keep, _ = unify(split.src_texts)
    t_keep, _ = unify(split.tgt_texts)
    s_txt = [split.src_texts[i] for i in s_keep]
    t_txt = [split.tgt_texts[i] for i in t_keep]
    emb = encoder.encode(s_txt + t_txt, batch_tokens=batch_tokens, progress=progress)
    res = mine(emb[: len(s_txt)], emb[len(s_txt) :], k=k, margin="ratio", retrieval="max")
    s_map = _unique_text_ids(split.src_ids, split.src_texts)
    t_map = _unique_text_ids(split.tgt_ids, split.tgt_texts)
    best: dict[tuple[str, str], float] = {}
    for si, ti, sc in zip(
        res.src_idx.tolist(), res.tgt_idx.tolist(), res.score.tolist(), strict=False
    ):
        a, b = s_map.get(s_txt[si]), t_map.get(t_txt[ti])
        if a is None or b is None:
            continue
        if (a, b) not in best or sc > best[(a, b)]:  # max score per ID pair (LASER)
            best[(a, b)] = sc
    items = sorted(best.items(), key=lambda kv: -kv[1])
    return Candidates([p for p, _ in items], np.asarray([s for _, s in items], dtype=np.float32))


# ---- evaluation -----------------------------------------------------------------------------
@dataclass
class BuccPair:
    """One language pair: the tuned threshold, tuning and test P/R/F1 (fractions) and counts."""

    pair: str
    tune_split: str
    test_split: str
    threshold: float
    tune_precision: float
    tune_recall: float
    tune_f1: float
    precision: float | None  # on the test split (None without its gold)
    recall: float | None
    f1: float | None
    n_pred: int
    n_gold: int | None
    n_correct: int | None
    n_candidates: int
    n_src: int
    n_tgt: int


@dataclass
class BuccResult:
    """Every evaluated pair, k and the model."""

    pairs: list[BuccPair]
    k: int = 4
    model: dict[str, Any] = field(default_factory=dict)

    @property
    def average_f1(self) -> float | None:
        """The mean test F1 over pairs with gold pairs."""
        f = [p.f1 for p in self.pairs if p.f1 is not None]
        return float(np.mean(f)) if f else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: protocol, model, average F1 and every pair."""
        return {
            "task": "bucc2018",
            "protocol": (
                "threshold tuned on the first folder's split (best F1, midpoint rule), applied "
                f"to the second's; ratio margin, k={self.k}, max retrieval, unified duplicates; "
                "P/R/F1 as fractions"
            ),
            "model": self.model,
            "average_f1": self.average_f1,
            "pairs": {p.pair: asdict(p) for p in self.pairs},
        }


def eval_bucc(
    model: Any,
    sample_dir: str | os.PathLike,
    test_dir: str | os.PathLike,
    pairs: str | Sequence[str] | None = None,
    k: int = 4,
    progress: ProgressFactory | None = None,
    batch_tokens: int = 8192,
    *,
    device: str = "auto",
    precision: str = "fp32",
) -> BuccResult:
    """BUCC P/R/F1 per language pair: tune the threshold on ``sample_dir``'s split, score
    ``test_dir``'s split. The library function behind ``emmax eval bucc``; every split is
    read and checked before the model is loaded.

    Args:
        model: a built-in name, a model directory, None (the default model) or an Encoder.
        sample_dir: the folder of the tuning split (with ``.gold``); XTREME: ``sample``.
        test_dir: the folder of the scored split; XTREME: ``training``.
        pairs: ``"de-en,fr-en"``, a list, or None (all pairs found in ``test_dir``).
        k: the margin's neighbourhood size.
        progress: a factory ``progress(description, total)`` (see ``console.progress_bar``).
        batch_tokens: padded tokens per encoder batch.
        device, precision: where and how to embed.

    Returns:
        A :class:`BuccResult`.

    Raises:
        InputError: missing files, a tuning split without gold pairs, or no gold pair among
            the tuning candidates.
        ModelLoadError: the model cannot be loaded.
    """
    from ..bitext import load_encoder

    if pairs is None:
        wanted = available_pairs(test_dir)
        if not wanted:
            raise InputError(
                f"{test_dir}: no BUCC files found",
                hint="expected files such as de-en.training.de / .en / .gold",
            )
    else:
        wanted = [p for p in (pairs.split(",") if isinstance(pairs, str) else pairs) if p.strip()]
    splits = []
    for pair in wanted:
        lang = pair_lang(pair)
        tune = find_split(sample_dir, lang, SAMPLE_SPLITS)
        test = find_split(test_dir, lang, TEST_SPLITS)
        if tune.gold is None:
            raise InputError(
                f"{sample_dir}: no {lang}-en.{tune.split}.gold",
                hint="the tuning split needs gold pairs",
            )
        splits.append((tune, test))
    encoder = load_encoder(model, device, precision)
    total = sum(len(set(sp.src_texts)) + len(set(sp.tgt_texts)) for both in splits for sp in both)
    out = []
    with (progress or no_progress)("bucc", total) as adv:
        for tune, test in splits:
            out.append(_eval_pair(encoder, tune, test, k, adv, batch_tokens))
    return BuccResult(pairs=out, k=k, model=dict(encoder.meta))


def _eval_pair(
    encoder, tune: BuccSplit, test: BuccSplit, k: int, progress: Progress, batch_tokens: int
) -> BuccPair:
    """Tune the threshold on one pair's tuning split and score its test split."""
    c_tune = mine_split(encoder, tune, k=k, progress=progress, batch_tokens=batch_tokens)
    thr, tp, tr, tf = tune_threshold(c_tune, tune.gold)
    c_test = mine_split(encoder, test, k=k, progress=progress, batch_tokens=batch_tokens)
    pred = c_test.above(thr)
    if test.gold is not None:
        m = bucc_metrics(pred, test.gold)
        P, R, F, ng, nc = m["precision"], m["recall"], m["f1"], m["n_gold"], m["n_correct"]
    else:
        P = R = F = ng = nc = None
    log.info(
        "%s: threshold %.4f (tuned on %s, F1 %.4f); %s F1 %s",
        tune.pair,
        thr,
        tune.split,
        tf,
        test.split,
        "n/a" if F is None else f"{F:.4f}",
    )
    return BuccPair(
        pair=tune.pair,
        tune_split=tune.split,
        test_split=test.split,
        threshold=thr,
        tune_precision=tp,
        tune_recall=tr,
        tune_f1=tf,
        precision=P,
        recall=R,
        f1=F,
        n_pred=len(pred),
        n_gold=ng,
        n_correct=nc,
        n_candidates=len(c_test.pairs),
        n_src=len(test.src_ids),
        n_tgt=len(test.tgt_ids),
    )
