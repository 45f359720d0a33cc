"""FAISS indexes over embedding Parquet files: choose, build, extend, load (docs/mining.md §2).

An index ``X.faiss`` always comes with two sidecars, ``X.faiss.ids.npy`` and ``X.faiss.json``,
all written atomically, with checksums verified at load (see :mod:`emmax_cli.index_meta`).

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
    FORMAT_VERSION,
    REBUILD_HINT,
    check_norms,
    check_sources,
    model_key,
    model_meta,
    read_ids,
    read_meta,
    sidecar_paths,
    write_index_files,
)
from .io.atomic import check_output
from .io.parquet import EmbeddingFile, iter_embeddings, open_embeddings

log = logging.getLogger(__name__)

Progress = Callable[[int], None]

__all__ = [
    "FORMAT_VERSION",
    "LoadedIndex",
    "add_to_index",
    "build_index",
    "choose_factory",
    "load_index",
    "sidecar_paths",
]

FLAT_MAX_ROWS = 100_000  # emmax policy: exact search up to here
MAX_TRAIN_ROWS = 40_000_000  # stopes' sample_sz
DEFAULT_NPROBE = 128  # stopes' search setting
#: Rows read, normalised and added per step: chunk_rows * dim * 4 bytes (96 MiB at dim 384).
DEFAULT_CHUNK_ROWS = 65_536

# stopes determine_faiss_index_type: (more than this many rows, IVF lists)
_STOPES_TIERS = (
    (500_000_000, 262_144),
    (100_000_000, 131_072),
    (10_000_000, 65_536),
    (4_000_000, 32_768),
    (700_000, 16_384),
    (250_000, 8_192),
    (160_000, 4_096),
    (80_000, 2_048),
    (10_000, 1_024),
)


def _pq_m(dim: int, cap: int = 64) -> int:
    """Largest number of PQ sub-quantizers <= cap that divides dim (faiss requires it)."""
    return max(m for m in range(1, min(cap, dim) + 1) if dim % m == 0)


def choose_factory(n: int, dim: int) -> str:
    """FAISS factory string for n vectors of width dim (``--index auto``).

    ``Flat`` up to 100k rows (exact, seconds to search); above, the stopes table
    ``OPQ{m},IVF{nlist},PQ{m}``, where m = 64 or, when 64 does not divide dim, the largest
    divisor of dim below 64.
    """
    if n <= FLAT_MAX_ROWS:
        return "Flat"
    nlist = next(lists for above, lists in _STOPES_TIERS if n > above)
    m = _pq_m(dim)
    return f"OPQ{m},IVF{nlist},PQ{m}"


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


def _new_index(factory: str, dim: int) -> Any:
    import faiss

    try:
        return faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise InputError(
            f"invalid FAISS factory string {factory!r} for dimension {dim} ({_faiss_message(e)})",
            hint="try 'auto', 'Flat' or e.g. 'IVF1024,PQ64' (PQ m must divide dim)",
        ) from None


def _faiss_message(e: Exception) -> str:
    """The useful part of a faiss C++ exception, on one line."""
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return msg.rsplit("Error: ", 1)[-1].strip()


def _nlist(index: Any) -> int | None:
    import faiss

    try:
        return int(faiss.extract_index_ivf(index).nlist)
    except RuntimeError:
        return None


def _to_device(index: Any, gpu: int | None) -> Any:
    """Clone to GPU (fp16, as stopes trains) when asked; fall back to CPU if faiss refuses."""
    if gpu is None:
        return index
    import faiss

    opts = faiss.GpuClonerOptions()
    opts.useFloat16 = True
    try:
        return faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), gpu, index, opts)
    except RuntimeError as e:
        log.warning("index type not supported on GPU (%s); using the CPU", _faiss_message(e))
        return index


def _to_cpu(index: Any) -> Any:
    import faiss

    return faiss.index_gpu_to_cpu(index) if "Gpu" in type(index).__name__ else index


def _normalised(emb: np.ndarray) -> np.ndarray:
    import faiss

    x = np.array(emb, dtype=np.float32, order="C", copy=True)
    faiss.normalize_L2(x)
    return x


def _sample_rows(
    files: list[EmbeddingFile], n: int, size: int, seed: int, chunk_rows: int
) -> np.ndarray:
    """(size, dim) float32 normalised rows drawn uniformly without replacement, streaming."""
    rows = np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))
    out = np.empty((size, files[0].dim), np.float32)
    start = done = 0
    for f in files:
        for batch in iter_embeddings(f.path, batch_rows=chunk_rows, columns=("embedding",)):
            emb = batch["embedding"]
            lo, hi = np.searchsorted(rows, [start, start + len(emb)])
            out[done : done + hi - lo] = emb[rows[lo:hi] - start]
            done += hi - lo
            start += len(emb)
    import faiss

    faiss.normalize_L2(out)
    return out


def _train_rows(index: Any, n: int, train_sample: int | None) -> int:
    """Training sample size: k-means keeps at most 256 points per centroid (faiss default
    max_points_per_centroid) and PQ codebooks 256 x 256, so more rows only cost memory."""
    nlist = _nlist(index) or 0
    size = train_sample if train_sample is not None else min(MAX_TRAIN_ROWS, 256 * max(nlist, 256))
    size = min(int(size), n)
    if size < max(nlist, 1):
        raise InputError(
            f"{n} vectors are too few to train an index with {nlist} lists"
            f" (training sample: {size})",
            hint="use --index Flat or a smaller IVF, or a larger --train-sample",
        )
    return size


def _populate(
    work: Any, files: list[EmbeddingFile], chunk_rows: int, progress: Progress | None
) -> np.ndarray:
    """Add all rows chunk by chunk; return their ids."""
    ids = []
    for f in files:
        for batch in iter_embeddings(f.path, batch_rows=chunk_rows):
            work.add(_normalised(batch["embedding"]))
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
) -> dict[str, Any]:
    """Build a FAISS inner-product index over embedding Parquet files.

    Args:
        sources: embedding Parquet files (same dim and model: checksum, else id, else
            name from their metadata), added in this order.
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

    Returns:
        The metadata written to ``X.faiss.json``.

    Raises:
        InputError: existing output, unreadable or mismatched sources, bad factory string,
            too few rows to train.
    """
    out = check_output(out_path, force)
    files = _scan_sources(sources)
    n, dim = sum(f.num_rows for f in files), files[0].dim
    if n == 0:
        raise InputError("no embeddings to index: all inputs are empty")
    factory = choose_factory(n, dim) if factory == "auto" else factory
    index = _new_index(factory, dim)
    gpu = faiss_gpu_device(device)
    n_train = 0
    if not index.is_trained:
        n_train = _train_rows(index, n, train_sample)
        log.info("training %s on %d of %d vectors", factory, n_train, n)
        sample = _sample_rows(files, n, n_train, seed, chunk_rows)
        work = _to_device(index, gpu)
        work.train(sample)
        del sample
    else:
        work = _to_device(index, gpu)
    ids = _populate(work, files, chunk_rows, progress)
    index = _to_cpu(work)
    meta = {
        "format_version": FORMAT_VERSION,
        "factory": factory,
        "dim": dim,
        "metric": "inner_product",
        "normalized": True,
        "ntotal": int(index.ntotal),
        "train_sample": n_train,
        "seed": seed,
        "nprobe": nprobe if _nlist(index) else None,
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
        IndexError_: unreadable index or sidecars. InputError: mismatched sources.
    """
    loaded = load_index(index_path, check_source_files=False)
    meta = dict(loaded.meta)
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
    work = _to_device(loaded.index, faiss_gpu_device(device))
    new_ids = _populate(work, files, chunk_rows, progress)
    index = _to_cpu(work)
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
    try:
        index = faiss.read_index(str(p))
    except (RuntimeError, MemoryError) as e:
        raise IndexError_(
            f"{p}: cannot read the FAISS index ({_faiss_message(e)})", hint=REBUILD_HINT
        ) from None
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
    if probe and _nlist(index):
        faiss.extract_index_ivf(index).nprobe = int(probe)
    return LoadedIndex(index=index, meta=meta, ids=ids, path=p)
