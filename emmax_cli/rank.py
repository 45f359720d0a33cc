"""Semantic rank of sentence pairs with a GMM head: for each pair, the rank (0 = unrelated ...
N-1 = translation), the probability of every rank, and the cosine.

Pairs stream in chunks, from two line-aligned files read in lockstep or from one
``src<TAB>tgt`` file; every chunk is embedded, scored and handed on, so memory is bounded by
the chunk size. The GMM warm-up on parallel data (``fit_gmm_interpolation``) lives in
``models.gmm``; ``fit_head_on_parallel`` is its text-level wrapper."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path
from typing import IO

import numpy as np

from .console import Progress, null_progress
from .errors import InputError, ModelLoadError
from .io.text import ReadStats, count_lines, display_name, read_chunks
from .models.encoder import DEFAULT_BATCH_TOKENS, Encoder
from .models.gmm import WEIGHTS_FILE, GMMHead, fit_gmm_interpolation

__all__ = [
    "RankedChunk",
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
NO_HEAD_HINT = "train one with `emmax train` or pass --model with a trained emmax model"


@dataclass
class RankedChunk:
    """Scores of one chunk of pairs (arrays of equal length n)."""

    ids: np.ndarray  # (n,) int64, 0-based input line numbers
    rank: np.ndarray  # (n,) int64, argmax of probs
    probs: np.ndarray  # (n, N) float32, rows sum to 1
    cosine: np.ndarray  # (n,) float32

    def __len__(self) -> int:
        return len(self.ids)


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
    model: str | os.PathLike | None = None, device: str = "auto", precision: str = "auto"
) -> tuple[Encoder, GMMHead]:
    """Resolve ``model`` and load its GMM head, then its encoder (the head is checked first:
    a model without one fails before the encoder weights are read).

    Raises:
        ModelLoadError: no such model, no GMM head, or a corrupt or mismatched head.
    """
    from .models.loading import resolve

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
        if p is not None and str(p) != "-" and not Path(p).is_file():
            raise InputError(f"{p}: no such file", hint="check the path")
    if tgt is None:
        return _read_tsv_chunks(src, chunk_lines, encoding)
    if str(src) == "-" and str(tgt) == "-":
        raise InputError("only one of the two inputs can be stdin (-)")
    na, nb = count_lines(src), count_lines(tgt)  # cheap check first, for plain files
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


def rank_files(
    src: str | os.PathLike,
    tgt: str | os.PathLike | None,
    encoder: Encoder,
    head: GMMHead | None = None,
    chunk_lines: int = DEFAULT_CHUNK_LINES,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    symmetric: bool = True,
    progress: Progress | None = None,
) -> Iterator[RankedChunk]:
    """Rank the pairs of two line-aligned files, or of one ``src<TAB>tgt`` file
    (``tgt=None``), with the encoder's GMM head unless ``head`` is given."""
    chunks = read_pair_chunks(src, tgt, chunk_lines=chunk_lines)
    head = head or load_head_for(encoder)
    return rank_pairs(
        encoder, head, chunks, batch_tokens=batch_tokens, symmetric=symmetric, progress=progress
    )


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


# ---- output formats ---------------------------------------------------------------------------
def tsv_header(num_ranks: int) -> str:
    return "\t".join(["rank", *(f"p{c}" for c in range(num_ranks)), "cosine"]) + "\n"


def format_tsv(chunk: RankedChunk) -> str:
    """``rank<TAB>p0 ... p{N-1}<TAB>cosine`` lines, probabilities and cosine to 4 decimals."""
    cols = (
        [chunk.rank.astype(str)]
        + [np.char.mod("%.4f", p) for p in chunk.probs.T]
        + [np.char.mod("%.4f", chunk.cosine)]
    )
    return "".join("\t".join(row) + "\n" for row in zip(*cols, strict=False))


def format_jsonl(chunk: RankedChunk) -> str:
    """One JSON object per pair: ``{"rank": r, "probs": [...], "cosine": c}``."""
    probs = np.round(chunk.probs.astype(np.float64), 6).tolist()
    cos = np.round(chunk.cosine.astype(np.float64), 6).tolist()
    return "".join(
        json.dumps({"rank": r, "probs": p, "cosine": c}) + "\n"
        for r, p, c in zip(chunk.rank.tolist(), probs, cos, strict=False)
    )


class RankParquetWriter:
    """Parquet output: ``id`` int64, ``rank`` int8, ``probs`` fixed_size_list<float32>[N],
    ``cosine`` float32; one row group per chunk; schema metadata names the model and ranks."""

    def __init__(self, path: str | os.PathLike, num_ranks: int, meta: dict | None = None):
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.num_ranks = num_ranks
        self.schema = pa.schema(
            [
                pa.field("id", pa.int64(), nullable=False),
                pa.field("rank", pa.int8(), nullable=False),
                pa.field("probs", pa.list_(pa.float32(), num_ranks), nullable=False),
                pa.field("cosine", pa.float32(), nullable=False),
            ],
            metadata={
                b"emmax": json.dumps(
                    {"num_ranks": num_ranks, **(meta or {})}, sort_keys=True
                ).encode()
            },
        )
        self._writer = pq.ParquetWriter(str(path), self.schema, compression="zstd")

    def write(self, chunk: RankedChunk) -> None:
        import pyarrow as pa

        probs = pa.FixedSizeListArray.from_arrays(
            pa.array(chunk.probs.reshape(-1), pa.float32()), self.num_ranks
        )
        self._writer.write_table(
            pa.Table.from_arrays(
                [
                    pa.array(chunk.ids, pa.int64()),
                    pa.array(chunk.rank.astype(np.int8)),
                    probs,
                    pa.array(chunk.cosine, pa.float32()),
                ],
                schema=self.schema,
            )
        )

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> RankParquetWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_text(
    chunks: Iterable[RankedChunk], out: IO[str], fmt: str = "tsv", header_ranks: int | None = None
) -> int:
    """Write ranked chunks to a text stream as TSV or JSON lines; returns the pairs written.
    ``header_ranks``: write a TSV header line for that many ranks first."""
    n = 0
    if header_ranks and fmt == "tsv":
        out.write(tsv_header(header_ranks))
    for chunk in chunks:
        out.write(format_tsv(chunk) if fmt == "tsv" else format_jsonl(chunk))
        n += len(chunk)
    return n
