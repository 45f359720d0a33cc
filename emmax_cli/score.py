"""Score an aligned bitext line by line (``emmax score``) with the signals of mining (cosine,
ratio margin against each side's k nearest neighbours *within the file*, GMM rank, language ID,
token length ratio) and a keep/drop verdict per pair from the filters of ``filters.py``.

Bounded memory: pairs stream in chunks. With the margin, pass 1 embeds them into float32 .npy
memmaps in a temporary folder and gets the neighbour means by blocked exact k-NN over them;
pass 2 re-reads the text, slices the embeddings and writes the rows. Without the margin one
streaming pass does all. Only the sets of normalised text (duplicates) grow with the input."""

from __future__ import annotations

import functools
import itertools
import json
import logging
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

import numpy as np

from .console import ProgressFactory, no_progress
from .errors import InputError, ModelLoadError
from .filters import FILTER_REASONS, FilterConfig, apply_filters, duplicate_mask, length_ratio
from .io.atomic import atomic_output, check_output
from .knn import DEFAULT_BLOCK_SIZE, clamp_k, knn
from .mine import neighbour_mean
from .models.encoder import DEFAULT_BATCH_TOKENS, Encoder
from .pairscore import load_head, mine_settings, rank_below, rank_probs, token_counts
from .rank import DEFAULT_CHUNK_LINES, _rereadable, check_pairs, read_pair_chunks

__all__ = ["COLUMNS", "SCORE_REASONS", "ScoredChunk", "ScoreSummary", "score_files"]

log = logging.getLogger(__name__)

#: Reasons a pair is dropped, in the order they are attributed: an empty side, then the filters.
SCORE_REASONS = ("empty", *FILTER_REASONS)
#: Every output column, in order; those not computed are left out.
COLUMNS = tuple("cosine margin rank p_top src_lang_ok tgt_lang_ok length_ratio keep reason".split())


@dataclass
class ScoredChunk:
    """Scores and verdicts of n pairs: ``cols``, the computed ``COLUMNS`` in order (``reason``
    is "" for a kept pair); ``probs``, (n, N) rank probabilities (None without a head)."""

    ids: np.ndarray  # (n,) int64 0-based line numbers
    src: list[str]
    tgt: list[str]
    cols: dict[str, Any]
    probs: np.ndarray | None = None


@dataclass
class ScoreSummary:
    """What ``score_files`` did; ``dropped``: pairs per reason, ``min_rank`` None: no head."""

    pairs: int
    kept: int
    dropped: dict[str, int]
    columns: list[str]
    model: str
    min_rank: int | None = None
    output: Path | None = None
    settings: dict = field(default_factory=dict)


class _Judge:
    """Scores and verdicts chunk by chunk, with the state that spans chunks (duplicates)."""

    def __init__(self, encoder, head, cfg, threshold, min_rank, langs, lang_filter):
        self.encoder, self.head, self.threshold, self.min_rank = encoder, head, threshold, min_rank
        self.rank_prob = float(mine_settings(encoder.config).get("rank_prob", 0.5))
        self.langs, on = langs, langs if lang_filter else (None, None)
        self.cfg = replace(cfg, dedup=False, src_lang=on[0], tgt_lang=on[1])  # dedup: _dedup
        self.dedup, self.seen = cfg.dedup, (set(), set())
        self.counts = np.zeros(len(SCORE_REASONS), np.int64)
        self.table: dict[tuple[str, str], bool] = {}  # (lang, text) -> language ID, per chunk

    def __call__(self, ids, src, tgt, a, b, means=None) -> ScoredChunk:
        cos = np.einsum("ij,ij->i", a, b).astype(np.float32)
        margin = None
        if means is not None:
            den = (means[:, 0] + means[:, 1]) / np.float32(2)
            margin = np.divide(cos, den, out=np.zeros_like(cos), where=den != 0)
        probs = None if self.head is None else rank_probs(self.head, a, b)
        rank = None if probs is None else probs.argmax(1).astype(np.int64)
        lens = [token_counts(self.encoder.tokenizer, x) for x in (src, tgt)]
        self.table.clear()
        ok = [self._langid(x, g) for x, g in zip((src, tgt), self.langs, strict=True)]
        fr = apply_filters(
            self.cfg,
            src,
            tgt,
            cos if margin is None else margin,
            below_threshold=None if self.threshold is None else margin < self.threshold,
            below_rank=None
            if probs is None or not self.min_rank
            else rank_below(probs, self.min_rank, self.rank_prob),
            src_len=lens[0],
            tgt_len=lens[1],
            lang_check=lambda texts, g: np.array([self.table[g, t] for t in texts], bool),
        )
        reason = np.where(fr.reason >= 0, fr.reason + 1, -1)
        reason[[not s.strip() or not t.strip() for s, t in zip(src, tgt, strict=True)]] = 0
        if self.dedup:
            self._dedup(src, tgt, reason)
        self.counts += np.bincount(reason[reason >= 0], minlength=len(SCORE_REASONS))
        names = ["" if r < 0 else SCORE_REASONS[r] for r in reason.tolist()]
        p_top, ratio = None if probs is None else probs[:, -1], length_ratio(*lens)
        vals = (cos, margin, rank, p_top, *ok, ratio.astype(np.float32), reason < 0, names)
        cols = {c: v for c, v in zip(COLUMNS, vals, strict=True) if v is not None}
        self.columns = list(cols)  # the same for every chunk
        return ScoredChunk(ids, src, tgt, cols, probs)

    def _langid(self, texts: Sequence[str], lang: str | None) -> np.ndarray | None:
        """True where a text is in ``lang`` (or too short to tell); None without a language."""
        if not lang:
            return None
        from .langid import matches

        ok = np.asarray(matches(list(texts), lang), bool)  # too short to tell: True
        self.table.update(((lang, t), o) for t, o in zip(texts, ok.tolist(), strict=True))
        return ok

    def _dedup(self, src, tgt, reason) -> None:
        """``filters.duplicate_mask`` over the whole file: a kept pair whose normalised source
        or target occurred in an earlier kept pair is dropped (the first occurrence stays)."""
        live = np.flatnonzero(reason < 0)
        dup = duplicate_mask([src[i] for i in live], [tgt[i] for i in live], seen=self.seen)
        reason[live[dup]] = SCORE_REASONS.index("duplicate")


def _embed(encoder: Encoder, texts: Sequence[str], batch_tokens: int) -> np.ndarray:
    """(n, dim) float32 embeddings; an empty (or blank) text gets a zero vector."""
    out = np.zeros((len(texts), encoder.dim), np.float32)
    idx = [i for i, t in enumerate(texts) if t.strip()]
    out[idx] = encoder.encode([texts[i] for i in idx], batch_tokens=batch_tokens)
    return out


def _memmap(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """A float32 .npy memmap whose blocks are reserved first: a full disk fails here (OSError),
    not with a SIGBUS on a later write to a sparse page."""
    from numpy.lib.format import open_memmap

    try:
        m = open_memmap(path, "w+", np.float32, shape)
        if hasattr(os, "posix_fallocate"):  # Linux; glibc emulates it where a file system can't
            with open(path, "r+b") as f:
                os.posix_fallocate(f.fileno(), 0, os.path.getsize(path))
    except OSError as e:
        msg = f"cannot write the temporary embeddings in {path.parent}: {e.strerror}"
        raise InputError(msg, hint="free some space, or pass --tmp-dir") from None
    return m


def _spool(chunks, embed, n, dim, tmp, k, block_size, device, progress):
    """Pass 1: embed both sides into memmaps under ``tmp``; the (n, 2) neighbour means (each x
    among all y, each y among all x), by exact k-NN a query block at a time."""
    x, y = (_memmap(Path(tmp) / f"{s}.npy", (n, dim)) for s in "xy")
    means = _memmap(Path(tmp) / "means.npy", (n, 2))
    with progress("embed", n) as adv:
        for ids, s, t in chunks:
            x[ids[0] : ids[0] + len(ids)], y[ids[0] : ids[0] + len(ids)] = embed(s), embed(t)
            adv(len(ids))
    k = clamp_k(k, n, "file")
    with progress("margin", 2 * n) as adv:
        for col, (q, db) in enumerate(((x, y), (y, x))):
            for i in range(0, n, block_size):
                sims, idx = knn(q[i : i + block_size], db, k, block_size, device=device)
                means[i : i + len(sims), col] = neighbour_mean(sims, idx)
                adv(len(sims))
    return x, y, means


def score_files(
    src: str | os.PathLike,
    tgt: str | os.PathLike | None = None,
    output: str | os.PathLike | None = None,
    *,
    model: str | os.PathLike | Encoder | None = None,
    fmt: str = "tsv",
    keep_only: bool = False,
    src_lang: str | None = None,
    tgt_lang: str | None = None,
    margin: bool = True,
    k: int = 4,
    threshold: float | None = None,
    min_rank: int | None = None,
    filters: FilterConfig | None = None,
    lang_filter: bool = True,
    device: str = "auto",
    precision: str = "auto",
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    chunk_lines: int = DEFAULT_CHUNK_LINES,
    block_size: int = DEFAULT_BLOCK_SIZE,
    encoding: str = "utf-8",
    tmp_dir: str | os.PathLike | None = None,
    force: bool = False,
    progress: ProgressFactory | None = None,
    stream: IO[str] | None = None,
) -> ScoreSummary:
    """Score the pairs of two line-aligned files, or of one ``src<TAB>tgt`` file (``tgt=None``;
    ``-``: stdin), and write one row per pair in input order (``keep_only``: the kept pairs as
    ``src<TAB>tgt``): ``emmax score``, with its option names. Options and languages are checked
    first, then the input is read once unembedded: bad input fails before any model or output.

    Args:
        output: a file (written atomically), or None / ``-`` for ``stream`` (``sys.stdout``).
        model: name, directory, None (the default) or an Encoder; without a GMM head, no rank
            columns and no rank filter (a warning).
        fmt: ``tsv`` (a header, the ``COLUMNS`` computed), ``jsonl`` (``id``, those, ``probs``)
            or ``parquet`` (the same, the settings in its metadata).
        src_lang, tgt_lang: language ID of each side; dropped in another if ``lang_filter``.
        margin: the ratio margin with ``k`` neighbours per side (two passes).
        threshold, min_rank: drop pairs whose margin / rank is below (rank None: the top N-1).
        filters: the text filters (None: the defaults without repeats); languages ignored.
        chunk_lines, block_size, tmp_dir: pairs per chunk, k-NN rows per block, spool folder.

    Raises:
        InputError: bad options, languages or input; an existing output. ModelLoadError: no
        such model, a corrupt head, or ``min_rank`` without a head.
    """
    cfg = FilterConfig(max_repeats=None) if filters is None else filters
    to_file = output is not None and str(output) != "-"
    if fmt not in ("tsv", "jsonl", "parquet") or (keep_only and fmt != "tsv"):
        raise InputError(f"bad format {fmt!r}", hint="tsv, jsonl or parquet; --keep-only: tsv")
    if fmt == "parquet" and not to_file:
        raise InputError("--format parquet needs an output file", hint="pass -o OUTPUT.parquet")
    if not margin and (threshold is not None or cfg.margin_cap is not None):
        raise InputError("--threshold and --margin-cap need the margin", hint="drop --no-margin")
    if src_lang or tgt_lang:
        from .langid import normalize_lang

        src_lang, tgt_lang = (normalize_lang(g) if g else None for g in (src_lang, tgt_lang))
    if tgt is not None and str(src) == "-" and str(tgt) == "-":
        raise InputError("only one of the two inputs can be stdin (-)")
    if margin and tmp_dir is not None and not os.path.isdir(tmp_dir):
        raise InputError(f"{tmp_dir}: no such folder", hint="pass an existing --tmp-dir")
    if to_file:
        check_output(output, force=force)
    progress = progress or no_progress
    with _rereadable([src, tgt]) as (a, b):
        n = check_pairs(a, b, chunk_lines, encoding)
        enc = model if isinstance(model, Encoder) else Encoder.load(model, device, precision)
        name, head = enc.config.name, load_head(enc, dim=enc.dim)
        if head is None and min_rank:
            raise ModelLoadError(f"--min-rank needs a GMM head; model {name} has none")
        if head is None:
            log.warning("model %s has no GMM head: no rank columns, no rank filter", name)
        elif min_rank is None:
            min_rank = head.num_ranks - 1
        elif min_rank >= head.num_ranks:
            raise InputError(f"--min-rank {min_rank}: the ranks go from 0 to {head.num_ranks - 1}")
        judge = _Judge(enc, head, cfg, threshold, min_rank, (src_lang, tgt_lang), lang_filter)
        settings = dict(model=name, k=k if margin else None, threshold=threshold, min_rank=min_rank)
        settings.update(
            filters=vars(judge.cfg) | {"dedup": cfg.dedup}, ranks=head and head.rank_names
        )

        chunks = functools.partial(read_pair_chunks, a, b, chunk_lines, encoding)
        emb = functools.partial(_embed, enc, batch_tokens=batch_tokens)
        spool = tempfile.TemporaryDirectory(prefix="emmax-score-", dir=tmp_dir) if margin else None
        with spool or nullcontext() as tmp:
            mm = margin and _spool(chunks(), emb, n, enc.dim, tmp, k, block_size, device, progress)

            def results() -> Iterator[ScoredChunk]:
                with progress("score", n) as adv:
                    for ids, s, t in chunks():
                        sl = slice(int(ids[0]), int(ids[0]) + len(ids))
                        e = [np.asarray(v[sl]) for v in mm] if mm else [emb(s), emb(t)]
                        yield judge(ids, s, t, *e)
                        adv(len(ids))

            _write(results(), output if to_file else None, fmt, keep_only, settings, stream)
    dropped = dict(zip(SCORE_REASONS, judge.counts.tolist(), strict=True))
    kept, out = n - sum(dropped.values()), Path(output) if to_file else None
    min_rank = min_rank if head is not None else None
    return ScoreSummary(n, kept, dropped, judge.columns, name, min_rank, out, settings)


# ---- output ---------------------------------------------------------------------------------
def _values(v: Any, fmt: str) -> Any:
    """A column as TSV text (4 decimals, 1/0) or JSON values (6 decimals, reason null if kept)."""
    if isinstance(v, list):  # reason
        return v if fmt == "tsv" else [r or None for r in v]
    if fmt != "tsv":
        return np.round(v.astype(float), 6).tolist() if v.dtype.kind == "f" else v.tolist()
    return np.char.mod("%.4f", v) if v.dtype.kind == "f" else v.astype(np.int64).astype(str)


def format_chunk(chunk: ScoredChunk, fmt: str = "tsv", keep_only: bool = False) -> str:
    """TSV (4 decimals, booleans 1/0), JSON lines (``id``, the columns, ``reason`` null when
    kept, ``probs``) or ``keep_only`` kept pairs ``src<TAB>tgt`` (tabs, CRs become spaces)."""
    if keep_only:
        cl = str.maketrans("\t\r", "  ")
        kept = zip(chunk.src, chunk.tgt, chunk.cols["keep"], strict=True)
        return "".join(f"{s.translate(cl)}\t{t.translate(cl)}\n" for s, t, k in kept if k)
    if fmt == "tsv":
        rows = zip(*(_values(v, fmt) for v in chunk.cols.values()), strict=True)
        return "".join("\t".join(row) + "\n" for row in rows)
    cols = {"id": chunk.ids.tolist()} | {c: _values(v, fmt) for c, v in chunk.cols.items()}
    if chunk.probs is not None:
        cols["probs"] = _values(chunk.probs, fmt)
    rows = zip(*cols.values(), strict=True)
    return "".join(json.dumps(dict(zip(cols, row, strict=True))) + "\n" for row in rows)


def _arrow_table(chunk: ScoredChunk, settings: dict):
    """``id``, the columns (``reason`` null when kept), ``probs``; metadata ``emmax``: settings."""
    import pyarrow as pa

    arrays = {"id": chunk.ids} | chunk.cols | {"reason": _values(chunk.cols["reason"], "")}
    if chunk.probs is not None:
        flat = pa.array(chunk.probs.reshape(-1), pa.float32())
        arrays.update(rank=chunk.cols["rank"].astype(np.int8))
        arrays.update(probs=pa.FixedSizeListArray.from_arrays(flat, chunk.probs.shape[1]))
    meta = {"emmax": json.dumps(settings, sort_keys=True, default=str)}
    return pa.Table.from_pydict(arrays, metadata=meta)


def _write(results, output, fmt, keep_only, settings, stream) -> None:
    """To ``output`` atomically (no file at all on an error) or to ``stream``; a TSV header."""
    with nullcontext() if output is None else atomic_output(output) as tmp:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            tables = (_arrow_table(chunk, settings) for chunk in results)
            first = next(tables)  # the input has at least one pair
            with pq.ParquetWriter(str(tmp), first.schema, compression="zstd") as w:
                for table in itertools.chain([first], tables):
                    w.write_table(table)
            return
        with open(tmp, "w", encoding="utf-8") if tmp else nullcontext(stream or sys.stdout) as out:
            for i, chunk in enumerate(results):
                if i == 0 and fmt == "tsv" and not keep_only:
                    out.write("\t".join(chunk.cols) + "\n")
                out.write(format_chunk(chunk, fmt, keep_only))
