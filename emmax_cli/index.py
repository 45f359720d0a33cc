"""FAISS indexes over embedding Parquet files: choose, build, extend, load (docs/mining.md §2).

An index ``X.faiss`` always comes with two sidecars, ``X.faiss.ids.npy`` and ``X.faiss.json``,
all written atomically, with checksums verified at load (see :mod:`emmax_cli.index_meta`).
Built from a shard folder (``emmax embed --ray``), an IVF index also has its inverted lists
on disk in ``X.faiss.ivfdata`` (see :mod:`emmax_cli.index_shards`).

Vectors are L2-normalised and searched by inner product (= cosine).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .device import faiss_gpu_device
from .errors import IndexError_, InputError
from .index_meta import (
    DEFAULT_CHUNK_ROWS,
    DEFAULT_NPROBE,
    FLAT_MAX_ROWS,
    FORMAT_VERSION,
    MAX_TRAIN_ROWS,
    REBUILD_HINT,
    check_norms,
    check_sources,
    choose_factory,
    ivf_nlist,
    model_key,
    model_meta,
    new_index,
    normalised,
    read_faiss,
    read_ids,
    read_meta,
    sidecar_paths,
    to_cpu,
    to_device,
    train_index,
    write_index_files,
)
from .io.atomic import check_output
from .io.parquet import EmbeddingFile, iter_embeddings, open_embeddings

log = logging.getLogger(__name__)

Progress = Callable[[int], None]

__all__ = [
    "DEFAULT_CHUNK_ROWS",
    "DEFAULT_NPROBE",
    "FLAT_MAX_ROWS",
    "FORMAT_VERSION",
    "MAX_TRAIN_ROWS",
    "LoadedIndex",
    "add_to_index",
    "build_index",
    "choose_factory",
    "load_index",
    "sidecar_paths",
]


@dataclass
class LoadedIndex:
    """A FAISS index with its sidecar metadata and row ids."""

    index: Any  # faiss.Index, on CPU
    meta: dict[str, Any]
    ids: np.ndarray  # (ntotal,) int64 `id` column of each row
    path: Path

    @property
    def dim(self) -> int:
        """Vector width."""
        return int(self.meta["dim"])

    @property
    def ntotal(self) -> int:
        """Number of indexed vectors."""
        return int(self.index.ntotal)

    @property
    def factory(self) -> str:
        """The FAISS factory string it was built with."""
        return str(self.meta["factory"])

    def source_of(self, rows: np.ndarray) -> np.ndarray:
        """Source-file number (into ``meta["sources"]``) of each index row, int64."""
        ends = np.cumsum([s["rows"] for s in self.meta["sources"]])
        return np.searchsorted(ends, np.asarray(rows), side="right").astype(np.int64)


def _scan_sources(
    sources: Sequence[str | os.PathLike], expect: tuple[int, dict[str, Any], str] | None = None
) -> list[EmbeddingFile]:
    """Open every source and check that dims and models agree (before any heavy work).

    ``expect`` is ``(dim, model metadata, description)`` of an existing index; by default
    the first file is the reference."""
    if not sources:
        raise InputError("no embedding files given", hint="pass one or more .parquet files")
    for s in sources:
        if Path(s).is_dir():
            raise InputError(
                f"{s}: is a folder",
                hint="a shard folder from `emmax embed --ray` is indexed on its own, as a new "
                "index: emmax index FOLDER -o X.faiss",
            )
    files = [open_embeddings(s) for s in sources]
    dim, ref_meta, ref = expect or (files[0].dim, files[0].meta, str(files[0].path))
    key, model = model_key(ref_meta)
    for f in files:
        if f.dim != dim:
            raise InputError(
                f"{f.path}: embeddings have dimension {f.dim}, but {ref} has {dim}",
                hint="index embeddings of one model only",
            )
        if f.meta.get(key) != model:
            raise InputError(
                f"{f.path}: embeddings come from another model ({key} "
                f"{f.meta.get(key)!r}, but {ref} has {model!r})",
                hint="index embeddings of one model only",
            )
    return files


def _populate(
    work: Any, files: list[EmbeddingFile], chunk_rows: int, progress: Progress | None
) -> np.ndarray:
    """Add all rows chunk by chunk; return their ids."""
    ids = []
    for f in files:
        for batch in iter_embeddings(f.path, batch_rows=chunk_rows):
            work.add(normalised(batch["embedding"]))
            ids.append(np.asarray(batch["id"], np.int64))
            if progress is not None:
                progress(len(batch["id"]))
    return np.concatenate(ids) if ids else np.zeros(0, np.int64)


def build_index(
    sources: Sequence[str | os.PathLike],
    out_path: str | os.PathLike,
    factory: str = "auto",
    *,
    train_sample: int | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    nprobe: int = DEFAULT_NPROBE,
    device: str = "auto",
    seed: int = 0,
    progress: Progress | None = None,
    force: bool = False,
    workers: int | None = None,
    ray_address: str | None = None,
) -> dict[str, Any]:
    """Build a FAISS inner-product index over embedding Parquet files, or over one shard
    folder (:func:`emmax_cli.index_shards.build_sharded_index`).

    Args:
        sources: embedding Parquet files (same dim and model: checksum, else id, else
            name from their metadata), added in this order; or a single shard folder.
        out_path: index file to write (``X.faiss``; sidecars next to it).
        factory: FAISS factory string, or ``auto`` (:func:`choose_factory`).
        train_sample: rows to train on for IVF/PQ types (memory: rows * dim * 4 bytes);
            default min(n, 40M, 256 * max(nlist, 256)).
        chunk_rows: rows read and added per step (see ``DEFAULT_CHUNK_ROWS``).
        nprobe: IVF lists visited at search time, stored in the metadata.
        device: ``auto|cpu|cuda|cuda:N``; GPU needs a faiss GPU build. The written index is
            always a CPU index.
        seed: seed of the training sample.
        progress: called with the number of rows added after each chunk.
        force: replace an existing index.
        workers, ray_address: a shard folder's parallel adds (see ``build_sharded_index``).

    Returns:
        The metadata written to ``X.faiss.json``.

    Raises:
        InputError: existing output, unreadable or mismatched sources, bad factory string,
            too few rows to train.
    """
    if len(sources) == 1 and Path(sources[0]).is_dir():
        from .index_shards import build_sharded_index

        return build_sharded_index(
            sources[0],
            out_path,
            factory,
            train_sample=train_sample,
            chunk_rows=chunk_rows,
            nprobe=nprobe,
            device=device,
            seed=seed,
            workers=workers,
            ray_address=ray_address,
            progress=progress,
            force=force,
        )
    out = check_output(out_path, force)
    files = _scan_sources(sources)
    n, dim = sum(f.num_rows for f in files), files[0].dim
    if n == 0:
        raise InputError("no embeddings to index: all inputs are empty")
    factory = choose_factory(n, dim) if factory == "auto" else factory
    index = new_index(factory, dim)
    work, n_train = train_index(
        index, files, train_sample, seed, chunk_rows, faiss_gpu_device(device)
    )
    ids = _populate(work, files, chunk_rows, progress)
    index = to_cpu(work)
    meta = {
        "format_version": FORMAT_VERSION,
        "factory": factory,
        "dim": dim,
        "metric": "inner_product",
        "normalized": True,
        "ntotal": int(index.ntotal),
        "train_sample": n_train,
        "seed": seed,
        "nprobe": nprobe if ivf_nlist(index) else None,
        "model": model_meta(files[0].meta),
        "sources": [{"path": str(f.path.resolve()), "rows": f.num_rows} for f in files],
    }
    write_index_files(out, index, ids, meta)
    return meta


def add_to_index(
    index_path: str | os.PathLike,
    sources: Sequence[str | os.PathLike],
    *,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    device: str = "auto",
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Add embedding files to an existing index (same dim and model); rewrite it atomically.

    Returns:
        The updated metadata.

    Raises:
        IndexError_: unreadable index or sidecars. InputError: mismatched sources, or an
            index built from a shard folder.
    """
    loaded = load_index(index_path, check_source_files=False)
    meta = dict(loaded.meta)
    if meta.get("shard_dir"):
        raise InputError(
            f"{loaded.path}: an index built from a shard folder cannot be extended with --add",
            hint="rebuild it with `emmax index` over all the embeddings",
        )
    if meta.get("metric") != "inner_product":
        raise IndexError_(
            f"{loaded.path}: index metric is {meta.get('metric')!r}, expected 'inner_product'",
            hint=REBUILD_HINT,
        )
    files = _scan_sources(
        sources, expect=(loaded.dim, meta.get("model", {}), f"the index {loaded.path}")
    )
    known = {s["path"] for s in meta["sources"]}
    for f in files:
        if str(f.path.resolve()) in known:
            log.warning("%s is already in the index; its rows are added again", f.path)
    work = to_device(loaded.index, faiss_gpu_device(device))
    new_ids = _populate(work, files, chunk_rows, progress)
    index = to_cpu(work)
    meta["ntotal"] = int(index.ntotal)
    meta["sources"] = meta["sources"] + [
        {"path": str(f.path.resolve()), "rows": f.num_rows} for f in files
    ]
    write_index_files(loaded.path, index, np.concatenate([loaded.ids, new_ids]), meta)
    return meta


def load_index(
    path: str | os.PathLike, nprobe: int | None = None, *, check_source_files: bool = True
) -> LoadedIndex:
    """Load an index and its sidecars, checking that they are intact and agree.

    Args:
        path: the ``X.faiss`` file.
        nprobe: IVF lists to visit; default the value stored at build time.
        check_source_files: also check that the embedding files it was built from are where
            the metadata says, with the same row counts (mining reads them).

    Raises:
        InputError: no such file; a missing or changed source file. IndexError_: unreadable,
            truncated, corrupt (checksum mismatch, vectors not of unit norm) or inconsistent
            index or sidecars (one line, with a hint to rebuild).
    """
    import faiss

    p = Path(path)
    if not p.exists():
        raise InputError(
            f"{p}: no such index file", hint="check the path, or build it with `emmax index`"
        )
    if p.is_dir():
        raise InputError(f"{p}: is a folder, not an index file", hint="pass the X.faiss file")
    meta = read_meta(p)  # verifies the checksums before faiss parses anything
    index = read_faiss(p, meta)
    if index.ntotal != meta["ntotal"] or index.d != meta["dim"]:
        raise IndexError_(
            f"{p}: index ({index.ntotal} x {index.d}) and metadata "
            f"({meta['ntotal']} x {meta['dim']}) disagree",
            hint=REBUILD_HINT,
        )
    ids = read_ids(sidecar_paths(p)[1], int(index.ntotal))
    check_norms(p, index)
    if check_source_files:
        check_sources(p, meta)
    probe = nprobe if nprobe is not None else meta.get("nprobe")
    if probe and ivf_nlist(index):
        faiss.extract_index_ivf(index).nprobe = int(probe)
    return LoadedIndex(index=index, meta=meta, ids=ids, path=p)
