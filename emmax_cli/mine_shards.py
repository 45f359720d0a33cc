"""``emmax mine --ray``: the k-NN searches of mining as Ray tasks over query shards.

Both directions are cut into query shards of ``query_rows`` rows. A task searches its
shard against the whole other side: exactly (the side's embeddings, memory-mapped from the
work folder) or through the side's index (``emmax index``, loaded by the task), and writes
its top-k lists to the work folder atomically. The driver then concatenates the lists in
row order and computes the margins with the global neighbour means, as a single-process run
does (``mine.mine_from_neighbours``), so the pairs are the same.

The work folder (default: beside the output, or ``.emmax-mine-work`` in the current
folder) records a fingerprint of both sides and the search settings; rerunning the same
command reuses every finished shard's results. On a cluster of several machines it must be
on storage all of them see, as the shard folders and indexes already are."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from .console import Progress, null_progress
from .errors import InputError
from .io.atomic import atomic_output
from .knn import DEFAULT_BLOCK_SIZE, knn
from .mine import MinedPairs, check_sides, mine_from_neighbours
from .raycluster import LOCAL, init_ray, task_error

log = logging.getLogger(__name__)

DEFAULT_QUERY_ROWS = 65_536
STATE = "state.json"


def default_work_dir(output: str | os.PathLike | None) -> Path:
    """``.<output>.work`` beside a file output, else ``.emmax-mine-work`` here."""
    if output is None or str(output) == "-":
        return Path(".emmax-mine-work")
    p = Path(output)
    return p.with_name(f".{p.name}.work")


def _digest(a: np.ndarray) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(str(a.shape).encode())
    for i in range(0, len(a), 1 << 16):
        h.update(np.ascontiguousarray(a[i : i + (1 << 16)], np.float32).tobytes())
    return h.hexdigest()


def search_shard(
    queries: str,
    start: int,
    stop: int,
    database: str,
    k: int,
    out: str,
    block_size: int,
    threads: int = 1,
) -> str:
    """One task: rows ``[start, stop)`` of the ``.npy`` file ``queries`` searched against
    ``database`` (a ``.npy`` file: exact; an index file: through the index); the top-k lists
    go to ``out`` (``.npz``, written atomically)."""
    import faiss
    from threadpoolctl import threadpool_limits

    faiss.omp_set_num_threads(threads)
    q = np.load(queries, mmap_mode="r")[start:stop]
    if database.endswith(".npy"):
        db: Any = np.load(database, mmap_mode="r")
    else:
        from .index import load_index

        db = load_index(database, check_source_files=False)
    with threadpool_limits(limits=threads):
        sims, idx = knn(np.ascontiguousarray(q), db, k, block_size=block_size)
    with atomic_output(out) as tmp, open(tmp, "wb") as f:
        np.savez(f, sims=sims, idx=idx)
    return out


def _prepare(work: Path, state: dict, x: np.ndarray, y: np.ndarray) -> None:
    """Reuse ``work`` if it holds this job, else start it afresh with both sides saved."""
    sfile = work / STATE
    try:
        old = json.loads(sfile.read_text())
    except (OSError, ValueError):
        old = None
    if old == state:
        return
    if work.exists():
        if old is None and any(work.iterdir()):
            raise InputError(
                f"{work}: exists and is not an emmax mining work folder",
                hint="pass another --work-dir, or remove it",
            )
        shutil.rmtree(work)
    work.mkdir(parents=True)
    for name, a in (("src.npy", x), ("tgt.npy", y)):
        with atomic_output(work / name) as tmp, open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(a, np.float32))
    with atomic_output(sfile) as tmp:
        Path(tmp).write_text(json.dumps(state))


def mine_ray(
    x: np.ndarray,
    y: np.ndarray,
    k: int = 4,
    margin: str = "ratio",
    retrieval: str = "max",
    *,
    src_index: str | None = None,
    tgt_index: str | None = None,
    work_dir: str | os.PathLike,
    ray_address: str | None = LOCAL,
    query_rows: int = DEFAULT_QUERY_ROWS,
    block_size: int = DEFAULT_BLOCK_SIZE,
    threads: int = 1,
    progress: Progress | None = None,
    keep_work: bool = False,
) -> MinedPairs:
    """Every candidate pair of :func:`emmax_cli.mine.mine` (no threshold), with the k-NN
    searches run as Ray tasks over query shards; resumable through ``work_dir``.

    Args:
        x, y: (n, dim) L2-normalised embeddings of the (unified) sides.
        src_index, tgt_index: index files holding the same rows as ``x`` / ``y``; a
            direction searching a side with an index uses it (approximate for IVF).
        work_dir: folder for both sides' arrays and the per-shard results.
        query_rows: rows per query shard (one task each).
        threads: CPU threads per task.
        keep_work: keep the work folder after success (default: removed).

    Raises:
        InputError: a work folder that is not one, bad sizes. EmmaxError: Ray errors.
    """
    if query_rows < 1 or k < 1:
        raise InputError("--query-rows and k must be at least 1")
    x, y = check_sides(x, y)
    progress = progress or null_progress
    kx, ky = min(k, len(y)), min(k, len(x))
    work = Path(work_dir).resolve()  # tasks may run in another working folder
    state = {
        "src": _digest(x),
        "tgt": _digest(y),
        "k": [kx, ky],
        "query_rows": query_rows,
        "src_index": src_index and os.path.realpath(src_index),
        "tgt_index": tgt_index and os.path.realpath(tgt_index),
    }
    _prepare(work, state, x, y)
    jobs = []  # (direction, start, stop, queries file, database, k)
    for name, q, qf, db, kk in (
        ("fwd", x, "src.npy", tgt_index or str(work / "tgt.npy"), kx),
        ("bwd", y, "tgt.npy", src_index or str(work / "src.npy"), ky),
    ):
        for i, start in enumerate(range(0, len(q), query_rows)):
            out = work / f"{name}-{i:05d}.npz"
            jobs.append((out, str(work / qf), start, min(start + query_rows, len(q)), db, kk))
    todo = [j for j in jobs if not j[0].exists()]
    if len(todo) < len(jobs):
        log.info("%s: %d finished query shard(s) reused", work, len(jobs) - len(todo))
    for j in jobs:
        if j not in todo:
            progress(j[3] - j[2])
    if todo:
        ray = init_ray(ray_address, num_cpus=None)
        task = ray.remote(num_cpus=threads, max_retries=3)(search_shard)
        refs = {
            task.remote(qf, a, b, db, kk, str(out), block_size, threads): b - a
            for out, qf, a, b, db, kk in todo
        }
        while refs:
            done, _ = ray.wait(list(refs), num_returns=1)
            try:
                ray.get(done[0])
            except Exception as e:
                for r in refs:
                    ray.cancel(r)
                raise task_error(
                    e, "a k-NN task", hint="rerun the same command: finished query shards are kept"
                ) from None
            progress(refs.pop(done[0]))
    x2y, y2x = (_gather([j[0] for j in jobs if j[0].name.startswith(d)]) for d in ("fwd", "bwd"))
    pairs = mine_from_neighbours(
        x2y, y2x, margin=margin, retrieval=retrieval, n_src=len(x), n_tgt=len(y)
    )
    if not keep_work:
        shutil.rmtree(work, ignore_errors=True)
    return pairs


def _gather(files: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    parts = [np.load(f) for f in files]
    return np.concatenate([p["sims"] for p in parts]), np.concatenate([p["idx"] for p in parts])
