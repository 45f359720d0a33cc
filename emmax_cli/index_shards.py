"""``emmax index`` over a shard folder (what ``emmax embed --ray`` writes, :mod:`.shards`):
indexes larger than RAM.

Exact ``Flat`` (and any other type without inverted lists) adds the shards in order into one
index in memory, as :func:`emmax_cli.index.build_index` does with files. IVF types:

1. train once on a sample drawn across all shards: the same rows as ``build_index`` draws
   from the concatenated files with the same seed and sample size, so the same quantizer;
2. add each shard into its own copy of the trained, empty index, its vectors labelled with
   their global row numbers, and write it as a per-shard ``.faiss`` in a work folder beside
   the output; shards run in parallel, on threads (faiss releases the GIL while adding) or as
   Ray tasks (``ray_address``);
3. merge the per-shard inverted lists on disk (``faiss.contrib.ondisk.merge_ondisk``) into
   ``X.faiss.ivfdata`` beside ``X.faiss``. The index file keeps the quantizer and the list
   sizes; a search mmaps the lists (read-only), so RAM holds only the quantizer.

Every list holds its entries in row order (shard after shard), as an index built in one go
does, so the merged index answers the same k-NN. Labels are row numbers 0..ntotal-1 in shard
order, as for every emmax index; the ids sidecar maps them to the folder's global ids (each
shard's ``id`` plus its input's offset, as :func:`.shards.iter_shard_rows` yields them).
The metadata lists the shard files as ``sources`` and the folder as ``shard_dir``; the
``.ivfdata`` file's name, size and BLAKE2b are in it too (``ondisk``, ``ondisk_bytes``,
``ondisk_blake2b``), checked at load (:func:`.index_meta.ondisk_data`)."""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from .device import faiss_gpu_device
from .errors import InputError
from .index_meta import (
    DEFAULT_CHUNK_ROWS,
    DEFAULT_NPROBE,
    FORMAT_VERSION,
    choose_factory,
    file_digest,
    ivf_nlist,
    model_key,
    model_meta,
    new_index,
    normalised,
    to_cpu,
    train_index,
    write_index_files,
)
from .io.atomic import check_output
from .io.parquet import iter_embeddings
from .shards import ShardSet, iter_shard_rows, open_shard_dir

log = logging.getLogger(__name__)

Progress = Callable[[int], None]
#: (trained index file, shard file, its first global row, per-shard index file)
_Job = tuple[str, str, int, str]


def build_sharded_index(
    shard_dir: str | os.PathLike,
    out_path: str | os.PathLike,
    factory: str = "auto",
    *,
    train_sample: int | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    nprobe: int = DEFAULT_NPROBE,
    device: str = "auto",
    seed: int = 0,
    workers: int | None = None,
    ray_address: str | None = None,
    progress: Progress | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Build a FAISS inner-product index over a finished shard folder.

    Args:
        shard_dir: folder with ``manifest.json`` and ``part-NNNNN.parquet`` files.
        out_path: index file to write (``X.faiss``; sidecars, and for IVF types the inverted
            lists ``X.faiss.ivfdata``, next to it).
        factory, train_sample, chunk_rows, nprobe, seed: as for ``index.build_index``.
        device: where training (and a non-IVF index) runs; shards are added on CPUs.
        workers: shards added at once on threads (default: CPU count); each holds a copy of
            the trained quantizer and one shard's codes in memory.
        ray_address: add the shards as Ray tasks on this cluster (``local``: a local instance,
            or ``RAY_ADDRESS``) instead of threads. The folder, the output folder and the
            work folder made beside the output must be on a filesystem all nodes share,
            under the same paths.
        progress: called with the number of rows added (per chunk; per shard with Ray).
        force: replace an existing index.

    Returns:
        The metadata written to ``X.faiss.json``.

    Raises:
        InputError: existing output; no manifest, unfinished or changed shards; mismatched
            shards; bad factory string; too few rows to train. EmmaxError: a Ray task failed.
    """
    out = check_output(out_path, force)
    ss = open_shard_dir(shard_dir)
    _check_shards(ss)
    n, dim = ss.rows, ss.dim
    if n == 0:
        raise InputError(f"{ss.path}: no embeddings to index: all shards are empty")
    factory = choose_factory(n, dim) if factory == "auto" else factory
    index = new_index(factory, dim)
    work, n_train = train_index(
        index, ss.files, train_sample, seed, chunk_rows, faiss_gpu_device(device)
    )
    ondisk: dict[str, Any] = {}
    if ivf_nlist(index) is None:  # (``work`` may be a GPU clone, which faiss cannot inspect)
        ids = _add_in_order(work, ss, chunk_rows, progress)
        index = to_cpu(work)
    else:
        index = to_cpu(work)
        ids, ondisk = _build_ondisk(index, ss, out, chunk_rows, workers, ray_address, progress)
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
        "model": model_meta(ss.meta),
        "sources": [{"path": str(f.path.resolve()), "rows": f.num_rows} for f in ss.files],
        "shard_dir": str(ss.path.resolve()),
        **ondisk,
    }
    write_index_files(out, index, ids, meta)
    return meta


def _check_shards(ss: ShardSet) -> None:
    """All shards of one embedding width and model (a manifest lists one job's shards)."""
    key, model = model_key(ss.meta)
    for f in ss.files:
        if f.dim != ss.dim or f.meta.get(key) != model:
            raise InputError(
                f"{f.path}: embeddings of another model or width than {ss.files[0].path}",
                hint="the shards of a folder come from one `emmax embed --ray` run: rerun it",
            )


def _add_in_order(
    work: Any, ss: ShardSet, chunk_rows: int, progress: Progress | None
) -> np.ndarray:
    """Add every shard's rows, in order, into one index; return their global ids."""
    ids = []
    for batch in iter_shard_rows(ss, chunk_rows):
        work.add(normalised(batch["embedding"]))
        ids.append(batch["id"])
        if progress is not None:
            progress(len(batch["id"]))
    return np.concatenate(ids) if ids else np.zeros(0, np.int64)


def _build_ondisk(
    trained: Any,
    ss: ShardSet,
    out: Path,
    chunk_rows: int,
    workers: int | None,
    ray_address: str | None,
    progress: Progress | None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Add the shards into per-shard copies of ``trained``, then merge them on disk into
    ``trained`` (whose lists become ``X.faiss.ivfdata``). Returns the global ids and the
    metadata keys of the ``.ivfdata`` file."""
    import faiss
    from faiss.contrib.ondisk import merge_ondisk

    work_dir = Path(
        tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".work", dir=out.parent)
    ).resolve()  # absolute: Ray workers run elsewhere
    try:
        trained_path = work_dir / "trained.faiss"
        faiss.write_index(trained, str(trained_path))
        jobs = [
            (str(trained_path), str(f.path.resolve()), first, str(work_dir / f"{i:05d}.faiss"))
            for i, (f, first) in enumerate(zip(ss.files, ss.row_offsets, strict=True))
        ]
        if ray_address is not None:
            shard_ids = _run_ray(jobs, ray_address, chunk_rows, progress)
        else:
            shard_ids = _run_threads(jobs, workers, chunk_rows, progress)
        ids = np.concatenate(
            [i + off for i, off in zip(shard_ids, ss.id_offsets, strict=True)]
            or [np.zeros(0, np.int64)]
        )
        data = work_dir / f"{out.name}.ivfdata"
        with _c_stdout_silenced():  # faiss printf()s "resizing <file> to <n> bytes"
            merge_ondisk(trained, [j[3] for j in jobs], str(data))
        final = out.with_name(data.name)
        os.replace(data, final)
        od = faiss.downcast_InvertedLists(faiss.extract_index_ivf(trained).invlists)
        od.filename = str(final.resolve())  # for plain faiss.read_index users
        meta = {
            "ondisk": final.name,
            "ondisk_bytes": final.stat().st_size,
            "ondisk_blake2b": file_digest(final),
        }
        return ids, meta
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


def _add_shard(
    job: _Job, chunk_rows: int, threads: int | None = None, progress: Progress | None = None
) -> np.ndarray:
    """Add one shard into a copy of the trained index, labelled with its global row numbers;
    write it to the job's per-shard file. Returns the shard's ``id`` column (a thread's or a
    Ray task's work: paths only, nothing shared)."""
    import faiss

    trained_path, shard_path, row, out_path = job
    if threads:
        faiss.omp_set_num_threads(threads)  # this thread's OpenMP team
    index = faiss.read_index(trained_path)
    ids = []
    for batch in iter_embeddings(shard_path, batch_rows=chunk_rows, columns=("id", "embedding")):
        x = normalised(batch["embedding"])
        index.add_with_ids(x, np.arange(row, row + len(x), dtype=np.int64))
        row += len(x)
        ids.append(np.asarray(batch["id"], np.int64))
        if progress is not None:
            progress(len(x))
    faiss.write_index(index, out_path)
    return np.concatenate(ids) if ids else np.zeros(0, np.int64)


def _run_threads(
    jobs: list[_Job], workers: int | None, chunk_rows: int, progress: Progress | None
) -> list[np.ndarray]:
    """Run the shard adds on a thread pool, each thread with its share of the CPUs."""
    import faiss

    cpus = os.cpu_count() or 1
    workers = max(1, min(workers or cpus, len(jobs)))
    lock = threading.Lock()

    def advance(k: int) -> None:
        with lock:
            progress(k)

    saved = faiss.omp_get_max_threads()
    ex = ThreadPoolExecutor(workers, thread_name_prefix="emmax-index")
    try:
        threads, report = max(1, cpus // workers), advance if progress else None
        futures = [ex.submit(_add_shard, j, chunk_rows, threads, report) for j in jobs]
        return [f.result() for f in futures]
    finally:
        ex.shutdown(wait=True, cancel_futures=True)
        faiss.omp_set_num_threads(saved)


def _run_ray(
    jobs: list[_Job], address: str, chunk_rows: int, progress: Progress | None
) -> list[np.ndarray]:
    """Run the shard adds as Ray tasks (one CPU each); report progress per finished shard."""
    from .raycluster import init_ray, task_error

    ray = init_ray(address)
    task = ray.remote(num_cpus=1)(_add_shard)
    refs = {task.remote(j, chunk_rows, 1): i for i, j in enumerate(jobs)}
    results: list[np.ndarray | None] = [None] * len(jobs)
    pending = list(refs)
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            i = refs[done[0]]
            try:
                results[i] = ray.get(done[0])
            except ray.exceptions.RayError as e:
                raise task_error(
                    e,
                    f"{jobs[i][1]}: adding it to the index",
                    hint="check the worker logs (ray logs); the shard folder and the output "
                    "folder must be on a filesystem every node shares",
                ) from None
            if progress is not None:
                progress(len(results[i]))
    finally:
        for ref in pending:
            ray.cancel(ref)
    return results  # type: ignore[return-value]


@contextmanager
def _c_stdout_silenced() -> Iterator[None]:
    """Send C-level writes to stdout (faiss's printf) to /dev/null meanwhile, so stdout carries
    only emmax's own output."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no stdout at all: nothing to protect
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 1)
        yield
    finally:
        ctypes.CDLL(None).fflush(None)  # what printf buffered goes to /dev/null too
        os.dup2(saved, 1)
        os.close(saved)
