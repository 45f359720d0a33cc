"""File-level mining: text files, embedding Parquet files or ``emmax index`` indexes in;
unique sentences, margin-mined pairs with their texts and line ids out. The array work is in
``mine.py``; this module resolves inputs, unifies duplicates and maps results back."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .console import Progress, null_progress
from .errors import InputError
from .io.parquet import read_embeddings
from .io.text import display_name, read_lines
from .mine import MinedPairs, calibrate_threshold, mine, threshold_counts, unify
from .models.loading import ModelConfig, resolve

log = logging.getLogger(__name__)


@dataclass
class Side:
    """One side of a mining job, after unification: row r is sentence ``texts[r]``, input
    line ``ids[r]``, embedding ``emb[r]``; ``index`` if it came from ``emmax index``."""

    name: str
    texts: list[str] | None
    ids: np.ndarray
    emb: np.ndarray
    model_checksum: str | None
    index: Any = None
    duplicates: int = 0


@dataclass
class MineResult:
    pairs: MinedPairs
    src: Side
    tgt: Side
    threshold: float | None
    threshold_source: str
    counts: dict[float, int]


def input_kind(path: str | os.PathLike) -> str:
    """``text``, ``parquet`` or ``index``, from the file's name and first bytes."""
    p = str(path)
    if p == "-":
        return "text"
    if p.endswith(".faiss") or Path(p + ".json").exists() and Path(p + ".ids.npy").exists():
        return "index"
    try:
        with open(p, "rb") as f:
            head = f.read(4)
    except FileNotFoundError:
        raise InputError(f"{p}: no such file", hint="check the path") from None
    except IsADirectoryError:
        raise InputError(
            f"{p}: is a directory", hint="pass a text, Parquet or index file"
        ) from None
    return "parquet" if head == b"PAR1" else "text"


def load_side(
    path: str | os.PathLike,
    get_encoder: Callable[[], Any],
    unify_dups: bool = True,
    progress: Progress | None = None,
    batch_tokens: int = 8192,
) -> Side:
    """Read one input and return its unique sentences with embeddings."""
    kind = input_kind(path)
    name = display_name(path)
    index = None
    if kind == "text":
        texts = read_lines(path)
        keep, _ = unify(texts) if unify_dups else (np.arange(len(texts)), None)
        utexts = [texts[i] for i in keep]
        enc = get_encoder()
        emb = enc.encode(utexts, batch_tokens=batch_tokens, progress=progress)
        return Side(
            name,
            utexts,
            keep.astype(np.int64),
            emb,
            enc.config.checksum,
            None,
            len(texts) - len(keep),
        )
    if kind == "parquet":
        ids, emb, texts, meta = read_embeddings(path, with_text=True)
        checksum = meta.get("model_checksum")
    else:
        from .index import load_index

        li = load_index(path)
        index, checksum = (
            li.index,
            li.meta.get("model", {}).get("model_checksum") or li.meta.get("model_checksum"),
        )
        parts = [read_embeddings(s["path"], with_text=True) for s in li.meta["sources"]]
        ids = np.concatenate([p[0] for p in parts])
        emb = np.concatenate([p[1] for p in parts])
        texts = None if any(p[2] is None for p in parts) else [t for p in parts for t in p[2]]
        unify_dups = False  # index rows must stay aligned with the embeddings
    if texts is not None and unify_dups:
        keep, _ = unify(texts)
        dups = len(texts) - len(keep)
        return Side(name, [texts[i] for i in keep], ids[keep], emb[keep], checksum, None, dups)
    return Side(name, texts, ids, emb, checksum, index, 0)


def default_threshold(model: str | None) -> tuple[float | None, str, ModelConfig]:
    cfg = resolve(model, verify=False).config
    src = cfg.mine_threshold_source or "model metadata"
    return cfg.mine_threshold, f"{cfg.name}: {src}", cfg


def mine_files(
    src: str | os.PathLike,
    tgt: str | os.PathLike,
    model: str | None = None,
    device: str = "auto",
    precision: str = "auto",
    k: int = 4,
    margin: str = "ratio",
    retrieval: str = "max",
    threshold: float | None = None,
    top: int | None = None,
    unify_dups: bool = True,
    block_size: int | None = None,
    batch_tokens: int = 8192,
    progress: Progress | None = None,
) -> MineResult:
    """Mine parallel sentences between two inputs (text, embedding Parquet, or index).

    ``threshold=None`` uses the model's calibrated default (``emmax calibrate``); pass
    ``float('-inf')`` for no threshold."""
    progress = progress or null_progress
    for p in (src, tgt):
        input_kind(p)  # cheap existence checks before any model loading
    thr, thr_source, cfg = default_threshold(model)
    if threshold is not None:
        thr, thr_source = threshold, "--threshold"
    encoder = None

    def get_encoder():
        nonlocal encoder
        if encoder is None:
            from .models.encoder import Encoder

            encoder = Encoder.load(model, device=device, precision=precision)
        return encoder

    s = load_side(src, get_encoder, unify_dups, progress, batch_tokens)
    t = load_side(tgt, get_encoder, unify_dups, progress, batch_tokens)
    if s.emb.shape[1] != t.emb.shape[1]:
        raise InputError(
            f"{s.name} has dimension {s.emb.shape[1]} but {t.name} has {t.emb.shape[1]}",
            hint="embed both sides with the same model",
        )
    if s.model_checksum and t.model_checksum and s.model_checksum != t.model_checksum:
        raise InputError(
            f"{s.name} and {t.name} were embedded with different models",
            hint="embed both sides with the same --model",
        )
    if threshold is None and s.model_checksum and s.model_checksum != cfg.checksum:
        log.warning(
            "the inputs were embedded with another model than %s; its default threshold "
            "%s may not fit (pass --threshold)",
            cfg.name,
            thr,
        )
    kw = {} if block_size is None else {"block_size": block_size}
    everything = mine(
        s.emb,
        t.emb,
        k=k,
        margin=margin,
        retrieval=retrieval,
        threshold=None,
        src_index=s.index,
        tgt_index=t.index,
        device=device,
        **kw,
    )
    counts = threshold_counts(everything.score)
    keep = np.ones(len(everything.score), bool) if thr is None else everything.score >= thr
    pairs = MinedPairs(everything.src_idx[keep], everything.tgt_idx[keep], everything.score[keep])
    if top is not None:
        pairs = MinedPairs(pairs.src_idx[:top], pairs.tgt_idx[:top], pairs.score[:top])
    return MineResult(pairs, s, t, thr, thr_source, counts)


def write_pairs_tsv(result: MineResult, out, with_ids: bool = False) -> int:
    """Write ``score<TAB>src<TAB>tgt`` (LASER candidate order) [+ ``src_id<TAB>tgt_id``]."""
    p, s, t = result.pairs, result.src, result.tgt
    if not with_ids and (s.texts is None or t.texts is None):
        raise InputError(
            "an input has no text column, so pairs cannot be printed as text",
            hint="pass --with-ids, or embed without --no-text",
        )

    def clean(x: str) -> str:
        return x.replace("\t", " ").replace("\r", " ")

    n = 0
    for i in range(0, len(p.score), 65_536):  # formatted in blocks, written as one string each
        sl = slice(i, i + 65_536)
        si, ti, sc = p.src_idx[sl], p.tgt_idx[sl], p.score[sl]
        cols = [[f"{x:.6f}" for x in sc]]
        if s.texts is not None and t.texts is not None:
            cols += [[clean(s.texts[j]) for j in si], [clean(t.texts[j]) for j in ti]]
        if with_ids:
            cols += [list(map(str, s.ids[si])), list(map(str, t.ids[ti]))]
        out.write("".join("\t".join(row) + "\n" for row in zip(*cols, strict=False)))
        n += len(sc)
    return n


@dataclass
class Calibration:
    threshold: float
    precision: float
    recall: float
    f1: float
    n_gold: int
    n_candidates: int
    source: str


def calibration_sample(
    pair_file: str | os.PathLike, n: int = 1000, gold_fraction: float = 0.8, seed: int = 0
) -> tuple[list[str], list[str], int]:
    """A BUCC-style labelled sample from a parallel TSV file (``src<TAB>tgt``): a
    ``gold_fraction`` of ``n`` drawn pairs keep both sides (gold pairs, rows ``0..n_gold-1`` of
    both lists); the rest are split into source-only and target-only sentences, which have no
    translation on the other side. Returns ``(src, tgt, n_gold)``."""
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
    pair_files: list[str | os.PathLike],
    model: str | None = None,
    device: str = "auto",
    precision: str = "auto",
    k: int = 4,
    n_per_file: int = 1000,
    gold_fraction: float = 0.8,
    seed: int = 0,
    progress: Progress | None = None,
) -> Calibration:
    """Choose the model's default mining threshold on labelled samples (BUCC midpoint rule).

    Each file (one language pair) is mined on its own, as a real mining job would be, with
    the ratio margin and ``max`` retrieval; the candidates of all files are pooled and the
    best-F1 cut is placed midway between two candidate scores."""
    from .models.encoder import Encoder

    enc = Encoder.load(model, device=device, precision=precision)
    scores, correct, n_gold_all = [], [], 0
    for f in pair_files:
        src, tgt, n_gold = calibration_sample(f, n_per_file, gold_fraction, seed)
        ks, _ = unify(src)
        kt, _ = unify(tgt)
        S = enc.encode([src[i] for i in ks], progress=progress)
        T = enc.encode([tgt[i] for i in kt], progress=progress)
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
    return Calibration(thr, p, r, f1, n_gold_all, int(sum(len(x) for x in scores)), source)


def save_threshold(model_dir: str | os.PathLike, cal: Calibration) -> Path:
    """Store a calibrated threshold in an emmax model directory's ``emmax.json``."""
    from .models.loading import cache_dir

    root = Path(model_dir)
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
    cfg = ModelConfig.from_json(root / "emmax.json")
    cfg.mine_threshold, cfg.mine_threshold_source = round(cal.threshold, 4), cal.source
    cfg.save(root / "emmax.json")
    return root / "emmax.json"
