"""Mined pairs as files (``emmax mine``): LASER's TSV ``score<TAB>src<TAB>tgt``
[``<TAB>src_id<TAB>tgt_id``], and JSON lines / Parquet with every score, the filters' verdict
and, after ``--rerank``, the cross scorer's. Blocks of ``PAIR_BLOCK`` pairs bound memory.
Results are duck-typed (a ``bitext.MineResult``), so this module imports no model code."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import IO, Any

import numpy as np

from ..errors import InputError
from ..filters import REASONS as REASON_NAMES

__all__ = ["write_pairs_tsv", "pair_columns", "write_pairs_jsonl", "write_pairs_parquet"]

PAIR_BLOCK = 65_536  # pairs formatted per string written: bounded memory, few write calls


def _clean(x: str) -> str:
    """A sentence as one TSV field: tabs and carriage returns become spaces."""
    return x.replace("\t", " ").replace("\r", " ")


def write_pairs_tsv(result: Any, out: IO[str], with_ids: bool = False) -> int:
    """Write mined pairs as ``score<TAB>src<TAB>tgt`` (LASER's candidate file order).

    Args:
        result: a ``MineResult`` (``pairs`` with ``src_idx``/``tgt_idx``/``score`` arrays,
            ``src``/``tgt`` sides with ``texts`` and ``ids``).
        out: a text stream.
        with_ids: append ``src_id<TAB>tgt_id`` (0-based input lines); the only columns
            besides the score when an input has no text.

    Returns:
        The number of pairs written.

    Raises:
        InputError: an input has no text and ``with_ids`` is false.
    """
    p, s, t = result.pairs, result.src, result.tgt
    has_text = s.texts is not None and t.texts is not None
    if not with_ids and not has_text:
        raise InputError(
            "an input has no text column, so pairs cannot be printed as text",
            hint="pass --with-ids, or embed without --no-text",
        )
    n = 0
    for i in range(0, len(p.score), PAIR_BLOCK):
        sl = slice(i, i + PAIR_BLOCK)
        si, ti, sc = p.src_idx[sl], p.tgt_idx[sl], p.score[sl]
        cols = [[f"{x:.6f}" for x in sc]]
        if has_text:
            cols += [[_clean(s.texts[j]) for j in si], [_clean(t.texts[j]) for j in ti]]
        if with_ids:
            cols += [list(map(str, s.ids[si])), list(map(str, t.ids[ti]))]
        out.write("".join("\t".join(row) + "\n" for row in zip(*cols, strict=True)))
        n += len(sc)
    return n


def pair_columns(result: Any, with_dropped: bool = False) -> Iterable[dict[str, Any]]:
    """Blocks of mined-pair columns for JSON lines and Parquet, best first: ``score`` (margin),
    ``cosine``, ``rank``, ``rank_prob`` and ``probs`` (with a GMM head), ``cross_rank`` and
    ``cross_prob`` (after ``--rerank``; None where the cross scorer did not read it), ``src_id``,
    ``tgt_id``, ``src_lang``, ``tgt_lang``, ``src``, ``tgt`` (when the inputs have text),
    ``keep`` and ``reason`` (the filter that dropped the pair, ``""`` if kept).

    Args:
        result: a ``MineResult`` with ``candidates``, ``judged`` and ``kept``.
        with_dropped: every candidate, not only the kept pairs.
    """
    c, j, s, t = result.candidates, result.judged, result.src, result.tgt
    rows = np.arange(len(c.score)) if with_dropped else result.kept
    names = np.array(["", *REASON_NAMES], dtype=object)
    for i in range(0, len(rows), PAIR_BLOCK):
        r = rows[i : i + PAIR_BLOCK]
        si, ti = c.src_idx[r], c.tgt_idx[r]
        cols: dict[str, Any] = {"score": c.score[r], "cosine": j.cosine[r]}
        if j.probs is not None:
            cols["rank"] = j.rank[r]
            cols["rank_prob"] = j.probs[r, j.rank[r]]
            cols["probs"] = j.probs[r]
        x = getattr(result, "cross", None)  # a rerank.CrossVerdict after --rerank
        if x is not None:
            read = x.rank[r] >= 0  # False: dropped before the rerank, or past --top
            cols["cross_rank"] = [
                int(v) if ok else None for v, ok in zip(x.rank[r], read, strict=True)
            ]
            cols["cross_prob"] = [
                float(v) if ok else None for v, ok in zip(x.prob[r], read, strict=True)
            ]
        cols["src_id"], cols["tgt_id"] = s.ids[si], t.ids[ti]
        cols["src_lang"] = [result.src_lang] * len(r)
        cols["tgt_lang"] = [result.tgt_lang] * len(r)
        if s.texts is not None and t.texts is not None:
            cols["src"] = [s.texts[k] for k in si]
            cols["tgt"] = [t.texts[k] for k in ti]
        cols["keep"] = j.reason[r] < 0
        cols["reason"] = names[j.reason[r] + 1].tolist()
        yield cols


def write_pairs_jsonl(result: Any, out: IO[str], with_dropped: bool = False) -> int:
    """Write mined pairs as JSON lines (the columns of :func:`pair_columns`)."""
    n = 0
    for cols in pair_columns(result, with_dropped):
        keys = list(cols)
        vals = [v.tolist() if isinstance(v, np.ndarray) else v for v in cols.values()]
        lines = [
            json.dumps(dict(zip(keys, row, strict=True)), ensure_ascii=False)
            for row in zip(*vals, strict=True)
        ]
        out.write("".join(x + "\n" for x in lines))
        n += len(lines)
    return n


def write_pairs_parquet(result: Any, path: str | os.PathLike, with_dropped: bool = False) -> int:
    """Write mined pairs as Parquet (the columns of :func:`pair_columns`; ``probs`` a
    fixed-size list of float32), one row group per block; readable by pandas, duckdb or
    polars without emmax."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    writer, n = None, 0
    types = {
        "score": pa.float32(),
        "cosine": pa.float32(),
        "rank": pa.int8(),
        "rank_prob": pa.float32(),
        "cross_rank": pa.int8(),
        "cross_prob": pa.float32(),
        "src_id": pa.int64(),
        "tgt_id": pa.int64(),
        "src_lang": pa.string(),
        "tgt_lang": pa.string(),
        "src": pa.string(),
        "tgt": pa.string(),
        "keep": pa.bool_(),
        "reason": pa.string(),
    }
    blocks = iter(pair_columns(result, with_dropped))
    first = next(blocks, None)
    if first is None:  # no pairs: an empty file with the full schema
        first = {k: [] for k in _empty_columns(result)}
    for cols in [first, *blocks]:
        arrays, fields = [], []
        for k, v in cols.items():
            if k == "probs":
                v = (
                    np.asarray(v, np.float32).reshape(len(v), -1)
                    if len(v)
                    else np.zeros((0, result.judged.probs.shape[1]), np.float32)
                )
                a = pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1)), v.shape[1])
            else:
                a = pa.array(v.tolist() if isinstance(v, np.ndarray) else v, type=types[k])
            arrays.append(a)
            fields.append(pa.field(k, a.type))
        table = pa.Table.from_arrays(arrays, schema=pa.schema(fields))
        if writer is None:
            writer = pq.ParquetWriter(str(path), table.schema, compression="zstd")
        writer.write_table(table)
        n += table.num_rows
    writer.close()
    return n


def _empty_columns(result: Any) -> list[str]:
    cols = ["score", "cosine"]
    if result.judged.probs is not None:
        cols += ["rank", "rank_prob", "probs"]
    if getattr(result, "cross", None) is not None:
        cols += ["cross_rank", "cross_prob"]
    cols += ["src_id", "tgt_id", "src_lang", "tgt_lang"]
    if result.src.texts is not None and result.tgt.texts is not None:
        cols += ["src", "tgt"]
    return cols + ["keep", "reason"]
