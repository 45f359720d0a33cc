"""Semantic rank of sentence pairs with a GMM head: for each pair, the rank (0 = unrelated ...
N-1 = translation), the probability of every rank, and the cosine.

Pairs stream in chunks, from two line-aligned files read in lockstep or from one
``src<TAB>tgt`` file; every chunk is embedded, scored and handed on, so memory is bounded by
the chunk size. Output formats are in ``io.tables``. The GMM warm-up on parallel data
(``fit_gmm_interpolation``) lives in ``models.gmm``; ``fit_head_on_parallel`` is its
text-level wrapper."""

from __future__ import annotations

import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path
from typing import IO

import numpy as np

from .console import Progress, ProgressFactory, no_progress, null_progress
from .errors import InputError, ModelLoadError
from .io.atomic import atomic_output, check_output
from .io.tables import RankParquetWriter, format_jsonl, format_tsv, tsv_header, write_text
from .io.text import ReadStats, count_lines, display_name, read_chunks
from .models.encoder import DEFAULT_BATCH_TOKENS, Encoder
from .models.gmm import WEIGHTS_FILE, GMMHead, fit_gmm_interpolation
from .pairscore import RankedChunk

__all__ = [
    "RankedChunk",
    "RankSummary",
    "rank",
    "check_pairs",
    "load_head_for",
    "load_ranker",
    "read_pair_chunks",
    "score_pairs",
    "rank_pairs",
    "rank_files",
    "fit_head_on_parallel",
    "fit_gmm_interpolation",
    "RankParquetWriter",
    "format_tsv",
    "format_jsonl",
    "tsv_header",
    "write_text",
]

DEFAULT_CHUNK_LINES = 16_384
FORMATS = ("tsv", "jsonl", "parquet")
NO_HEAD_HINT = "train one with `emmax train` or pass --model with a trained emmax model"


def load_head_for(encoder: Encoder) -> GMMHead:
    """The GMM head stored in the encoder's model directory, checked against its dimension.

    Raises:
        ModelLoadError: the model has no head, or its head is corrupt or of another dimension.
    """
    root = encoder.root
    if root is None or not (Path(root) / WEIGHTS_FILE).exists():
        raise ModelLoadError(f"model {encoder.config.name} has no GMM head", hint=NO_HEAD_HINT)
    return GMMHead.from_dir(root, dim=encoder.dim)


def load_ranker(
    model: str | os.PathLike | Encoder | None = None,
    device: str = "auto",
    precision: str = "auto",
) -> tuple[Encoder, GMMHead]:
    """Resolve ``model`` and load its GMM head, then its encoder (the head is checked first:
    a model without one fails before the encoder weights are read). A loaded ``Encoder`` is
    used as it is, with the head of its model directory.

    Raises:
        ModelLoadError: no such model, no GMM head, or a corrupt or mismatched head.
    """
    from .models.loading import resolve

    if isinstance(model, Encoder):
        return model, load_head_for(model)
    rm = resolve(model)
    if not (rm.root / WEIGHTS_FILE).exists():
        raise ModelLoadError(f"model {rm.config.name} has no GMM head", hint=NO_HEAD_HINT)
    head = GMMHead.from_dir(rm.root, dim=rm.config.dim or None)
    encoder = Encoder.from_resolved(rm, device=device, precision=precision)
    if head.dim != encoder.dim:
        raise ModelLoadError(
            f"{rm.root}: GMM head has dim {head.dim} but the encoder has dim {encoder.dim}",
            hint="use the head trained with this encoder",
        )
    return encoder, head


def read_pair_chunks(
    src: str | os.PathLike,
    tgt: str | os.PathLike | None = None,
    chunk_lines: int = DEFAULT_CHUNK_LINES,
    encoding: str = "utf-8",
) -> Iterator[tuple[np.ndarray, list[str], list[str]]]:
    """Chunks ``(ids, src_texts, tgt_texts)`` of line pairs, read lazily.

    With ``tgt``, ``src`` and ``tgt`` are line-aligned files (``-`` for stdin, ``.gz`` read
    transparently) read in lockstep; otherwise ``src`` holds ``src<TAB>tgt`` lines. Missing
    files and plain files of different lengths fail here, before anything is read.

    Raises:
        InputError: a missing or empty file, two files of different lengths (both counts
            named), or a TSV line without exactly two columns (line number named).
    """
    for p in (src, tgt):
        if p is not None and str(p) != "-" and not os.path.exists(p):
            raise InputError(f"{p}: no such file", hint="check the path")
        if p is not None and os.path.isdir(p):
            raise InputError(f"{p}: is a directory", hint="pass a text file")
    if tgt is None:
        return _read_tsv_chunks(src, chunk_lines, encoding)
    if str(src) == "-" and str(tgt) == "-":
        raise InputError("only one of the two inputs can be stdin (-)")
    if _is_regular(src) and _is_regular(tgt):  # a cheap check first; pipes are read once
        na, nb = count_lines(src), count_lines(tgt)
        if na is not None and nb is not None and na != nb:
            raise _length_error(src, na, tgt, nb)
    return _read_aligned_chunks(src, tgt, chunk_lines, encoding)


def _read_aligned_chunks(src, tgt, chunk_lines: int, encoding: str):
    sa, sb = ReadStats(), ReadStats()
    ga = read_chunks(src, chunk_lines=chunk_lines, encoding=encoding, stats=sa)
    gb = read_chunks(tgt, chunk_lines=chunk_lines, encoding=encoding, stats=sb)
    for ca, cb in zip_longest(ga, gb):
        if ca is None or cb is None or len(ca[0]) != len(cb[0]):
            for _ in ga:  # read both to the end to name the true counts
                pass
            for _ in gb:
                pass
            raise _length_error(src, sa.lines, tgt, sb.lines)
        yield ca[0], ca[1], cb[1]


def _length_error(a, na: int, b, nb: int) -> InputError:
    return InputError(
        f"{display_name(a)} has {na} lines but {display_name(b)} has {nb}",
        hint="the two files must be line-aligned, one pair per line",
    )


def _read_tsv_chunks(path, chunk_lines: int, encoding: str):
    for ids, lines in read_chunks(path, chunk_lines=chunk_lines, encoding=encoding):
        cols = [ln.split("\t") for ln in lines]
        bad = next((i for i, c in enumerate(cols) if len(c) != 2), None)
        if bad is not None:
            raise InputError(
                f"{display_name(path)} line {ids[bad] + 1}: expected two "
                f"tab-separated columns (src, tgt), found {len(cols[bad])}",
                hint="pass a TSV of pairs, or two line-aligned files",
            )
        yield ids, [c[0] for c in cols], [c[1] for c in cols]


def score_pairs(
    encoder: Encoder,
    head: GMMHead,
    src: Sequence[str],
    tgt: Sequence[str],
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    symmetric: bool = True,
    ids: np.ndarray | None = None,
) -> RankedChunk:
    """Rank aligned sentence pairs ``(src[i], tgt[i])`` (one in-memory chunk).

    Probabilities average the log-posteriors of both orders when ``symmetric`` (§3.2)."""
    import torch

    if len(src) != len(tgt):
        raise InputError(f"{len(src)} source sentences but {len(tgt)} target sentences")
    a = torch.from_numpy(encoder.encode(src, batch_tokens=batch_tokens))
    b = torch.from_numpy(encoder.encode(tgt, batch_tokens=batch_tokens))
    with torch.no_grad():
        probs = head.rank_probs_pairs(a, b, symmetric=symmetric)
        cos = torch.nn.functional.cosine_similarity(a, b, dim=1)
    return RankedChunk(
        ids=np.arange(len(src), dtype=np.int64) if ids is None else np.asarray(ids),
        rank=probs.argmax(1).numpy().astype(np.int64),
        probs=probs.numpy().astype(np.float32),
        cosine=cos.numpy().astype(np.float32),
    )


def rank_pairs(
    encoder: Encoder,
    head: GMMHead,
    chunks: Iterable[tuple[np.ndarray, Sequence[str], Sequence[str]]],
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    symmetric: bool = True,
    progress: Progress | None = None,
) -> Iterator[RankedChunk]:
    """Score a stream of ``(ids, src_texts, tgt_texts)`` chunks (e.g. ``read_pair_chunks``),
    yielding one ``RankedChunk`` per chunk, in input order; ``progress(n)`` per chunk."""
    progress = progress or null_progress
    for ids, src, tgt in chunks:
        yield score_pairs(
            encoder, head, src, tgt, batch_tokens=batch_tokens, symmetric=symmetric, ids=ids
        )
        progress(len(ids))


@dataclass
class RankSummary:
    """What ``rank_files`` wrote: the number of pairs, the model and its number of ranks, and
    the output file (None for a stream)."""

    pairs: int
    model: str
    num_ranks: int
    output: Path | None = None


def check_pairs(
    src: str | os.PathLike,
    tgt: str | os.PathLike | None = None,
    chunk_lines: int = DEFAULT_CHUNK_LINES,
    encoding: str = "utf-8",
) -> int:
    """Read the pairs once, without embedding, and return their number: every line decodes,
    every ``PAIRS.tsv`` line has two columns, two files have the same number of lines. The
    cheap pre-pass of ``rank_files``, so a bad line fails before the model loads and before
    any output.

    Raises:
        InputError: as :func:`read_pair_chunks`.
    """
    return sum(len(ids) for ids, _, _ in read_pair_chunks(src, tgt, chunk_lines, encoding))


def _is_regular(path: str | os.PathLike) -> bool:
    """A regular file (not ``-``, a pipe such as ``<(zcat x.gz)``, or a device)."""
    try:
        return str(path) != "-" and stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


@contextmanager
def _rereadable(paths: Sequence[str | os.PathLike | None]) -> Iterator[list]:
    """Copy stdin and pipes among ``paths`` to temporary files, so they can be read twice (the
    pre-pass, then the run). Errors name the original input; the copies are removed on any
    exit, Ctrl-C included."""
    tmps: dict[str, str] = {}  # temporary path -> display name of the original
    out = []
    try:
        for p in paths:
            if p is None or _is_regular(p) or str(p) != "-" and not os.path.exists(p):
                out.append(p)  # a missing file is reported by the reader
                continue
            if os.path.isdir(p):
                out.append(p)
                continue
            fd, tmp = tempfile.mkstemp(prefix="emmax-input-", suffix=".txt")
            tmps[tmp] = display_name(p)
            raw = nullcontext(sys.stdin.buffer) if str(p) == "-" else open(p, "rb")
            with os.fdopen(fd, "wb") as f, raw as g:  # copied as is: gzip stays gzip
                shutil.copyfileobj(g, f, 1 << 20)
            out.append(tmp)
        yield out
    except InputError as e:
        message = e.message
        for tmp, name in tmps.items():
            message = message.replace(tmp, name)
        raise InputError(message, e.hint) from None
    finally:
        for tmp in tmps:
            os.unlink(tmp)


def rank_files(
    src: str | os.PathLike,
    tgt: str | os.PathLike | None = None,
    output: str | os.PathLike | None = None,
    *,
    model: str | os.PathLike | Encoder | None = None,
    fmt: str = "tsv",
    header: bool = False,
    device: str = "auto",
    precision: str = "auto",
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    chunk_lines: int = DEFAULT_CHUNK_LINES,
    encoding: str = "utf-8",
    symmetric: bool = True,
    force: bool = False,
    progress: ProgressFactory | None = None,
    stream: IO[str] | None = None,
    cross: bool = False,
) -> RankSummary:
    """Rank the pairs of two line-aligned files, or of one ``src<TAB>tgt`` file
    (``tgt=None``), and write one row per pair in input order: the library function behind
    ``emmax rank``, with its option names.

    The input is read once without embedding first (:func:`check_pairs`): a bad line, a
    missing tab or unequal line counts fail before the model loads and before any output.
    Stdin (``-``) and pipes are copied to temporary files for that (removed afterwards).

    Args:
        src, tgt: two line-aligned text files, or one ``PAIRS.tsv`` and None; ``-``: stdin.
        output: a file (written atomically), or None / ``-`` for ``stream``.
        model: a model with a GMM head (built-in name, directory, None for the default, or
            an Encoder whose directory holds the head).
        fmt: ``tsv`` (``rank<TAB>p0..p{N-1}<TAB>cosine``), ``jsonl`` or ``parquet`` (a file).
        header: start TSV output with a header line.
        device, precision: encoder device and precision (the GMM always runs in fp32).
        batch_tokens, chunk_lines: memory bounds (encoder batch, pairs per chunk).
        encoding: input text encoding.
        symmetric: average both orders of each pair.
        force: replace an existing output file.
        progress: a factory ``progress(description, total)`` (see ``console.progress_bar``).
        stream: the text stream for stdout output (default: ``sys.stdout``).
        cross: rank with the model's cross scorer, each pair read jointly
            (``cross_rank.CrossRanker``; slower; same columns, ``batch_tokens`` then counts
            both sides of a pair) instead of its GMM head.

    Returns:
        A :class:`RankSummary`.

    Raises:
        InputError: bad options, a bad or mismatched input, or an output that exists
            (without ``force``) or whose folder does not exist.
        ModelLoadError: no such model, or no usable GMM head (cross scorer with ``cross``).
    """
    if fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r}", hint=f"use {', '.join(FORMATS)}")
    to_file = output is not None and str(output) != "-"
    if fmt == "parquet" and not to_file:
        raise InputError("--format parquet needs an output file", hint="pass -o OUTPUT.parquet")
    if header and fmt != "tsv":
        raise InputError("--header applies to --format tsv only")
    if tgt is not None and str(src) == "-" and str(tgt) == "-":
        raise InputError("only one of the two inputs can be stdin (-)")
    if to_file:
        check_output(output, force=force)
    progress = progress or no_progress
    with _rereadable([src, tgt]) as (a, b):
        total = check_pairs(a, b, chunk_lines, encoding)
        if cross:
            from .cross_rank import CrossRanker

            head = CrossRanker.load(model, device=device, precision=precision)
            encoder = head.encoder
        else:
            encoder, head = load_ranker(model, device=device, precision=precision)
        chunks = read_pair_chunks(a, b, chunk_lines=chunk_lines, encoding=encoding)
        with progress("rank", total) as adv:
            if cross:
                results = head.rank_pairs(chunks, batch_tokens, progress=adv)
            else:
                results = rank_pairs(
                    encoder, head, chunks, batch_tokens, symmetric=symmetric, progress=adv
                )
            n = _write_ranks(
                results, output if to_file else None, fmt, header, encoder, head, stream
            )
    return RankSummary(n, encoder.config.name, head.num_ranks, Path(output) if to_file else None)


def _write_ranks(results, output, fmt, header, encoder, head, stream) -> int:
    """Write ranked chunks to ``output`` (atomically) or to ``stream``; returns the pairs."""
    n_head = head.num_ranks if header else None
    if output is None:
        return write_text(results, stream or sys.stdout, fmt, header_ranks=n_head)
    if fmt == "parquet":
        meta = {
            "model": encoder.config.name,
            "model_checksum": encoder.config.checksum,
            "rank_names": head.rank_names,
            "ranker": "gmm" if isinstance(head, GMMHead) else "cross",
        }
        n = 0
        with atomic_output(output) as tmp, RankParquetWriter(tmp, head.num_ranks, meta) as w:
            for chunk in results:
                w.write(chunk)
                n += len(chunk)
        return n
    with atomic_output(output) as tmp, open(tmp, "w", encoding="utf-8") as f:
        return write_text(results, f, fmt, header_ranks=n_head)


def rank(
    src: Sequence[str],
    tgt: Sequence[str],
    model: str | os.PathLike | Encoder | None = None,
    *,
    head: GMMHead | None = None,
    device: str = "auto",
    precision: str = "auto",
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    symmetric: bool = True,
) -> RankedChunk:
    """Semantic rank of in-memory sentence pairs ``(src[i], tgt[i])``.

    Args:
        src, tgt: aligned sentences.
        model: a model with a GMM head (name, directory, None for the default) or an Encoder.
        head: a GMM head to use instead of the model's own.
        device, precision: when ``model`` is loaded here.
        batch_tokens: padded tokens per encoder batch.
        symmetric: average both orders of each pair.

    Returns:
        A :class:`RankedChunk` (``rank``, ``probs`` (n, N) float32, ``cosine``).

    Raises:
        InputError: lists of different lengths.
        ModelLoadError: no such model, or no usable GMM head.
    """
    if head is None:
        encoder, head = load_ranker(model, device=device, precision=precision)
    elif isinstance(model, Encoder):
        encoder = model
    else:
        encoder = Encoder.load(model, device=device, precision=precision)
    return score_pairs(encoder, head, src, tgt, batch_tokens=batch_tokens, symmetric=symmetric)


def fit_head_on_parallel(
    encoder: Encoder,
    pairs: Sequence[tuple[str, str]],
    num_ranks: int = 4,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    **fit_kw,
) -> GMMHead:
    """Embed translation ``pairs`` (src, tgt) and warm up a GMM head on them by interpolation
    (``models.gmm.fit_gmm_interpolation``; ``fit_kw`` go there). The encoder is not trained."""
    if len(pairs) < 4:
        raise InputError(f"the GMM warm-up needs at least 4 translation pairs, got {len(pairs)}")
    q = encoder.encode([p[0] for p in pairs], batch_tokens=batch_tokens)
    t = encoder.encode([p[1] for p in pairs], batch_tokens=batch_tokens)
    return fit_gmm_interpolation(q, t, num_ranks=num_ranks, **fit_kw)
