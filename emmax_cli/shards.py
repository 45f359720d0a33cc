"""Sharded embedding folders: what ``emmax embed --ray`` writes, ``emmax index`` and
``emmax mine`` read.

A folder holds ``part-NNNNN.parquet`` files (embedding Parquet, as ``emmax embed`` writes)
and ``manifest.json``::

    {"format": "emmax-shards", "version": 1, "job": {model, precision, options},
     "inputs": [{"path", "size", "mtime_ns", "blake2b", "lines"}],
     "shards": [{"name", "input", "start_line", "end_line", "start_byte",
                 "done", "rows", "lines", "bytes", "blake2b"}]}

A shard is a line range ``[start_line, end_line)`` of one input (``end_line`` None: to the
end); its ``id`` column holds the input's 0-based line numbers, so the shards of one input,
in order, hold exactly the rows a single ``emmax embed`` of that input writes. Read as one
side, the rows of several inputs are numbered as if the inputs were concatenated in manifest
order (``cat a.txt b.txt``): an input's ids are offset by the lines of the inputs before it.

Shard boundaries are multiples of the embedding window (``chunk_lines``), so a shard is
embedded in the same length-sorted windows as a single-process run."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError
from .index_meta import file_digest
from .io.atomic import atomic_output
from .io.parquet import EmbeddingFile, iter_embeddings, open_embeddings, read_embeddings
from .io.text import is_regular_file, scan_file

MANIFEST = "manifest.json"
FORMAT = "emmax-shards"
VERSION = 1
DEFAULT_SHARD_LINES = 262_144
_REBUILD = "rerun `emmax embed --ray` with the same inputs to finish or rebuild it"


def shard_name(i: int) -> str:
    """``part-00007.parquet`` for shard 7."""
    return f"part-{i:05d}.parquet"


def is_shard_dir(path: str | os.PathLike) -> bool:
    """True for a folder with a ``manifest.json`` (what ``embed --ray`` writes)."""
    p = Path(path)
    return p.is_dir() and (p / MANIFEST).is_file()


def scan_input(path: str | os.PathLike, shard_lines: int) -> tuple[dict, list[tuple]]:
    """One read pass over a text file: its fingerprint and line count, and the line ranges
    of its shards with the byte offset where each starts.

    gzip inputs cannot be entered at a byte offset: each is one shard.

    Returns:
        ``(input_state, [(start_line, end_line, start_byte), ...])``.

    Raises:
        InputError: not a regular file, or unreadable.
    """
    if not is_regular_file(path):
        raise InputError(
            f"{path}: not a regular file", hint="--ray reads regular files (not stdin or pipes)"
        )
    scan = scan_file(path, mark_every=shard_lines)
    state = {
        "path": os.path.realpath(path),
        "size": scan.size,
        "mtime_ns": scan.mtime_ns,
        "blake2b": scan.digest,
        "lines": scan.lines,
    }
    if scan.line_starts is None:  # gzip
        return state, [(0, None, None)]
    ranges = []
    for i, b in enumerate(scan.line_starts):
        end = (i + 1) * shard_lines if i + 1 < len(scan.line_starts) else scan.lines
        ranges.append((i * shard_lines, end, b))
    return state, ranges


def plan_manifest(
    inputs: Sequence[str | os.PathLike], shard_lines: int, job: dict[str, Any]
) -> dict[str, Any]:
    """A new manifest: every input scanned and cut into shards, none done."""
    states, shards = [], []
    for i, inp in enumerate(inputs):
        state, ranges = scan_input(inp, shard_lines)
        states.append(state)
        for start, end, byte in ranges:
            shards.append(
                {
                    "name": shard_name(len(shards)),
                    "input": i,
                    "start_line": start,
                    "end_line": end,
                    "start_byte": byte,
                    "done": False,
                }
            )
    return {
        "format": FORMAT,
        "version": VERSION,
        "job": {**job, "shard_lines": shard_lines},
        "inputs": states,
        "shards": shards,
    }


def read_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    """Read and check ``manifest.json``.

    Raises:
        InputError: missing, unreadable or not an emmax shard manifest.
    """
    p = Path(folder) / MANIFEST
    try:
        m = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(
            f"{folder}: no {MANIFEST}", hint="pass a folder written by `emmax embed --ray`"
        ) from None
    except (OSError, ValueError) as e:
        raise InputError(f"{p}: unreadable manifest ({e})", hint=_REBUILD) from None
    if (
        not isinstance(m, dict)
        or m.get("format") != FORMAT
        or not isinstance(m.get("shards"), list)
    ):
        raise InputError(f"{p}: not an emmax shard manifest", hint=_REBUILD)
    if m.get("version") != VERSION:
        raise InputError(
            f"{p}: shard format version {m.get('version')}, this emmax reads {VERSION}",
            hint=_REBUILD,
        )
    return m


def write_manifest(folder: str | os.PathLike, manifest: dict[str, Any]) -> None:
    """Write ``manifest.json`` atomically."""
    with atomic_output(Path(folder) / MANIFEST) as tmp:
        Path(tmp).write_text(json.dumps(manifest, indent=1), encoding="utf-8")


def shard_ok(folder: Path, shard: dict[str, Any], verify: bool = True) -> bool:
    """A done shard whose file is there with its recorded size (and hash, with ``verify``)."""
    if not shard.get("done"):
        return False
    p = folder / shard["name"]
    try:
        if p.stat().st_size != shard.get("bytes"):
            return False
    except OSError:
        return False
    return not verify or file_digest(p) == shard.get("blake2b")


@dataclass
class ShardSet:
    """An opened, finished shard folder: its files in order and each one's id offset."""

    path: Path
    manifest: dict[str, Any]
    files: list[EmbeddingFile]
    id_offsets: list[int]  # added to each shard's ids: the lines of the inputs before it

    @property
    def rows(self) -> int:
        """Rows of all shards."""
        return sum(f.num_rows for f in self.files)

    @property
    def dim(self) -> int:
        """Embedding width."""
        return self.files[0].dim

    @property
    def meta(self) -> dict[str, Any]:
        """The first shard's emmax metadata (model, lang, ...)."""
        return self.files[0].meta

    @property
    def row_offsets(self) -> list[int]:
        """Global row number of each shard's first row."""
        return np.concatenate([[0], np.cumsum([f.num_rows for f in self.files])[:-1]]).tolist()


def open_shard_dir(folder: str | os.PathLike, verify: bool = False) -> ShardSet:
    """Open a finished shard folder (metadata only).

    Args:
        verify: also check every shard's BLAKE2b against the manifest (reads every byte).

    Raises:
        InputError: no manifest, unfinished or missing shards, changed shard files.
    """
    p = Path(folder)
    m = read_manifest(p)
    shards = m["shards"]
    if not shards:
        raise InputError(f"{p}: the manifest lists no shards", hint=_REBUILD)
    todo = [s["name"] for s in shards if not s.get("done")]
    if todo:
        raise InputError(
            f"{p}: {len(todo)} of {len(shards)} shards are not finished ({todo[0]}, ...)",
            hint=_REBUILD,
        )
    files = []
    for s in shards:
        if not shard_ok(p, s, verify):
            raise InputError(
                f"{p / s['name']}: missing or changed since it was written", hint=_REBUILD
            )
        files.append(open_embeddings(p / s["name"]))
    # an input's line count: its last shard's end, else the lines its shards read (gzip)
    lines = [0] * len(m["inputs"])
    for s in shards:
        lines[s["input"]] = max(lines[s["input"]], s["end_line"] or s.get("lines") or 0)
    before = np.concatenate([[0], np.cumsum(lines)[:-1]]).astype(int).tolist()
    return ShardSet(p, m, files, [before[s["input"]] for s in shards])


def iter_shard_rows(
    ss: ShardSet, batch_rows: int = 65_536, with_text: bool = False
) -> Iterator[dict[str, Any]]:
    """Batches of ``{"id": global ids, "embedding": ..., ["text"]}`` over all shards, in order."""
    cols = ("id", "embedding", "text") if with_text else ("id", "embedding")
    for f, off in zip(ss.files, ss.id_offsets, strict=True):
        for b in iter_embeddings(f.path, batch_rows=batch_rows, columns=cols):
            b["id"] = np.asarray(b["id"], np.int64) + off
            yield b


def read_shard_dir(
    folder: str | os.PathLike, with_text: bool = True
) -> tuple[np.ndarray, np.ndarray, list[str] | None, dict[str, Any]]:
    """All rows of a finished shard folder: ``(ids, embeddings, texts, meta)``, as
    ``io.parquet.read_embeddings`` returns for one file (ids global, see the module doc)."""
    ss = open_shard_dir(folder)
    parts = [read_embeddings(f.path, with_text=with_text) for f in ss.files]
    ids = np.concatenate([p[0] + off for p, off in zip(parts, ss.id_offsets, strict=True)])
    emb = np.concatenate([p[1] for p in parts])
    texts = None if any(p[2] is None for p in parts) else [t for p in parts for t in p[2]]
    return ids, emb, texts, ss.meta
