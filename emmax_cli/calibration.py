"""Threshold calibration: the library function behind ``emmax calibrate``.

Samples are built like real comparable corpora from document-ordered parallel TSV files: a few
percent to a half of the source sentences have their translation on the target side, the rest
sit among their own documents' other sentences (``comparable_rows``). Each sample is mined as
``emmax mine`` does (ratio margin, ``max`` retrieval, GMM rank filter), and the threshold of
the best mean F1 over the samples is taken midway between two candidate scores."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .bitext import is_encoder, load_encoder
from .console import ProgressFactory, no_progress
from .errors import InputError
from .io.text import read_lines
from .mine import mine
from .models.loading import ModelConfig, resolve

DEFAULT_SHARES = (0.05, 0.2, 0.5)
RANK_PROBS = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5)  # P(rank >= top) cuts tried by calibrate

__all__ = ["Calibration", "comparable_rows", "best_mean_f1", "calibrate", "save_threshold"]


@dataclass
class Calibration:
    """A calibrated threshold with its P/R/F1 on the labelled sample and where it came from;
    ``written_to``: the ``emmax.json`` it was stored in, if any."""

    threshold: float
    precision: float
    recall: float
    f1: float
    n_gold: int
    n_candidates: int
    source: str
    margin_cap: float | None = None
    rank_prob: float | None = None
    written_to: Path | None = None


def comparable_rows(
    n_lines: int, n: int, share: float, doc_lines: int = 4, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, int]:
    """A comparable-corpus sample of line numbers from a document-ordered parallel text.

    The lines are cut into pseudo-documents of ``doc_lines`` consecutive lines. Documents are
    drawn at random; each of their sentences goes either to the source side or, as a
    same-document distractor, to the target side, until the source side has ``n`` sentences.
    A ``share`` of the source sentences keep their translation on the target side (the gold
    pairs); the target side is filled to ``2 n`` lines with sentences of other documents.

    Returns:
        ``(src, tgt, n_gold)``: line numbers of each side (a source line and a target line
        with the same number are a gold pair).
    """
    rng = np.random.default_rng(seed)
    docs = [np.arange(s, min(s + doc_lines, n_lines)) for s in range(0, n_lines, doc_lines)]
    src: list[int] = []
    same_doc: list[int] = []
    used = np.zeros(len(docs), bool)
    for d in rng.permutation(len(docs)):
        used[d] = True
        to_src = rng.random(len(docs[d])) < 0.5
        src.extend(docs[d][to_src].tolist())
        same_doc.extend(docs[d][~to_src].tolist())
        if len(src) >= n:
            break
    src_rows = np.array(src[:n], np.int64)
    n_gold = int(round(share * len(src_rows)))
    gold = rng.permutation(src_rows)[:n_gold]
    others = np.concatenate([docs[d] for d in np.flatnonzero(~used)] or [np.zeros(0, np.int64)])
    distract = np.concatenate([np.array(same_doc, np.int64), rng.permutation(others)])
    tgt = np.concatenate([gold, distract[: max(2 * n - n_gold, 0)]]).astype(np.int64)
    return src_rows, rng.permutation(tgt), n_gold


def calibrate(
    pair_files: Sequence[str | os.PathLike],
    model: Any = None,
    device: str = "auto",
    precision: str = "auto",
    k: int = 4,
    n_per_file: int = 250,
    shares: Sequence[float] = DEFAULT_SHARES,
    seed: int = 0,
    progress: ProgressFactory | None = None,
    *,
    doc_lines: int = 4,
    min_rank: int | None | str = "auto",
    write: bool = False,
) -> Calibration:
    """Choose the model's default mining threshold (and margin cap) on comparable-corpus
    samples built from parallel files: the library function behind ``emmax calibrate``.

    For every file and every share p, :func:`comparable_rows` builds a sample of
    ``n_per_file`` source sentences, a share p of which have their translation among ``2 n``
    target sentences; the others sit among their own documents' other sentences (files in
    document order, as WMT's, give topically close distractors). Each sample is mined on its
    own (ratio margin, ``max`` retrieval, the GMM rank filter where the model has a head), and
    the margin threshold and the rank filter's probability (``rank_prob``, among
    ``RANK_PROBS``) maximise the mean F1 over all samples, so that sparse samples (p = 0.05)
    weigh as much as dense ones. The margin cap is 10 % above the highest gold-pair margin seen.

    Args:
        pair_files: parallel TSV files ``src<TAB>tgt`` in document order (never evaluation
            data).
        model: a built-in name, a model directory, None (the default) or an Encoder.
        device, precision: where and how to embed.
        k: the margin's neighbourhood size.
        n_per_file: source sentences per sample.
        shares: shares of source sentences with a partner, one sample each.
        seed: seed of the draw.
        progress: a progress factory (see :func:`emmax_cli.bitext.mine_files`).
        doc_lines: lines per pseudo-document.
        min_rank: as ``mine_files``: ``"auto"`` the model's top rank, None no rank filter.
        write: store the threshold and cap in the model directory's ``emmax.json``.

    Returns:
        A :class:`Calibration` (``written_to`` set when ``write``).

    Raises:
        InputError: a bad pair file or share, no gold pair among the candidates, or (with
            ``write``) a model that is not a writable emmax model directory.
    """
    from .pairscore import default_min_rank, load_head, rank_probs

    progress = progress or no_progress
    if not shares or any(not 0 < p <= 1 for p in shares):
        raise InputError(f"shares must be in (0, 1], got {list(shares)}")
    target = _threshold_target(model) if write else None  # refuse before the slow part
    files = [(f, _read_pairs(f)) for f in pair_files]
    enc = load_encoder(model, device, precision)
    head = load_head(enc, dim=enc.dim) if min_rank is not None else None
    top = default_min_rank(head) if min_rank == "auto" else min_rank
    rng = np.random.default_rng(seed)
    raw = []  # (scores, correct, P(rank >= top), n_gold) per sample
    gold_margins = []
    window = 4 * n_per_file
    with progress("calibrate", 2 * window * len(files)) as adv:
        for _, rows in files:
            start = int(rng.integers(0, max(len(rows) - window, 0) + 1))
            part = rows[start : start + window]
            S = enc.encode([r[0] for r in part], progress=adv)
            T = enc.encode([r[1] for r in part], progress=adv)
            for j, share in enumerate(shares):
                src, tgt, n_gold = comparable_rows(
                    len(part), n_per_file, share, doc_lines, seed + j
                )
                cand = mine(S[src], T[tgt], k=k, margin="ratio", retrieval="max", device=device)
                a, b = src[cand.src_idx], tgt[cand.tgt_idx]
                correct = a == b
                p_top = np.ones(len(a))
                if head is not None and top is not None:
                    p_top = rank_probs(head, S[a], T[b])[:, top:].sum(1)
                gold_margins.append(cand.score[correct])
                raw.append((cand.score, correct, p_top, n_gold))
    if not any(c.any() for _, c, _, _ in raw):
        raise InputError(
            "cannot calibrate: no gold pair among the candidates",
            hint="check that the files are parallel (src<TAB>tgt)",
        )
    # threshold and rank filter probability jointly: the pair of the best mean F1
    best = None
    for rank_prob in RANK_PROBS if head is not None and top is not None else (0.0,):
        samples = [(sc[q >= rank_prob], c[q >= rank_prob], n) for sc, c, q, n in raw]
        if not any(c.any() for _, c, _ in samples):
            continue
        cand = (best_mean_f1(samples), rank_prob, samples)
        if best is None or cand[0][3] > best[0][3]:
            best = cand
    (thr, p, r, f1), rank_prob, samples = best
    # 10 % above the highest gold margin seen: samples are small, true pairs go higher
    cap = float(np.ceil(np.concatenate(gold_margins).max() * 1.1 * 20) / 20)
    names = ", ".join(Path(f).parent.name + "/" + Path(f).name for f in pair_files)
    n_gold_all = sum(n for _, _, n in samples)
    source = (
        f"emmax calibrate: comparable samples ({n_per_file} source sentences, shares "
        f"{', '.join(f'{x:g}' for x in shares)} with a partner among 2x target lines incl. "
        f"same-document distractors), ratio margin k={k}, P(rank >= {top}) >= "
        f"{rank_prob:g}, threshold of the "
        f"best mean F1 over {len(samples)} samples from {names}; mean P={p:.3f} R={r:.3f} "
        f"F1={f1:.3f}"
    )
    n_cand = int(sum(len(x) for x, _, _ in samples))
    cal = Calibration(thr, p, r, f1, n_gold_all, n_cand, source, margin_cap=cap)
    cal.rank_prob = rank_prob if head is not None and top is not None else None
    if target is not None:
        cal.written_to = save_threshold(target, cal)
    return cal


def best_mean_f1(samples: Sequence[tuple[np.ndarray, np.ndarray, int]]):
    """The threshold of the best mean F1 over samples ``(scores, correct, n_gold)``, placed
    midway between two candidate scores; returns ``(threshold, mean P, mean R, mean F1)``."""
    allv = np.unique(np.concatenate([s for s, _, _ in samples]))[::-1]
    cuts = np.concatenate([(allv[:-1] + allv[1:]) / 2, allv[-1:] - 1e-6]) if len(allv) else allv
    P = np.zeros((len(samples), len(cuts)))
    R = np.zeros_like(P)
    for i, (sc, ok, n_gold) in enumerate(samples):
        order = np.argsort(-sc, kind="stable")
        tp = np.concatenate([[0], np.cumsum(ok[order])])
        kept = np.searchsorted(-sc[order], -cuts, side="right")  # candidates >= cut
        P[i] = np.where(kept > 0, tp[kept] / np.maximum(kept, 1), 1.0)
        R[i] = tp[kept] / max(n_gold, 1)
    F = np.where(P + R > 0, 2 * P * R / np.maximum(P + R, 1e-12), 0.0)
    best = int(F.mean(0).argmax())
    return (
        float(cuts[best]),
        float(P[:, best].mean()),
        float(R[:, best].mean()),
        float(F[:, best].mean()),
    )


def _read_pairs(pair_file) -> list[list[str]]:
    rows = [ln.split("\t") for ln in read_lines(pair_file)]
    bad = [i + 1 for i, r in enumerate(rows) if len(r) != 2]
    if bad:
        raise InputError(
            f"{pair_file} line {bad[0]}: expected two tab-separated columns (src, tgt)"
        )
    return rows


def _threshold_target(model: Any) -> Path:
    """The model directory a calibrated threshold would be stored in (checked)."""
    if is_encoder(model):
        root = model.root
        if root is None:
            raise InputError("the encoder has no model directory to store a threshold in")
    else:
        root = resolve(model, verify=False).root
    _check_threshold_dir(Path(root))
    return Path(root)


def _check_threshold_dir(root: Path) -> None:
    from .models.loading import cache_dir

    if root.parent == cache_dir() / "models":
        raise InputError(
            "the built-in model's threshold is part of the release",
            hint="pass --threshold to `emmax mine`, or calibrate a copied model directory",
        )
    if not (root / "emmax.json").exists():
        raise InputError(
            f"{root}: not an emmax model directory (no emmax.json)",
            hint="calibration is stored in emmax model directories only",
        )


def save_threshold(model_dir: str | os.PathLike, cal: Calibration) -> Path:
    """Store a calibrated threshold in an emmax model directory's ``emmax.json``.

    Returns:
        The path of the ``emmax.json`` written.

    Raises:
        InputError: a built-in model, or not an emmax model directory.
    """
    root = Path(model_dir)
    _check_threshold_dir(root)
    cfg = ModelConfig.from_json(root / "emmax.json")
    cfg.mine_threshold, cfg.mine_threshold_source = round(cal.threshold, 4), cal.source
    settings = {"margin_cap": cal.margin_cap, "rank_prob": cal.rank_prob}
    cfg.extra["mine"] = {
        **cfg.extra.get("mine", {}),
        **{k: v for k, v in settings.items() if v is not None},
    }
    cfg.save(root / "emmax.json")
    return root / "emmax.json"
