"""Embedding Parquet files: ``id`` (int64), optional ``text`` and ``lang``, and ``embedding``
as ``fixed_size_list<float32|float16>[d]``; one row group per chunk; schema metadata names the
model, its checksum, the dimension and the normalisation."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError

META_KEY = b"emmax"
FORMAT_VERSION = 1


def _schema(dim: int, dtype: str, with_text: bool, with_lang: bool, meta: dict[str, Any]):
    import pyarrow as pa

    vt = pa.float16() if dtype == "float16" else pa.float32()
    fields = [pa.field("id", pa.int64(), nullable=False)]
    if with_text:
        fields.append(pa.field("text", pa.string()))
    if with_lang:
        fields.append(pa.field("lang", pa.string()))
    fields.append(pa.field("embedding", pa.list_(vt, dim), nullable=False))
    full = {"format_version": FORMAT_VERSION, "dim": dim, "dtype": dtype, **meta}
    return pa.schema(fields, metadata={META_KEY: json.dumps(full, sort_keys=True).encode()})


class EmbeddingWriter:
    """Write embedding chunks as Parquet row groups, in the order they are given."""

    def __init__(
        self,
        path: str | os.PathLike,
        dim: int,
        meta: dict[str, Any] | None = None,
        dtype: str = "float32",
        with_text: bool = True,
        lang: str | None = None,
    ):
        import pyarrow.parquet as pq

        if dtype not in ("float32", "float16"):
            raise InputError(f"unknown embedding dtype {dtype!r}", hint="use float32 or float16")
        self.dim, self.dtype, self.with_text, self.lang = dim, dtype, with_text, lang
        self.schema = _schema(dim, dtype, with_text, lang is not None, dict(meta or {}))
        self._writer = pq.ParquetWriter(str(path), self.schema, compression="zstd")
        self.rows = 0

    def write(
        self, ids: np.ndarray, embeddings: np.ndarray, texts: list[str] | None = None
    ) -> None:
        import pyarrow as pa

        n = len(ids)
        emb = np.ascontiguousarray(
            embeddings, dtype=np.float16 if self.dtype == "float16" else np.float32
        )
        if emb.shape != (n, self.dim):
            raise InputError(f"embedding chunk has shape {emb.shape}, expected ({n}, {self.dim})")
        values = pa.array(emb.reshape(-1))
        cols = [pa.array(np.asarray(ids, dtype=np.int64))]
        if self.with_text:
            cols.append(pa.array(texts if texts is not None else [None] * n, type=pa.string()))
        if self.lang is not None:
            cols.append(
                pa.DictionaryArray.from_arrays(np.zeros(n, np.int32), [self.lang]).cast(pa.string())
            )
        cols.append(pa.FixedSizeListArray.from_arrays(values, self.dim))
        self._writer.write_table(
            pa.Table.from_arrays(cols, schema=self.schema), row_group_size=max(n, 1)
        )
        self.rows += n

    def write_table(self, table) -> int:
        """Append a table written by another EmbeddingWriter of the same layout, as one row group."""
        t = table.replace_schema_metadata(self.schema.metadata).cast(self.schema)
        self._writer.write_table(t, row_group_size=max(t.num_rows, 1))
        self.rows += t.num_rows
        return t.num_rows

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> EmbeddingWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class EmbeddingFile:
    """An opened embedding Parquet file: metadata now, data on demand."""

    path: Path
    meta: dict[str, Any]
    num_rows: int
    has_text: bool

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])


def open_embeddings(path: str | os.PathLike) -> EmbeddingFile:
    """Open and validate an embedding Parquet file (one-line error if it is not one)."""
    import pyarrow.parquet as pq

    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file", hint="check the path")
    try:
        pf = pq.ParquetFile(str(p))
    except Exception as e:  # pyarrow raises several types for a non-Parquet file
        raise InputError(
            f"{p}: not a Parquet file ({str(e).splitlines()[0]})",
            hint="pass a file written by `emmax embed`",
        ) from None
    md = pf.schema_arrow.metadata or {}
    if META_KEY not in md or "embedding" not in pf.schema_arrow.names:
        raise InputError(
            f"{p}: Parquet file without emmax embedding metadata",
            hint="pass a file written by `emmax embed`",
        )
    meta = json.loads(md[META_KEY])
    return EmbeddingFile(p, meta, pf.metadata.num_rows, "text" in pf.schema_arrow.names)


def iter_embeddings(
    path: str | os.PathLike,
    batch_rows: int = 65_536,
    columns: tuple[str, ...] = ("id", "embedding"),
) -> Iterator[dict[str, Any]]:
    """Yield batches as dicts: ``id`` int64 array, ``embedding`` float32 (n, d), ``text`` list."""
    import pyarrow.parquet as pq

    ef = open_embeddings(path)
    pf = pq.ParquetFile(str(ef.path))
    cols = [c for c in columns if c in pf.schema_arrow.names]
    for rb in pf.iter_batches(batch_size=batch_rows, columns=cols):
        out: dict[str, Any] = {}
        for name in cols:
            col = rb.column(name)
            if name == "embedding":
                flat = col.values.to_numpy(zero_copy_only=False)
                out[name] = flat.reshape(len(rb), ef.dim).astype(np.float32, copy=False)
            elif name == "id":
                out[name] = col.to_numpy()
            else:
                out[name] = col.to_pylist()
        yield out


def read_embeddings(
    path: str | os.PathLike, with_text: bool = False, expect_dim: int | None = None
) -> tuple[np.ndarray, np.ndarray, list[str] | None, dict[str, Any]]:
    """Read a whole embedding file: ``(ids, embeddings float32 (n, d), texts or None, meta)``."""
    ef = open_embeddings(path)
    if expect_dim is not None and ef.dim != expect_dim:
        raise InputError(
            f"{ef.path}: embeddings have dimension {ef.dim}, expected {expect_dim}",
            hint="embed both sides with the same model",
        )
    cols = ("id", "embedding", "text") if with_text and ef.has_text else ("id", "embedding")
    ids, embs, texts = [], [], [] if "text" in cols else None
    for b in iter_embeddings(path, columns=cols):
        ids.append(b["id"])
        embs.append(b["embedding"])
        if texts is not None:
            texts.extend(b["text"])
    X = np.concatenate(embs) if embs else np.zeros((0, ef.dim), np.float32)
    return (np.concatenate(ids) if ids else np.zeros(0, np.int64)), X, texts, ef.meta
