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
from .atomic import is_stream_target

META_KEY = b"emmax"
FORMAT_VERSION = 1
REEMBED_HINT = "re-run emmax embed"


def _unreadable(path: str | os.PathLike, e: BaseException) -> InputError:
    """The one-line error for a damaged or foreign Parquet file."""
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return InputError(f"{path}: not a readable embedding Parquet file ({msg})", hint=REEMBED_HINT)


def _read_errors() -> tuple[type[BaseException], ...]:
    """What pyarrow raises for damaged data (OSError "Unexpected end of stream", a failed
    page checksum or decompression, ArrowInvalid), plus a reshape of a wrong-length column."""
    import pyarrow as pa

    return (OSError, ValueError, EOFError, pa.ArrowException)


class _StreamSink:
    """A write-only file object for a pipe or character device: Parquet writers ask for the
    position (``tell``), which ``lseek`` cannot give on a pipe, so it is counted here."""

    def __init__(self, path: str | os.PathLike):
        self._f = open(path, "wb", buffering=0)  # closed by close()
        self._pos = 0
        self.closed = False

    def write(self, data) -> int:
        n = len(memoryview(data).cast("B"))
        self._f.write(data)
        self._pos += n
        return n

    def tell(self) -> int:
        return self._pos

    def flush(self) -> None:
        self._f.flush()

    def writable(self) -> bool:
        return True

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._f.close()


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
        self._sink = _StreamSink(path) if is_stream_target(path) else None
        # page checksums let readers tell flipped bytes from data (verified on read)
        self._writer = pq.ParquetWriter(
            self._sink if self._sink is not None else str(path),
            self.schema,
            compression="zstd",
            write_page_checksum=True,
        )
        self.rows = 0

    def write(
        self, ids: np.ndarray, embeddings: np.ndarray, texts: list[str] | None = None
    ) -> None:
        """Append one chunk as a row group.

        Args:
            ids: (n,) int64 input line numbers.
            embeddings: (n, dim) float array, stored as the writer's dtype.
            texts: n sentences (stored when the writer has a ``text`` column).
        """
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
        """Append a table of another EmbeddingWriter of the same layout, as one row group."""
        t = table.replace_schema_metadata(self.schema.metadata).cast(self.schema)
        self._writer.write_table(t, row_group_size=max(t.num_rows, 1))
        self.rows += t.num_rows
        return t.num_rows

    def close(self) -> None:
        """Write the footer and close the file."""
        self._writer.close()
        if self._sink is not None:
            self._sink.close()

    def abort(self) -> None:
        """Close without a valid footer: a pipe reader sees a broken file, not a short one."""
        if self._sink is not None:
            self._sink.close()  # the footer write below then fails
        try:
            self._writer.close()
        except Exception:  # the original error is the one to report
            pass

    def __enter__(self) -> EmbeddingWriter:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


@dataclass
class EmbeddingFile:
    """An opened embedding Parquet file: metadata now, data on demand."""

    path: Path
    meta: dict[str, Any]
    num_rows: int
    has_text: bool

    @property
    def dim(self) -> int:
        """Embedding width from the metadata."""
        return int(self.meta["dim"])


def _parquet_file(path: Path):
    import pyarrow.parquet as pq

    return pq.ParquetFile(str(path), page_checksum_verification=True)


def open_embeddings(path: str | os.PathLike) -> EmbeddingFile:
    """Open and validate an embedding Parquet file (metadata only; data is read later).

    Raises:
        InputError: no such file, not a Parquet file, damaged, or without emmax metadata.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file", hint="check the path")
    if p.is_dir():
        raise InputError(f"{p}: is a folder, not an embedding file", hint="pass a .parquet file")
    try:
        pf = _parquet_file(p)
        md = pf.schema_arrow.metadata or {}
        names = pf.schema_arrow.names
        num_rows = pf.metadata.num_rows
    except _read_errors() as e:  # pyarrow raises several types for a non-Parquet file
        raise _unreadable(p, e) from None
    if META_KEY not in md or "embedding" not in names:
        raise InputError(
            f"{p}: Parquet file without emmax embedding metadata",
            hint="pass a file written by `emmax embed`",
        )
    try:
        meta = json.loads(md[META_KEY])
        int(meta["dim"])
    except (ValueError, KeyError, TypeError) as e:
        raise _unreadable(p, e) from None
    return EmbeddingFile(p, meta, num_rows, "text" in names)


def iter_embeddings(
    path: str | os.PathLike,
    batch_rows: int = 65_536,
    columns: tuple[str, ...] = ("id", "embedding"),
) -> Iterator[dict[str, Any]]:
    """Yield batches as dicts: ``id`` int64 array, ``embedding`` float32 (n, d), ``text`` list.

    Raises:
        InputError: as :func:`open_embeddings`, also for damage found while reading (page
            checksum, truncated or undecodable data), naming the file.
    """
    ef = open_embeddings(path)
    errors = _read_errors()
    try:
        pf = _parquet_file(ef.path)
        cols = [c for c in columns if c in pf.schema_arrow.names]
        batches = pf.iter_batches(batch_size=batch_rows, columns=cols)
    except errors as e:
        raise _unreadable(ef.path, e) from None
    while True:
        try:
            rb = next(batches, None)
            if rb is None:
                return
            out = _batch_arrays(rb, cols, ef.dim)
        except errors as e:
            raise _unreadable(ef.path, e) from None
        yield out


def _batch_arrays(rb, cols: list[str], dim: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in cols:
        col = rb.column(name)
        if name == "embedding":
            flat = col.values.to_numpy(zero_copy_only=False)
            out[name] = flat.reshape(len(rb), dim).astype(np.float32, copy=False)
        elif name == "id":
            out[name] = col.to_numpy()
        else:
            out[name] = col.to_pylist()
    return out


def read_embeddings(
    path: str | os.PathLike, with_text: bool = False, expect_dim: int | None = None
) -> tuple[np.ndarray, np.ndarray, list[str] | None, dict[str, Any]]:
    """Read a whole embedding file: ``(ids, embeddings float32 (n, d), texts or None, meta)``.

    Raises:
        InputError: as :func:`iter_embeddings`, or a dimension other than ``expect_dim``.
    """
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
