"""One pass for both directions of exact k-NN (``knn_both``): each tile of X·Yᵀ is computed
once and its top-k kept along rows and along columns, in FAISS's order, in bounded memory.
``mine`` uses it whenever both directions are searched exactly; ``knn.py`` holds the
one-direction search and its helpers."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext

import numpy as np

from .errors import InputError
from .knn import DEFAULT_BLOCK_SIZE, Progress, _as_2d, _block, clamp_k

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------ knn_both
#: GEMM tile of :func:`knn_both` on CPU, (rows of x, rows of y), per search thread. A
#: 1024 x 2048 float32 tile is 8 MiB: two threads' tiles and masks stay in a 32 MiB L3
#: while the tiles' two top-k passes read them, and one sgemm of this size (1.6 GFLOP at
#: dim 384) runs at a core's peak.
TILE_CPU = (1024, 2048)
#: The same on CUDA: a 1 GiB tile; only the candidates (a few per row) go to the host.
TILE_CUDA = (16384, 16384)


def knn_both(
    x: np.ndarray,
    y: np.ndarray,
    k: int,
    block_size: int = DEFAULT_BLOCK_SIZE,
    progress: Progress | None = None,
    device: str = "auto",
    *,
    k_yx: int | None = None,
    tile: tuple[int, int] | None = None,
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Exact k-NN by inner product of every x row among y and of every y row among x, in one
    pass over X·Yᵀ: what ``knn(x, y, k)`` and ``knn(y, x, k)`` return, for half the arithmetic.

    Both directions are one similarity matrix and its transpose. Each tile
    ``x_blk @ y_blk.T`` (float32 GEMM: numpy/OpenBLAS on CPU, torch on CUDA) is computed
    once; its entries above a row's current k-th best are merged into that row's running
    top-k, and its entries above a column's k-th best into that column's (the y row's). After
    the first tile the k-th bests are tight, so a tile yields a few candidates per row and
    column (about k/j in the j-th tile); in the first tile, a lower bound on the tile's own
    k-th best leaves about k per list.

    On CPU, the search runs on as many threads as the BLAS has (each computing its tiles with
    a one-thread GEMM, so no BLAS thread spins while the tiles are read): thread t takes the
    t-th band of y rows, and a band of x rows passes from thread to thread, so every list
    still sees the other side in index order. That takes ``threadpoolctl``; without it, one
    thread runs with the BLAS's threads. Memory: per thread, a ``tile`` of floats and a
    boolean mask of a quarter of its size; plus the k-lists. Inputs are read tile by tile
    (memory-mapped arrays stay on disk; float16 is converted to float32 per ``block_size``
    rows, per thread).

    Ties follow FAISS (``IndexFlatIP``/``faiss.knn``, the heap path used for k < 100): the
    other side is scanned in index order, and an entry enters a full list only if it is
    *strictly* above the list's worst entry, which then leaves (of equal worst entries, the
    one with the smallest index). So of the entries equal to the k-th best score, a list
    keeps those that came before its worst score reached that value, the largest indices of
    those: neither "smallest index first" nor "largest" in general. Lists are sorted by
    descending similarity, equal similarities by descending index. Where the
    similarities are exact (say, small integer or dyadic vectors, duplicate rows), results
    equal FAISS's bit for bit, ties included. Otherwise the similarities come from another
    GEMM than FAISS's and may differ from its values in the last bit (~5% of entries, which
    depend on the tile shape too); FAISS's own two directions disagree with each other as
    much, as they use differently shaped GEMMs.

    Args:
        x: (nx, dim) float32 or float16 (e.g. L2-normalised source embeddings).
        y: (ny, dim) likewise.
        k: neighbours of each x row among y; clipped, with a warning, to ny.
        block_size: rows of each side converted to float32 at a time, when an input is not
            C-contiguous float32 (as in :func:`knn`); also caps the tile edges.
        progress: called with the number of rows done, ``nx + ny`` in all, in proportion to
            the tiles done (both sides finish together); called from the search threads,
            one call at a time.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (torch device).
        k_yx: neighbours of each y row among x (default ``k``); clipped to nx.
        tile: GEMM tile ``(x rows, y rows)``; default :data:`TILE_CPU` / :data:`TILE_CUDA`.

    Returns:
        ``((sims_xy, idx_xy), (sims_yx, idx_yx))``: (nx, k) and (ny, k_yx) float32
        similarities, highest first, and int64 row numbers of the other side. An empty side
        gives lists with no rows, and lists with no columns for the other side.

    Raises:
        InputError: not 2-D, different dimensions, k below 1, bad block size or tile.
        EmmaxError: unknown device, or CUDA asked for and not available.
    """
    from .device import resolve_device

    xs, ys = _as_2d(x, "x"), _as_2d(y, "y")
    if xs.shape[1] != ys.shape[1]:
        raise InputError(
            f"x has dimension {xs.shape[1]}, y has {ys.shape[1]}",
            hint="embed both sides with the same model",
        )
    if block_size < 1:
        raise InputError(f"block size must be positive, got {block_size}")
    k_yx = k if k_yx is None else k_yx
    if min(k, k_yx) < 1:
        raise InputError(f"k must be at least 1, got {min(k, k_yx)}")
    if tile is not None and (len(tile) != 2 or min(tile) < 1):
        raise InputError(f"a tile is two positive edges, got {tile}")
    nx, ny = len(xs), len(ys)
    k_xy = clamp_k(k, ny, "y side") if ny else 0
    k_yx = clamp_k(k_yx, nx, "x side") if nx else 0
    dev = "cpu" if device.strip().lower() == "cpu" else resolve_device(device)
    xy = np.full((nx, k_xy), -np.inf, np.float32), np.full((nx, k_xy), -1, np.int64)
    yx = np.full((ny, k_yx), -np.inf, np.float32), np.full((ny, k_yx), -1, np.int64)
    if nx == 0 or ny == 0:
        if progress is not None and nx + ny:
            progress(nx + ny)
        return xy, yx
    if dev.startswith("cuda"):
        torch_tiles = _TorchTiles(dev, tile or TILE_CUDA, block_size)
        with torch_tiles:
            _one_pass(xs, ys, xy, yx, block_size, [torch_tiles], progress)
        return xy, yx
    threads, one_thread_blas = _blas_threads()
    threads = max(1, min(threads, ny // 64))  # bands of >= 64 y rows
    tiles = [_NumpyTiles(tile or TILE_CPU, block_size) for _ in range(threads)]
    with one_thread_blas() if threads > 1 else nullcontext():
        _one_pass(xs, ys, xy, yx, block_size, tiles, progress)
    return xy, yx


def one_pass_device(device: str = "auto") -> str | None:
    """The torch device on which :func:`knn_both` serves ``device``, or None where exact
    search should stay with FAISS: a faiss GPU build, and ``device`` is not ``cpu``.

    Raises:
        EmmaxError: unknown device, or CUDA asked for and available to neither faiss nor torch.
    """
    from .device import faiss_gpu_device, resolve_device
    from .errors import EmmaxError

    dev = (device or "auto").strip().lower()
    if dev == "cpu":
        return dev
    try:
        if faiss_gpu_device(dev) is not None:
            return None
    except EmmaxError:  # faiss without GPU support: torch may still have CUDA
        pass
    return resolve_device(dev)


def _blas_threads() -> tuple[int, Callable[[], AbstractContextManager]]:
    """``(threads, context)``: the BLAS's threads, and a context (factory) in which it runs
    each GEMM on its calling thread, for as many search threads. Without ``threadpoolctl``:
    one search thread, which the BLAS's own threads serve."""
    try:
        from threadpoolctl import threadpool_info, threadpool_limits
    except ImportError:
        return 1, nullcontext
    n = max((i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"), default=1)
    return n, lambda: threadpool_limits(limits=1, user_api="blas")


class _Abort(Exception):
    """Another search thread failed."""


class _Pipeline:
    """Hands bands of x rows from search thread to search thread, reports progress."""

    def __init__(self, threads: int, total: int, scale: int, progress: Progress | None):
        self.cond = threading.Condition()
        self.bands_done = [0] * threads
        self.failed = False
        self.total, self.scale, self.progress = total, scale, progress
        self.work = self.reported = 0

    def wait(self, thread: int, band: int) -> None:
        """Until ``thread`` (if any: -1 for none) has searched ``band`` (its columns for those
        x rows). Raises _Abort once another thread has failed."""
        with self.cond:
            self.cond.wait_for(lambda: self.failed or thread < 0 or self.bands_done[thread] > band)
            if self.failed:
                raise _Abort

    def done(self, thread: int, work: int) -> None:
        with self.cond:
            self.bands_done[thread] += 1
            self.cond.notify_all()
            self.work += work
            now = self.work * self.scale // self.total
            if self.progress is not None and now > self.reported:
                self.progress(now - self.reported)
                self.reported = now

    def fail(self) -> None:
        with self.cond:
            self.failed = True
            self.cond.notify_all()


def _one_pass(x, y, xy, yx, block_size, tiles, progress) -> None:
    """Fill the k-lists ``xy`` (of x rows) and ``yx`` (of y rows), tile by tile.

    Search thread t owns the t-th band of y rows (the columns); the x rows go by in bands of
    tile rows, and thread t searches a band after thread t-1 has: so every x row sees the y
    rows in increasing order, and every y row the x rows, as a FAISS scan does."""
    nx, ny, threads = len(x), len(y), len(tiles)
    t_rows, t_cols = (min(t, block_size) for t in tiles[0].tile)
    if threads > 1:  # >= 8 bands per thread (in multiples of 64 rows): short fill and drain
        t_rows = min(t_rows, 64 * max(1, -(-nx // (8 * threads * 64))))
    edges = [ny * t // threads for t in range(threads + 1)]
    pipe = _Pipeline(threads, nx * ny, nx + ny, progress)

    def search(t: int) -> None:
        tl, a, b = tiles[t], edges[t], edges[t + 1]
        whole = tl.panel(y, a, b - a) if b - a <= block_size else None
        band = 0
        try:
            for x0 in range(0, nx, block_size):
                xp = tl.panel(x, x0, block_size)
                for i0 in range(0, len(xp), t_rows):
                    xt = xp[i0 : i0 + t_rows]
                    pipe.wait(t - 1, band)
                    for y0 in range(a, b, block_size):
                        yp = (
                            whole if whole is not None else tl.panel(y, y0, min(block_size, b - y0))
                        )
                        for j0 in range(0, len(yp), t_cols):
                            tl.search(xt, yp[j0 : j0 + t_cols], xy, yx, x0 + i0, y0 + j0)
                    band += 1
                    pipe.done(t, len(xt) * (b - a))
        except BaseException:
            pipe.fail()
            raise

    if threads == 1:
        search(0)
        return
    with ThreadPoolExecutor(threads - 1, thread_name_prefix="emmax-knn") as pool:
        others = [pool.submit(search, t) for t in range(1, threads)]
        try:
            search(0)
        except _Abort:  # another thread failed: raise its error
            pass
        finally:
            errors = [f.exception() for f in others]
    for err in errors:
        if err is not None and not isinstance(err, _Abort):
            raise err


class _NumpyTiles:
    """CPU tiles of one search thread: numpy (BLAS) sgemm into a reused buffer, then the
    row and column candidates, numpy comparisons on the tile."""

    def __init__(self, tile: tuple[int, int], block_size: int):
        self.tile = tile
        size = min(tile[0], block_size) * min(tile[1], block_size)
        self.sims = np.empty(size, np.float32)
        self.mask = np.empty(size, bool)

    @staticmethod
    def panel(a: np.ndarray, start: int, size: int) -> np.ndarray:
        return _block(a, start, size)

    def search(self, xt, yt, xy, yx, r0, c0) -> None:
        sims = self.sims[: len(xt) * len(yt)].reshape(len(xt), len(yt))
        np.matmul(xt, yt.T, out=sims)
        _merge_tile(self, sims, xy, yx, r0, c0)

    @staticmethod
    def bound(sims, k, axis):
        """A lower bound on the k-th best entry of each row (``axis`` 1) or column (0): the
        k-th largest of the maxima of 32 or more disjoint groups of its entries (k of those
        maxima are k distinct entries). Groups are merged by halving, in one pass over the
        tile. None if the tile has fewer than k entries per row (column)."""
        groups = max(32, k)
        while sims.shape[axis] >= 2 * groups:
            half = sims.shape[axis] // 2
            if axis == 1:
                sims = np.maximum(sims[:, :half], sims[:, half : 2 * half])
            else:
                sims = np.maximum(sims[:half], sims[half : 2 * half])
        n = sims.shape[axis]
        return None if n < k else np.partition(sims, n - k, axis=axis).take(n - k, axis=axis)

    def candidates(self, sims, thr, axis):
        """Row, column and value of the entries above ``thr`` (per row if ``axis`` is 1,
        per column if 0), in row-major order."""
        mask = self.mask[: sims.size].reshape(sims.shape)
        np.greater(sims, thr[:, None] if axis == 1 else thr[None, :], out=mask)
        r, c = np.divmod(np.flatnonzero(mask), sims.shape[1])
        return r, c, sims[r, c]


class _TorchTiles:
    """Tiles on a torch device (CUDA; CPU in tests): GEMM, comparisons and the candidate
    lists on the device; only the candidates go to the host, where the lists are merged."""

    def __init__(self, device: str, tile: tuple[int, int], block_size: int):
        import torch

        self.torch, self.device, self.tile = torch, torch.device(device), tile
        size = min(tile[0], block_size) * min(tile[1], block_size)
        self.sims = torch.empty(size, dtype=torch.float32, device=self.device)
        self.tf32 = None

    def __enter__(self):
        if self.device.type == "cuda":  # exact float32, whatever the process set
            self.tf32 = self.torch.backends.cuda.matmul.allow_tf32
            self.torch.backends.cuda.matmul.allow_tf32 = False
        return self

    def __exit__(self, *exc):
        if self.tf32 is not None:
            self.torch.backends.cuda.matmul.allow_tf32 = self.tf32

    def panel(self, a: np.ndarray, start: int, size: int):
        blk = np.ascontiguousarray(a[start : start + size])  # float16 travels as float16
        return self.torch.from_numpy(blk).to(self.device).float()

    def search(self, xt, yt, xy, yx, r0, c0) -> None:
        sims = self.sims[: len(xt) * len(yt)].view(len(xt), len(yt))
        self.torch.mm(xt, yt.T, out=sims)
        _merge_tile(self, sims, xy, yx, r0, c0)

    def bound(self, sims, k, axis):
        """As :meth:`_NumpyTiles.bound`."""
        groups = max(32, k)
        while sims.shape[axis] >= 2 * groups:
            half = sims.shape[axis] // 2
            sims = self.torch.maximum(sims.narrow(axis, 0, half), sims.narrow(axis, half, half))
        n = sims.shape[axis]
        if n < k:
            return None
        return self.torch.kthvalue(sims, n - k + 1, dim=axis).values.cpu().numpy()

    def candidates(self, sims, thr, axis):
        t = self.torch.from_numpy(thr).to(self.device)
        above = sims > (t[:, None] if axis == 1 else t[None, :])
        flat = self.torch.nonzero(above.reshape(-1)).squeeze(1)  # row-major order
        r, c = flat // sims.shape[1], flat % sims.shape[1]
        return r.cpu().numpy(), c.cpu().numpy(), sims[r, c].cpu().numpy()


def _threshold(tiles, sims, vals, axis) -> np.ndarray:
    """Per row (axis 1) or column (axis 0) of the tile: candidates are the entries above it.

    That is the list's worst value (a FAISS scan takes only entries strictly above it).
    While lists are still filling (worst -inf), it is raised to just below a lower bound on
    the k-th best of the tile itself (``tiles.bound``): an entry below the k-th best of the
    row's entries can be in no k-list, whatever the scan order, so dropping it changes
    nothing, ties included; the first tile then yields about k candidates per list, not all
    of its entries."""
    thr = vals[:, -1].copy()
    if np.isneginf(thr).any():
        low = tiles.bound(sims, vals.shape[1], axis)
        if low is not None:
            np.maximum(thr, np.nextafter(low, np.float32(-np.inf)), out=thr)
    return thr


def _merge_tile(tiles, sims, xy, yx, r0, c0) -> None:
    """Merge the tile's entries into the k-lists of its rows (x rows ``r0`` ...) and of its
    columns (y rows ``c0`` ...)."""
    h, w = sims.shape
    vals, ids = xy[0][r0 : r0 + h], xy[1][r0 : r0 + h]
    r, c, s = tiles.candidates(sims, _threshold(tiles, sims, vals, 1), 1)
    if len(r):
        _merge(vals, ids, r, c + c0, s)
    vals, ids = yx[0][c0 : c0 + w], yx[1][c0 : c0 + w]
    r, c, s = tiles.candidates(sims, _threshold(tiles, sims, vals, 0), 0)
    if len(r):
        by_col = np.argsort(c, kind="stable")  # rows stay in increasing order
        _merge(vals, ids, c[by_col], r[by_col] + r0, s[by_col])


def _desc_key(v: np.ndarray) -> np.ndarray:
    """int64 keys in [0, 2**32), decreasing in the float32 values; -0.0 and 0.0 share one."""
    b = (v + np.float32(0)).view(np.int32)  # -0.0 + 0.0 is 0.0
    return np.int64(0x7FFFFFFF) - np.where(b >= 0, b, b ^ np.int32(0x7FFFFFFF)).astype(np.int64)


def _merge(vals, ids, grp, new_ids, new_vals) -> None:
    """Merge candidates into k-lists, in place, as FAISS's heap would take them one by one.

    Args:
        vals, ids: (n, k) lists, by descending value, equal values by descending id
            (unfilled slots: -inf, -1); n < 2**30.
        grp: (m,) list (row of ``vals``) of each candidate, non-decreasing.
        new_ids, new_vals: the candidates; within a list, in increasing id order and with
            ids above those already in it (the scan order).

    Each list and its candidates are sorted by value together and the first k kept. Where
    the k+1 best values hold an exact tie, that is not FAISS's answer in general, and
    :func:`_faiss_order` gives it instead.
    """
    k, m = vals.shape[1], len(grp)
    first = np.empty(m, bool)
    first[0] = True
    np.not_equal(grp[1:], grp[:-1], out=first[1:])
    starts = np.flatnonzero(first)
    rows = grp[starts]
    size = np.empty(len(rows), np.int64)
    size[-1] = m - starts[-1]
    np.subtract(starts[1:], starts[:-1], out=size[:-1])
    size += k
    # the pool: the old lists (in row order), then the candidates (also in row order)
    pool_v = np.concatenate((vals[rows].ravel(), new_vals))
    pool_i = np.concatenate((ids[rows].ravel(), new_ids))
    key = (np.concatenate((np.repeat(rows, k), grp)) << 32) | _desc_key(pool_v)
    order = np.argsort(key, kind="stable")  # by row, then value; row g at [off, off + size)
    slot = (np.cumsum(size) - size)[:, None] + np.arange(k)
    top = order[slot]
    ranked = key[order]
    tie = (ranked[slot] == ranked[slot + 1]).any(axis=1)  # each row has >= k + 1 entries
    if tie.any():
        top[tie] = _faiss_order(key, ranked, pool_i, first, starts, slot)[tie]
    vals[rows], ids[rows] = pool_v[top], pool_i[top]


def _faiss_order(key, ranked, pool_i, first, starts, slot) -> np.ndarray:
    """(n, k) pool positions of FAISS's k-lists, ties included (the pool of :func:`_merge`).

    With the k-th best value v_k: FAISS keeps every entry above v_k, and of the entries equal
    to v_k, those that came before the k-th entry >= v_k in scan order (later ones met a full
    list whose worst was already v_k), the largest ids first (a tie at the heap's top
    evicts the smallest id). Scan order: the old list (k entries), then the candidates."""
    n, k = slot.shape
    kth = ranked[slot[:, -1]]
    group = np.concatenate((np.repeat(np.arange(n), k), np.cumsum(first) - 1))
    ge = key <= kth[group]
    early = key == kth[group]
    old_ge = ge[: n * k].reshape(n, k).sum(axis=1)  # all old entries come before the k-th
    new_ge = ge[n * k :]
    seen = np.cumsum(new_ge)
    seen -= (seen[starts] - new_ge[starts])[group[n * k :]]  # within the row, so far
    early[n * k :] &= old_ge[group[n * k :]] + seen <= k
    key2 = (key << 1) | ~early  # by row, value, early ones first; then id, descending
    by_id = np.argsort(-pool_i, kind="stable")
    return by_id[np.argsort(key2[by_id], kind="stable")][slot]
