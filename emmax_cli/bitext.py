"""File-level mining: the library function behind ``emmax mine``.

Text files, embedding Parquet files or ``emmax index`` indexes in; unique sentences,
margin-mined pairs with their texts and line ids out. The array work is in ``mine.py``; this
module resolves inputs, unifies duplicates, maps results back and writes them through
``io.tables``. Every input is read and checked before the model is loaded."""

from __future__ import annotations

import logging
import math
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from .console import ProgressFactory, no_progress
from .errors import InputError
from .io.atomic import atomic_output, check_output
from .io.pairs import write_pairs_jsonl, write_pairs_parquet, write_pairs_tsv
from .io.parquet import read_embeddings
from .io.text import display_name, read_lines
from .mine import MinedPairs, mine, threshold_counts, unify
from .models.loading import ModelConfig, resolve
from .pairscore import Judged, check_langs, is_encoder, judge_candidates
from .shards import is_shard_dir, read_shard_dir

__all__ = [
    "Side",
    "MineResult",
    "is_encoder",
    "load_encoder",
    "input_kind",
    "load_side",
    "default_threshold",
    "mine_files",
    "write_pairs_tsv",
]

log = logging.getLogger(__name__)
FORMATS = ("tsv", "jsonl", "parquet")


@dataclass
class Side:
    """One side of a mining job, after unification: row r is sentence ``texts[r]``, input
    line ``ids[r]``, embedding ``emb[r]`` ((n, dim) float32, L2-normalised; None until a text
    side is embedded); ``index`` if it came from ``emmax index``."""

    name: str
    texts: list[str] | None
    ids: np.ndarray
    emb: np.ndarray | None
    model_checksum: str | None
    index: Any = None
    duplicates: int = 0
    repeats: np.ndarray | None = None  # (n,) occurrences of each row's text in the input


@dataclass
class MineResult:
    """What ``mine_files`` found: the kept pairs (rows of the unified sides), both sides, the
    threshold applied and where it came from, and pair counts at common thresholds."""

    pairs: MinedPairs
    src: Side
    tgt: Side
    threshold: float | None
    threshold_source: str
    counts: dict[float, int]
    output: Path | None = None
    candidates: MinedPairs | None = None  # every mined pair, best first, before any filter
    judged: Judged | None = None  # scores and verdicts of the candidates
    kept: np.ndarray | None = None  # candidate rows of ``pairs``
    src_lang: str | None = None
    tgt_lang: str | None = None
    cross: Any = None  # the rerank's ``rerank.CrossVerdict`` (``rerank=True``)

    @property
    def dropped(self) -> dict[str, int]:
        """Candidates dropped per reason (threshold, rank, margin_cap, copy, ..., cross_rank)."""
        return {} if self.judged is None else self.judged.counts


def load_encoder(model: Any, device: str = "auto", precision: str = "auto") -> Any:
    """``model`` itself if it is already an Encoder, else ``Encoder.load(model, ...)``.

    Raises:
        ModelLoadError: the model cannot be loaded.
    """
    if is_encoder(model):
        return model
    from .models.encoder import Encoder

    return Encoder.load(model, device=device, precision=precision)


def input_kind(path: str | os.PathLike) -> str:
    """``text``, ``parquet``, ``index`` or ``shards`` (a folder from ``embed --ray``), from
    the file's name and first bytes.

    Pipes and devices (``-``, ``<(zcat x.gz)``) are text and are not opened here: reading
    their first bytes would consume them.

    Raises:
        InputError: no such file, or a folder.
    """
    p = str(path)
    if p == "-":
        return "text"
    if p.endswith(".faiss") or Path(p + ".json").exists() and Path(p + ".ids.npy").exists():
        return "index"
    try:
        mode = os.stat(p).st_mode
    except FileNotFoundError:
        raise InputError(f"{p}: no such file", hint="check the path") from None
    if stat.S_ISDIR(mode):
        if is_shard_dir(p):
            return "shards"
        raise InputError(
            f"{p}: is a folder without a shard manifest",
            hint="pass a text, Parquet or index file, or a folder from `emmax embed --ray`",
        )
    if not stat.S_ISREG(mode):
        return "text"
    with open(p, "rb") as f:
        head = f.read(4)
    return "parquet" if head == b"PAR1" else "text"


def load_side(path: str | os.PathLike, unify_dups: bool = True) -> Side:
    """Read one input: the unique sentences of a text file (not embedded yet: ``emb`` is
    None), or the rows of an embedding Parquet file or an index with their embeddings.

    Raises:
        InputError: a missing, empty, undecodable or unreadable input.
    """
    kind = input_kind(path)
    name = display_name(path)
    if kind == "text":
        log.debug("reading %s", name)
        texts = read_lines(path)
        keep, reps = _unify(texts, unify_dups)
        dups = len(texts) - len(keep)
        kept = [texts[i] for i in keep]
        return Side(name, kept, keep.astype(np.int64), None, None, None, dups, repeats=reps)
    index = None
    if kind in ("parquet", "shards"):
        read = read_embeddings if kind == "parquet" else read_shard_dir
        ids, emb, texts, meta = read(path, with_text=True)
        checksum = meta.get("model_checksum")
    else:
        from .index import load_index

        li = load_index(path)
        index = li.index
        checksum = li.meta.get("model", {}).get("model_checksum") or li.meta.get("model_checksum")
        if li.meta.get("shard_dir"):
            ids, emb, texts, _ = read_shard_dir(li.meta["shard_dir"], with_text=True)
        else:
            parts = [read_embeddings(s["path"], with_text=True) for s in li.meta["sources"]]
            ids = np.concatenate([p[0] for p in parts])
            emb = np.concatenate([p[1] for p in parts])
            texts = None if any(p[2] is None for p in parts) else [t for p in parts for t in p[2]]
        unify_dups = False  # index rows must stay aligned with the embeddings
    if texts is not None and unify_dups:
        keep, reps = _unify(texts, True)
        dups = len(texts) - len(keep)
        kept = [texts[i] for i in keep]
        return Side(name, kept, ids[keep], emb[keep], checksum, None, dups, repeats=reps)
    reps = None if texts is None else _unify(texts, False)[1]
    return Side(name, texts, ids, emb, checksum, index, 0, reps)


def _unify(texts: list[str], unify_dups: bool) -> tuple[np.ndarray, np.ndarray]:
    """Rows kept (first occurrences, or all) and how often each kept row's text occurs."""
    keep, inverse = unify(texts)
    counts = np.bincount(inverse, minlength=len(keep)).astype(np.int64)
    if unify_dups:
        return keep, counts
    return np.arange(len(texts), dtype=np.int64), counts[inverse]


def default_threshold(model: Any) -> tuple[float | None, str, ModelConfig]:
    """The model's calibrated mining threshold, a description of its source, and its config.

    Args:
        model: a built-in name, a model directory, None (the default model) or an Encoder.
    """
    cfg = model.config if is_encoder(model) else resolve(model, verify=False).config
    src = cfg.mine_threshold_source or "model metadata"
    return cfg.mine_threshold, f"{cfg.name}: {src}", cfg


def _check_threshold(threshold: float | None) -> None:
    if threshold is not None and (math.isnan(threshold) or threshold == math.inf):
        raise InputError(
            f"threshold must be a finite number, got {threshold}",
            hint="pass e.g. --threshold 1.06, or --no-threshold",
        )


def mine_files(
    src: str | os.PathLike,
    tgt: str | os.PathLike,
    model: Any = None,
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
    progress: ProgressFactory | None = None,
    *,
    output: str | os.PathLike | None = None,
    with_ids: bool = False,
    force: bool = False,
    stream: IO[str] | None = None,
    src_lang: str | None = None,
    tgt_lang: str | None = None,
    min_rank: int | None | str = "auto",
    filters: Any = "auto",
    fmt: str = "tsv",
    with_dropped: bool = False,
    ray_address: str | None = None,
    work_dir: str | os.PathLike | None = None,
    query_rows: int | None = None,
    rerank: bool = False,
    rerank_min_prob: float = 0.5,
) -> MineResult:
    """Mine parallel sentences between two inputs (text, embedding Parquet, or index): the
    library function behind ``emmax mine``, with its option names.

    Both inputs are read and checked (and ``output`` too) before the model is loaded; the
    model is loaded only if a side is text.

    Args:
        src, tgt: text files (``-``: stdin), embedding Parquet files or index files.
        model: a built-in name, a model directory, None (the default model) or an Encoder;
            it embeds text inputs and its metadata gives the default threshold.
        device, precision: for embedding text inputs and for the k-NN search.
        k, margin, retrieval: as :func:`emmax_cli.mine.mine`.
        threshold: keep pairs scoring at least this; None: the model's calibrated default;
            ``float('-inf')``: keep every pair.
        top: keep only the ``top`` best pairs.
        unify_dups: unify exact duplicate sentences before the k-NN search (``--no-unify``).
        block_size, batch_tokens: memory bounds of the k-NN blocks and encoder batches.
        progress: a factory ``progress(description, total)`` of context managers yielding
            ``advance(n)`` (see ``console.progress_bar``); default: none.
        output: also write ``score<TAB>src<TAB>tgt`` there (a file, written atomically, or
            ``-`` for ``stream``).
        with_ids: add ``src_id<TAB>tgt_id`` columns to the output.
        force: replace an existing ``output`` file.
        stream: the text stream for ``output='-'`` (default: ``sys.stdout``).
        src_lang, tgt_lang: the sides' languages (ISO 639-1/3 or FLORES codes); with the
            filters on, each side's language is identified and pairs in another are dropped.
        min_rank: keep pairs whose GMM rank is at least this; ``"auto"``: the model's top
            rank where it has a head; None: no rank filter.
        filters: a ``FilterConfig``; ``"auto"``: the defaults (``default_filters``), the
            model's calibrated margin cap included; a dict: the defaults with these fields
            changed; None: none (margin only, as LASER).
        fmt: ``tsv`` (LASER's ``score<TAB>src<TAB>tgt``), ``jsonl`` or ``parquet`` (every
            score, ids, languages, the verdict and its reason).
        with_dropped: also write the dropped candidates (jsonl/parquet), with their reason.
        ray_address: run the k-NN searches as Ray tasks over query shards of ``query_rows``
            rows (``mine_shards.mine_ray``; ``"local"``: a local instance), resumable through
            ``work_dir`` (default ``mine_shards.default_work_dir(output)``). Same pairs.
        rerank, rerank_min_prob: after the filters, read each kept pair with the model's cross
            scorer and keep it only if its probability of the top rank is at least
            ``rerank_min_prob`` (``rerank.rerank_candidates``; before ``top``); jsonl/parquet
            get ``cross_rank`` and ``cross_prob``, dropped pairs the reason ``cross_rank``.

    Returns:
        A :class:`MineResult`.

    Raises:
        InputError: a missing, empty or undecodable input, inputs of different dimensions or
            models, a non-finite threshold, or an output that exists (without ``force``) or
            whose folder does not exist.
        ModelLoadError: the model cannot be loaded, or has no cross scorer (``rerank``).
    """
    _check_threshold(threshold)
    progress = progress or no_progress
    src_lang, tgt_lang = check_langs(src_lang, tgt_lang, filters)
    if fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r}", hint="use one of " + ", ".join(FORMATS))
    if fmt == "parquet" and (output is None or str(output) == "-"):
        raise InputError("parquet output needs a file", hint="pass -o PAIRS.parquet")
    if output is not None and str(output) != "-":
        check_output(output, force=force)
    for p in (src, tgt):
        input_kind(p)  # existence first, before reading anything
    s, t = load_side(src, unify_dups), load_side(tgt, unify_dups)
    if output is not None and not with_ids and (s.texts is None or t.texts is None):
        raise InputError(
            "an input has no text column, so pairs cannot be printed as text",
            hint="pass --with-ids, or embed without --no-text",
        )
    thr, thr_source, cfg = default_threshold(model)
    if rerank:
        from . import rerank as rr

        if s.texts is None or t.texts is None:
            raise InputError("--rerank needs the texts of both sides", hint="embed with text")
        plugin = rr.load_plugin(model)  # before any embedding: a model without one fails first
    if threshold is not None:
        thr, thr_source = threshold, "--threshold" if threshold > -math.inf else "--no-threshold"
    enc = model if is_encoder(model) else None
    if s.emb is None or t.emb is None:
        enc = load_encoder(model, device, precision)
        for side in (s, t):
            if side.emb is None:
                with progress(f"embed {side.name}", len(side.texts)) as adv:
                    side.emb = enc.encode(side.texts, batch_tokens=batch_tokens, progress=adv)
                side.model_checksum = enc.config.checksum
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
    with progress("mine", len(s.ids) + len(t.ids)) as adv:
        if ray_address is not None:
            from .mine_shards import DEFAULT_QUERY_ROWS, default_work_dir, mine_ray

            everything = mine_ray(
                s.emb,
                t.emb,
                k,
                margin,
                retrieval,
                src_index=os.path.realpath(src) if s.index is not None else None,
                tgt_index=os.path.realpath(tgt) if t.index is not None else None,
                work_dir=work_dir or default_work_dir(output),
                ray_address=ray_address,
                query_rows=query_rows or DEFAULT_QUERY_ROWS,
                progress=adv,
                **kw,
            )
        else:
            everything = mine(
                s.emb,
                t.emb,
                k=k,
                margin=margin,
                retrieval=retrieval,
                threshold=None,
                progress=adv,
                src_index=s.index,
                tgt_index=t.index,
                device=device,
                **kw,
            )
    counts = threshold_counts(everything.score)
    judged = judge_candidates(
        everything,
        s,
        t,
        enc if enc is not None else model,
        cfg,
        thr,
        min_rank,
        filters,
        src_lang,
        tgt_lang,
    )
    kept, verdict = np.flatnonzero(judged.keep), None
    if rerank:
        scorer = rr.scorer_for(plugin, model, enc, device, precision)
        kw = {"top": top, "batch_tokens": batch_tokens, "progress": progress}
        kept, verdict = rr.rerank_candidates(
            scorer, everything, s.texts, t.texts, judged, rerank_min_prob, **kw
        )
    elif top is not None:
        kept = kept[:top]
    pairs = MinedPairs(everything.src_idx[kept], everything.tgt_idx[kept], everything.score[kept])
    res = MineResult(pairs, s, t, thr, thr_source, counts, None, everything, judged, kept)
    res.src_lang, res.tgt_lang, res.cross = src_lang, tgt_lang, verdict
    if output is not None:
        res.output = _write_pairs(res, output, with_ids, stream, fmt, with_dropped)
    return res


def _write_pairs(
    res: MineResult, output, with_ids: bool, stream: IO[str] | None, fmt: str, with_dropped: bool
) -> Path | None:
    if fmt == "parquet":
        with atomic_output(output) as tmp:
            write_pairs_parquet(res, tmp, with_dropped=with_dropped)
        return Path(output)

    def write(f):
        if fmt == "jsonl":
            write_pairs_jsonl(res, f, with_dropped=with_dropped)
        else:
            write_pairs_tsv(res, f, with_ids=with_ids)

    if str(output) == "-":
        write(stream or sys.stdout)
        return None
    with atomic_output(output) as tmp, open(tmp, "w", encoding="utf-8") as f:
        write(f)
    return Path(output)
