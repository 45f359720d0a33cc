"""Exact and index-backed k-nearest-neighbour search by inner product, in bounded memory.

The search half of mining (:mod:`emmax_cli.mine` holds the margins and retrieval modes):

* :func:`knn` one direction: queries and database are cut into blocks, and each block's
  top-k is merged into one global top-k (faiss ``ResultHeap``, as LASER's ``knnGPU`` does
  with a sort), so results are exact; it also searches faiss indexes (IVF/PQ, approximate).
* ``knn_both.knn_both`` both directions of exact search in one pass: each tile of X·Yᵀ is
  computed once, and its row-wise and column-wise top-k are merged into the running k-NN
  lists of x and of y, with FAISS's tie rule, so it returns what two ``IndexFlatIP``
  searches return, in half the arithmetic."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from .errors import InputError

log = logging.getLogger(__name__)

Progress = Callable[[int], None]

#: Rows per query block and per database block in :func:`knn`. Memory per query block is
#: ``block_size * k * 12`` bytes of results plus faiss' fixed 4096x1024 float32 tile (16 MiB).
#: Blocks are sliced from the inputs (memory-mapped arrays are read block by block) and
#: copied, ``block_size * dim * 4`` bytes (192 MiB at dim 384), only when they are not
#: C-contiguous float32 (e.g. float16 embeddings) or go to a GPU.
DEFAULT_BLOCK_SIZE = 131_072


def _as_2d(x: Any, name: str) -> np.ndarray:
    """The array as is (float16 or memory-mapped stays so; blocks are converted later)."""
    x = x if isinstance(x, np.ndarray) else np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise InputError(f"{name} must be a 2-D array (n, dim), got shape {x.shape}")
    return x


def _block(x: np.ndarray, start: int, size: int) -> np.ndarray:
    """Rows [start, start + size) as C-contiguous float32 (a view when already so)."""
    return np.ascontiguousarray(x[start : start + size], dtype=np.float32)


def clamp_k(k: int, n: int, what: str = "database") -> int:
    """``min(k, n)``, with a warning when it clips (LASER and stopes clip silently).

    Raises:
        InputError: ``k`` below 1.
    """
    if k < 1:
        raise InputError(f"k must be at least 1, got {k}")
    if k > n:
        log.warning("k=%d is more than the %d rows of the %s; using k=%d", k, n, what, n)
    return min(int(k), n)


def _is_index(database: Any) -> bool:
    return hasattr(database, "search") and hasattr(database, "ntotal")


def knn(
    queries: np.ndarray,
    database: Any,
    k: int,
    block_size: int = DEFAULT_BLOCK_SIZE,
    progress: Progress | None = None,
    *,
    nprobe: int | None = None,
    device: str = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours by inner product, in bounded memory.

    Queries are processed in blocks of ``block_size`` rows; for each, the database is
    searched block by block and the per-block top-k lists are merged into one global top-k
    (faiss ``ResultHeap``, as LASER's ``knnGPU`` does with a sort), so results are exact.

    Args:
        queries: (nq, dim) float32 (or float16), L2-normalised.
        database: (nb, dim) float32 (or float16), L2-normalised; or a loaded faiss index,
            or an object holding one in ``.index`` (:class:`emmax_cli.index.LoadedIndex`),
            searched directly (approximate for IVF/PQ indexes).
        k: neighbours per query; clipped to the database size (with a warning).
        block_size: rows per query block and per database block (see ``DEFAULT_BLOCK_SIZE``).
        progress: called with the number of queries done after each query block.
        nprobe: for an IVF index, the number of lists to visit (left unchanged if None).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (GPU needs a faiss GPU build).

    Returns:
        ``(sims, idx)``: (nq, k) float32 similarities, highest first, and (nq, k) int64
        database rows (-1 where an approximate index found fewer than k neighbours).
    """
    import faiss

    xq = _as_2d(queries, "queries")
    if block_size < 1:
        raise InputError(f"block size must be positive, got {block_size}")
    index = getattr(database, "index", database)
    if _is_index(index):
        return _search_index(index, xq, k, block_size, progress, nprobe)
    xb = _as_2d(database, "database")
    if xq.shape[1] != xb.shape[1]:
        raise InputError(
            f"queries have dimension {xq.shape[1]}, database has {xb.shape[1]}",
            hint="embed both sides with the same model",
        )
    if len(xb) == 0:
        raise InputError("cannot search an empty database")
    k = clamp_k(k, len(xb))
    search = _flat_search_fn(device)
    sims = np.empty((len(xq), k), np.float32)
    idx = np.empty((len(xq), k), np.int64)
    one_block = _block(xb, 0, len(xb)) if len(xb) <= block_size else None
    for q0 in range(0, len(xq), block_size):
        q = _block(xq, q0, block_size)
        if one_block is not None:
            dist, nbr = search(q, one_block, k)
        else:
            heap = faiss.ResultHeap(len(q), k, keep_max=True)
            for b0 in range(0, len(xb), block_size):
                b = _block(xb, b0, block_size)
                dist, nbr = search(q, b, min(k, len(b)))
                heap.add_result(dist, nbr + b0)
            heap.finalize()
            dist, nbr = heap.D, heap.I
        sims[q0 : q0 + len(q)] = dist
        idx[q0 : q0 + len(q)] = nbr
        if progress is not None:
            progress(len(q))
    return sims, idx


def _flat_search_fn(device: str) -> Callable[[np.ndarray, np.ndarray, int], tuple]:
    """``search(q, b, k) -> (D, I)`` exact inner-product top-k on CPU or one GPU."""
    import faiss

    from .device import faiss_gpu_device

    gpu = faiss_gpu_device(device)
    if gpu is None:
        return lambda q, b, k: faiss.knn(q, b, k, metric=faiss.METRIC_INNER_PRODUCT)
    res = faiss.StandardGpuResources()
    return lambda q, b, k: faiss.knn_gpu(
        res, q, b, k, metric=faiss.METRIC_INNER_PRODUCT, device=gpu
    )


def _search_index(
    index: Any,
    xq: np.ndarray,
    k: int,
    block_size: int,
    progress: Progress | None,
    nprobe: int | None,
) -> tuple[np.ndarray, np.ndarray]:
    import faiss

    if xq.shape[1] != index.d:
        raise InputError(
            f"queries have dimension {xq.shape[1]}, the index has {index.d}",
            hint="embed the queries with the index's model",
        )
    if index.ntotal == 0:
        raise InputError("cannot search an empty index")
    if nprobe is not None:
        try:
            faiss.extract_index_ivf(index).nprobe = int(nprobe)
        except RuntimeError:  # not an IVF index: nothing to set
            pass
    k = clamp_k(k, int(index.ntotal), "index")
    sims = np.empty((len(xq), k), np.float32)
    idx = np.empty((len(xq), k), np.int64)
    for q0 in range(0, len(xq), block_size):
        q = _block(xq, q0, block_size)
        sims[q0 : q0 + len(q)], idx[q0 : q0 + len(q)] = index.search(q, k)
        if progress is not None:
            progress(len(q))
    return sims, idx
