"""Threshold calibration: the library function behind ``emmax calibrate``.

A BUCC-style labelled sample is drawn from parallel TSV files (gold pairs hidden among
one-sided sentences), mined with the ratio margin and ``max`` retrieval, and the best-F1 cut
is taken midway between two candidate scores (the BUCC rule, ``mine.calibrate_threshold``)."""

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
from .mine import calibrate_threshold, mine, unify
from .models.loading import ModelConfig, resolve

__all__ = ["Calibration", "calibration_sample", "calibrate", "save_threshold"]


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
    written_to: Path | None = None


def calibration_sample(
    pair_file: str | os.PathLike, n: int = 1000, gold_fraction: float = 0.8, seed: int = 0
) -> tuple[list[str], list[str], int]:
    """A BUCC-style labelled sample from a parallel TSV file (``src<TAB>tgt``).

    A ``gold_fraction`` of ``n`` drawn pairs keep both sides (gold pairs, rows ``0..n_gold-1``
    of both lists); the rest are split into source-only and target-only sentences, which have
    no translation on the other side.

    Returns:
        ``(src, tgt, n_gold)``.

    Raises:
        InputError: a missing, empty or undecodable file, or a line without a tab.
    """
    rows = [ln.split("\t") for ln in read_lines(pair_file)]
    bad = [i + 1 for i, r in enumerate(rows) if len(r) < 2]
    if bad:
        raise InputError(
            f"{pair_file} line {bad[0]}: expected two tab-separated columns (src, tgt)"
        )
    pick = np.random.default_rng(seed).permutation(len(rows))[:n]
    n_gold = int(round(len(pick) * gold_fraction))
    half = (len(pick) - n_gold) // 2
    src = [rows[i][0] for i in pick[:n_gold]] + [rows[i][0] for i in pick[n_gold : n_gold + half]]
    tgt = [rows[i][1] for i in pick[:n_gold]] + [rows[i][1] for i in pick[n_gold + half :]]
    return src, tgt, n_gold


def calibrate(
    pair_files: Sequence[str | os.PathLike],
    model: Any = None,
    device: str = "auto",
    precision: str = "auto",
    k: int = 4,
    n_per_file: int = 1000,
    gold_fraction: float = 0.8,
    seed: int = 0,
    progress: ProgressFactory | None = None,
    *,
    write: bool = False,
) -> Calibration:
    """Choose the model's default mining threshold on labelled samples (BUCC midpoint rule):
    the library function behind ``emmax calibrate``.

    Each file (one language pair) is mined on its own, as a real mining job would be, with
    the ratio margin and ``max`` retrieval; the candidates of all files are pooled and the
    best-F1 cut is placed midway between two candidate scores.

    Args:
        pair_files: parallel TSV files ``src<TAB>tgt`` (never evaluation data).
        model: a built-in name, a model directory, None (the default) or an Encoder.
        device, precision: where and how to embed.
        k: the margin's neighbourhood size.
        n_per_file: pairs drawn from each file.
        gold_fraction: share of drawn pairs kept as gold pairs.
        seed: seed of the draw.
        progress: a progress factory (see :func:`emmax_cli.bitext.mine_files`).
        write: store the threshold in the model directory's ``emmax.json``.

    Returns:
        A :class:`Calibration` (``written_to`` set when ``write``).

    Raises:
        InputError: a bad pair file, no gold pair among the candidates, or (with ``write``)
            a model that is not a writable emmax model directory.
    """
    progress = progress or no_progress
    samples = [(f, *calibration_sample(f, n_per_file, gold_fraction, seed)) for f in pair_files]
    target = _threshold_target(model) if write else None  # refuse before the slow part
    enc = load_encoder(model, device, precision)
    scores, correct, n_gold_all = [], [], 0
    total = sum(len(set(s)) + len(set(t)) for _, s, t, _ in samples)
    with progress("calibrate", total) as adv:
        for _, src, tgt, n_gold in samples:
            ks, _ = unify(src)
            kt, _ = unify(tgt)
            S = enc.encode([src[i] for i in ks], progress=adv)
            T = enc.encode([tgt[i] for i in kt], progress=adv)
            cand = mine(S, T, k=k, margin="ratio", retrieval="max", device=device)
            scores.append(cand.score)
            correct.append((ks[cand.src_idx] == kt[cand.tgt_idx]) & (ks[cand.src_idx] < n_gold))
            n_gold_all += int(np.isin(np.arange(n_gold), ks).sum())
    thr, p, r, f1 = calibrate_threshold(
        np.concatenate(scores), np.concatenate(correct), n_gold=n_gold_all
    )
    names = ", ".join(Path(f).parent.name + "/" + Path(f).name for f in pair_files)
    source = (
        f"emmax calibrate: BUCC midpoint rule, ratio margin k={k}, {n_gold_all} gold pairs "
        f"({gold_fraction:.0%} of sentences, each file mined separately) from {names}; "
        f"P={p:.3f} R={r:.3f} F1={f1:.3f}"
    )
    cal = Calibration(thr, p, r, f1, n_gold_all, int(sum(len(x) for x in scores)), source)
    if target is not None:
        cal.written_to = save_threshold(target, cal)
    return cal


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
    cfg.save(root / "emmax.json")
    return root / "emmax.json"
