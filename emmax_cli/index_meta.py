"""The files beside a FAISS index ``X.faiss``, and the checks that make a damaged one fail loudly.

* ``X.faiss.ids.npy``: (ntotal,) int64, the ``id`` column of each indexed row, in index order.
* ``X.faiss.json``: factory string, dim, metric, normalisation, model, ntotal, training sample
  size, nprobe, the source files with their row counts and (format 2) BLAKE2b checksums of the
  index and ids files. Written last, so an index whose JSON is missing or disagrees with it is
  treated as unfinished.

A flipped byte in an index's vector data is not an error for faiss: the index loads and
searches, and mining returns confident garbage. The checksums catch that at load time; for
indexes without them (format 1) a sample of a Flat index's vectors must have unit norm."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .errors import IndexError_, InputError
from .io.atomic import atomic_output
from .io.parquet import EmbeddingFile, open_embeddings

FORMAT_VERSION = 2  # 2: checksums in the metadata
REBUILD_HINT = "rebuild it with `emmax index`"
_MODEL_KEYS = ("model_checksum", "model_id", "model")  # most to least specific
_NORM_SAMPLE = 1000


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


def check_norms(p: Path, index: Any) -> None:
    """Vectors of a Flat index must have unit norm (build normalises them): check up to
    1000 evenly spaced rows. Quantised indexes reconstruct approximately and are skipped.

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
