"""What an emmax FAISS index is made of, and the checks that make a damaged one fail loudly.

The files beside an index ``X.faiss``:

* ``X.faiss.ids.npy``: (ntotal,) int64, the ``id`` column of each indexed row, in index order.
* ``X.faiss.json``: factory string, dim, metric, normalisation, model, ntotal, training sample
  size, nprobe, the source files with their row counts and (format 2) BLAKE2b checksums of the
  index and ids files. Written last, so an index whose JSON is missing or disagrees with it is
  treated as unfinished.
* ``X.faiss.ivfdata`` (IVF indexes built from a shard folder, :mod:`emmax_cli.index_shards`):
  the inverted lists on disk, mmapped at load; the metadata names it (``ondisk``) with its size
  and BLAKE2b. The size is checked at every load (a short file would crash the process on
  first access), the checksum only for files up to ``ONDISK_VERIFY_MAX`` bytes.

A flipped byte in an index's vector data is not an error for faiss: the index loads and
searches, and mining returns confident garbage. The checksums catch that at load time; for
indexes without them (format 1) a sample of a Flat index's vectors must have unit norm.

Also the building blocks that :mod:`emmax_cli.index` and :mod:`emmax_cli.index_shards` share:
the factory policy, the training sample, normalisation, GPU cloning."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from .errors import IndexError_, InputError
from .io.atomic import atomic_output
from .io.parquet import EmbeddingFile, iter_embeddings, open_embeddings

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: checksums in the metadata
REBUILD_HINT = "rebuild it with `emmax index`"
_MODEL_KEYS = ("model_checksum", "model_id", "model")  # most to least specific
_NORM_SAMPLE = 1000
ONDISK_VERIFY_MAX = 1 << 30  # ivfdata files up to 1 GiB are hashed at every load


def sidecar_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """``(X.faiss.json, X.faiss.ids.npy)`` for index ``X.faiss``."""
    p = Path(path)
    return p.with_name(p.name + ".json"), p.with_name(p.name + ".ids.npy")


def file_digest(path: str | os.PathLike) -> str:
    """BLAKE2b (160 bit) of a file's bytes, read in 4 MiB blocks."""
    h = hashlib.blake2b(digest_size=20)
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def model_key(meta: dict[str, Any]) -> tuple[str, Any]:
    """``(key, value)`` identifying the embedding model: checksum, else id, else name."""
    for key in _MODEL_KEYS:
        if meta.get(key) is not None:
            return key, meta[key]
    return "model", None


def model_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """The ``model*`` keys of an embedding file's metadata (what an index records)."""
    return {key: v for key, v in meta.items() if key.startswith("model")}


def write_index_files(out: Path, index: Any, ids: np.ndarray, meta: dict[str, Any]) -> None:
    """Write ids, index, then metadata with their checksums (last: it marks the set complete),
    each atomically. Adds ``checksums`` and ``format_version`` to ``meta``."""
    import faiss

    meta_path, ids_path = sidecar_paths(out)
    sums = {}
    with atomic_output(ids_path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, np.asarray(ids, np.int64))
        sums["ids"] = file_digest(tmp)
    with atomic_output(out) as tmp:
        faiss.write_index(index, str(tmp))
        sums["index"] = file_digest(tmp)
    meta["format_version"] = FORMAT_VERSION
    meta["checksums"] = {"algorithm": "blake2b-160", **sums}
    with atomic_output(meta_path) as tmp:
        tmp.write_text(json.dumps(meta, indent=2) + "\n")


def read_meta(p: Path) -> dict[str, Any]:
    """Read and sanity-check ``X.faiss.json``; verify the checksums it holds.

    Raises:
        IndexError_: missing or unreadable sidecars, a newer format, or a checksum mismatch.
    """
    meta_path, ids_path = sidecar_paths(p)
    for side in (meta_path, ids_path):
        if not side.exists():
            raise IndexError_(f"{p}: sidecar {side.name} is missing", hint=REBUILD_HINT)
    try:
        meta = json.loads(meta_path.read_text())
        meta["dim"], meta["ntotal"], meta["factory"], meta["sources"]  # noqa: B018
    except (ValueError, KeyError, TypeError) as e:
        raise IndexError_(
            f"{meta_path}: unreadable index metadata ({type(e).__name__}: {e})", hint=REBUILD_HINT
        ) from None
    if int(meta.get("format_version", 1)) > FORMAT_VERSION:
        raise IndexError_(
            f"{p}: index format {meta['format_version']} is newer than this emmax understands",
            hint="upgrade emmax",
        )
    sums = meta.get("checksums")
    if isinstance(sums, dict):
        for key, path in (("ids", ids_path), ("index", p)):
            if sums.get(key) != file_digest(path):
                raise IndexError_(
                    f"index {p} is corrupt (checksum mismatch in {path.name})", hint=REBUILD_HINT
                )
    return meta


def read_ids(ids_path: Path, ntotal: int) -> np.ndarray:
    """The (ntotal,) int64 row ids, refusing pickles, other dtypes and shapes.

    Raises:
        IndexError_: the file is not a 1-D integer array of ``ntotal`` entries.
    """
    what = f"{ids_path}: not a row-id file written by emmax index"
    try:
        ids = np.load(ids_path, allow_pickle=False)
    except (ValueError, OSError, EOFError):  # numpy says "pickled data" for any garbage
        raise IndexError_(f"{what} (unreadable)", hint=REBUILD_HINT) from None
    if not isinstance(ids, np.ndarray) or ids.ndim != 1 or ids.dtype.kind not in "iu":
        shape = getattr(ids, "shape", "?")
        raise IndexError_(
            f"{what} (dtype {getattr(ids, 'dtype', '?')}, shape {shape})", hint=REBUILD_HINT
        )
    if len(ids) != ntotal:
        raise IndexError_(
            f"{ids_path}: {len(ids)} row ids, but the index and metadata say {ntotal}; "
            "index, ids and metadata disagree",
            hint=REBUILD_HINT,
        )
    return ids.astype(np.int64, copy=False)


def ondisk_data(p: Path, meta: dict[str, Any]) -> Path | None:
    """The ``X.faiss.ivfdata`` file of an on-disk index (None for an index in one file),
    checked: present, of the recorded size, and (up to ``ONDISK_VERIFY_MAX`` bytes) of the
    recorded BLAKE2b.

    Raises:
        IndexError_: missing, truncated, grown or changed inverted-lists file.
    """
    name = meta.get("ondisk")
    if not name:
        return None
    if not isinstance(name, str) or Path(name).name != name:
        raise IndexError_(f"{p}: bad on-disk data name {name!r} in the metadata", hint=REBUILD_HINT)
    data = p.with_name(name)
    try:
        size = data.stat().st_size
    except OSError:
        raise IndexError_(
            f"{p}: its inverted lists {name} are missing (they stay beside the index: move "
            "both files together)",
            hint=REBUILD_HINT,
        ) from None
    if size != meta.get("ondisk_bytes"):
        raise IndexError_(
            f"index {p} is corrupt ({name} has {size} bytes, not {meta.get('ondisk_bytes')})",
            hint=REBUILD_HINT,
        )
    digest = meta.get("ondisk_blake2b")
    if digest and size <= ONDISK_VERIFY_MAX and file_digest(data) != digest:
        raise IndexError_(f"index {p} is corrupt (checksum mismatch in {name})", hint=REBUILD_HINT)
    return data


def read_faiss(p: Path, meta: dict[str, Any]) -> Any:
    """Read the FAISS index of ``p`` (after :func:`read_meta`). An on-disk index's inverted
    lists are mmapped read-only from beside ``p``, whatever the working directory and wherever
    the folder was moved: RAM holds only the quantizer.

    Raises:
        IndexError_: unreadable index, or bad on-disk data (see :func:`ondisk_data`).
    """
    import faiss

    data = ondisk_data(p, meta)
    try:
        if data is None:
            return faiss.read_index(str(p))
        # not IO_FLAG_ONDISK_SAME_DIR: faiss printf()s the new file name to stdout with it
        index = faiss.read_index(str(p), faiss.IO_FLAG_SKIP_IVF_DATA | faiss.IO_FLAG_READ_ONLY)
        od = faiss.downcast_InvertedLists(faiss.extract_index_ivf(index).invlists)
        if not isinstance(od, faiss.OnDiskInvertedLists) or od.totsize != data.stat().st_size:
            raise IndexError_(
                f"index {p} and its inverted lists {data.name} disagree", hint=REBUILD_HINT
            )
        od.filename = str(data)
        od.do_mmap()
        return index
    except (RuntimeError, MemoryError) as e:
        raise IndexError_(
            f"{p}: cannot read the FAISS index ({faiss_message(e)})", hint=REBUILD_HINT
        ) from None


def check_norms(p: Path, index: Any) -> None:
    """Vectors of a Flat index must have unit norm (build normalises them): check up to
    1000 evenly spaced rows. Quantised and IVF indexes are skipped (so an on-disk index's
    lists are never read here).

    Raises:
        IndexError_: a sampled vector is not finite or not of norm 1 (within 1e-2).
    """
    import faiss

    flat = faiss.downcast_index(index)
    if not isinstance(flat, faiss.IndexFlat) or index.ntotal == 0:
        return
    rows = np.unique(np.linspace(0, index.ntotal - 1, min(_NORM_SAMPLE, index.ntotal)))
    vecs = flat.reconstruct_batch(rows.astype(np.int64))
    norms = np.linalg.norm(vecs.astype(np.float64), axis=1)
    bad = ~np.isfinite(norms) | (np.abs(norms - 1) > 1e-2)
    if bad.any():
        raise IndexError_(
            f"index {p} is corrupt (row {int(rows[bad][0])} has norm {norms[bad][0]:.4g}, "
            "but its vectors are normalised)",
            hint=REBUILD_HINT,
        )


def check_sources(p: Path, meta: dict[str, Any]) -> list[EmbeddingFile]:
    """Open the embedding files an index was built from (footers only) and check their row
    counts: mining reads text and ids from them.

    Raises:
        InputError: a source file is missing, unreadable or has another number of rows.
    """
    files = []
    for s in meta["sources"]:
        src = Path(s["path"])
        if not src.exists():
            raise InputError(
                f"index {p} refers to its source file {src}, which is missing",
                hint="move it back or rebuild the index",
            )
        f = open_embeddings(src)
        if f.num_rows != s["rows"]:
            raise InputError(
                f"index {p} refers to its source file {src}, which now has {f.num_rows} "
                f"rows, not {s['rows']}",
                hint="restore that file or rebuild the index",
            )
        files.append(f)
    return files


# ---- building blocks shared by index.py and index_shards.py ----------------------------
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


def new_index(factory: str, dim: int) -> Any:
    """An empty inner-product index of a factory string.

    Raises:
        InputError: faiss does not understand the factory string for this dim.
    """
    import faiss

    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise InputError(
            f"invalid FAISS factory string {factory!r} for dimension {dim} ({faiss_message(e)})",
            hint="try 'auto', 'Flat' or e.g. 'IVF1024,PQ64' (PQ m must divide dim)",
        ) from None
    # The factory turns on polysemous training for IVF-PQ: a reordering of the PQ centroids
    # for Hamming pre-filtering, which emmax never uses (polysemous_ht stays 0) and which
    # made training 4.9x slower (IVF256,PQ64 on 16k x 384: 157 s against 32 s, 2 threads).
    try:
        ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    except RuntimeError:  # not an IVF index
        return index
    if hasattr(ivf, "do_polysemous_training"):
        ivf.do_polysemous_training = False
    return index


def faiss_message(e: Exception) -> str:
    """The useful part of a faiss C++ exception, on one line."""
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return msg.rsplit("Error: ", 1)[-1].strip()


def ivf_nlist(index: Any) -> int | None:
    """Number of IVF lists, or None for an index without inverted lists."""
    import faiss

    try:
        return int(faiss.extract_index_ivf(index).nlist)
    except RuntimeError:
        return None


def to_device(index: Any, gpu: int | None) -> Any:
    """Clone to GPU (fp16, as stopes trains) when asked; fall back to CPU if faiss refuses."""
    if gpu is None:
        return index
    import faiss

    opts = faiss.GpuClonerOptions()
    opts.useFloat16 = True
    try:
        return faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), gpu, index, opts)
    except RuntimeError as e:
        log.warning("index type not supported on GPU (%s); using the CPU", faiss_message(e))
        return index


def to_cpu(index: Any) -> Any:
    """The CPU version of an index that :func:`to_device` may have moved to a GPU."""
    import faiss

    return faiss.index_gpu_to_cpu(index) if "Gpu" in type(index).__name__ else index


def normalised(emb: np.ndarray) -> np.ndarray:
    """A float32 C-contiguous L2-normalised copy."""
    import faiss

    x = np.array(emb, dtype=np.float32, order="C", copy=True)
    faiss.normalize_L2(x)
    return x


def sample_rows(
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


def train_rows(index: Any, n: int, train_sample: int | None) -> int:
    """Training sample size: k-means keeps at most 256 points per centroid (faiss default
    max_points_per_centroid) and PQ codebooks 256 x 256, so more rows only cost memory."""
    nlist = ivf_nlist(index) or 0
    size = train_sample if train_sample is not None else min(MAX_TRAIN_ROWS, 256 * max(nlist, 256))
    size = min(int(size), n)
    if size < max(nlist, 1):
        raise InputError(
            f"{n} vectors are too few to train an index with {nlist} lists"
            f" (training sample: {size})",
            hint="use --index Flat or a smaller IVF, or a larger --train-sample",
        )
    return size


def train_index(
    index: Any,
    files: list[EmbeddingFile],
    train_sample: int | None,
    seed: int,
    chunk_rows: int,
    gpu: int | None,
) -> tuple[Any, int]:
    """Train an untrained index on a sample of all rows of ``files`` (in order).

    Returns:
        ``(index, rows trained on)``: the trained index, on the GPU ``gpu`` if it could be
        moved there (0 rows for an index that needs no training).
    """
    work = to_device(index, gpu)
    if index.is_trained:
        return work, 0
    n = sum(f.num_rows for f in files)
    size = train_rows(index, n, train_sample)
    log.info("training on %d of %d vectors", size, n)
    sample = sample_rows(files, n, size, seed, chunk_rows)
    work.train(sample)
    return work, size
