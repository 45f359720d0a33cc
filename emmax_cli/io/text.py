"""Read sentences from text files or stdin: gzip transparently, one sentence per line,
in chunks, with line numbers in every decoding error."""

from __future__ import annotations

import gzip
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..errors import InputError

BAD_LINE_POLICIES = ("error", "skip", "replace")


@dataclass
class ReadStats:
    """What a reader saw: lines read, and the line numbers (1-based) it skipped."""

    lines: int = 0
    skipped: list[int] = field(default_factory=list)


def display_name(path: str | os.PathLike) -> str:
    return "<stdin>" if str(path) == "-" else str(path)


def open_binary(path: str | os.PathLike) -> BinaryIO:
    """Open a path (or ``-`` for stdin) for binary reading, gunzipping ``.gz`` or gzip magic."""
    if str(path) == "-":
        raw: BinaryIO = sys.stdin.buffer
    else:
        p = Path(path)
        if not p.exists():
            raise InputError(f"{p}: no such file", hint="check the path")
        if p.is_dir():
            raise InputError(f"{p}: is a directory, not a text file", hint="pass a file")
        raw = open(p, "rb")
    peek = raw.peek(2)[:2] if hasattr(raw, "peek") else b""
    if peek == b"\x1f\x8b" or str(path).endswith(".gz"):
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    return raw


def _decode_lines(
    raw: list[bytes],
    first_lineno: int,
    name: str,
    encoding: str,
    on_bad_line: str,
    stats: ReadStats,
) -> tuple[list[int], list[str]]:
    """Decode a chunk of raw lines; fast path decodes the chunk at once."""
    try:
        texts = b"\n".join(raw).decode(encoding).split("\n")
        if len(texts) == len(raw):
            return list(range(first_lineno, first_lineno + len(raw))), texts
    except UnicodeDecodeError:
        pass
    ids: list[int] = []
    texts = []
    for i, b in enumerate(raw):  # slow path, only for a chunk that holds a bad line
        lineno = first_lineno + i
        try:
            t = b.decode(encoding)
        except UnicodeDecodeError as e:
            if on_bad_line == "error":
                raise InputError(
                    f"{name} line {lineno + 1}: cannot decode as {encoding} ({e.reason} at byte {e.start})",
                    hint="fix the file, or pass --on-bad-line skip|replace",
                ) from None
            if on_bad_line == "skip":
                stats.skipped.append(lineno + 1)
                continue
            t = b.decode(encoding, errors="replace")
        ids.append(lineno)
        texts.append(t)
    return ids, texts


def read_chunks(
    path: str | os.PathLike,
    chunk_lines: int = 16_384,
    on_bad_line: str = "error",
    encoding: str = "utf-8",
    stats: ReadStats | None = None,
    start_line: int = 0,
) -> Iterator[tuple[np.ndarray, list[str]]]:
    """Yield ``(ids, texts)`` chunks: ``ids`` are 0-based input line numbers (int64).

    Every input line yields one entry (skipped lines excepted, see ``on_bad_line``). The
    trailing newline (and a ``\\r`` before it) is stripped; nothing else is. Lines before
    ``start_line`` are read and dropped (used by ``--resume``). Raises ``InputError`` on an
    empty input."""
    if on_bad_line not in BAD_LINE_POLICIES:
        raise InputError(
            f"unknown --on-bad-line {on_bad_line!r}", hint="use error, skip or replace"
        )
    stats = stats if stats is not None else ReadStats()
    name = display_name(path)
    f = open_binary(path)
    try:
        lineno = 0
        buf: list[bytes] = []
        first = 0
        try:
            for line in f:
                if line.endswith(b"\n"):
                    line = line[:-1]
                    if line.endswith(b"\r"):
                        line = line[:-1]
                if lineno >= start_line:
                    if not buf:
                        first = lineno
                    buf.append(line)
                lineno += 1
                if len(buf) >= chunk_lines:
                    ids, texts = _decode_lines(buf, first, name, encoding, on_bad_line, stats)
                    buf = []
                    stats.lines = lineno
                    yield np.asarray(ids, dtype=np.int64), texts
        except (OSError, EOFError, gzip.BadGzipFile) as e:
            raise InputError(
                f"{name}: cannot read ({e})", hint="check that the file is intact"
            ) from None
        if buf:
            ids, texts = _decode_lines(buf, first, name, encoding, on_bad_line, stats)
            yield np.asarray(ids, dtype=np.int64), texts
        stats.lines = lineno
        if lineno == 0:
            raise InputError(
                f"{name}: empty input (no lines)", hint="pass a file with one sentence per line"
            )
    finally:
        if str(path) != "-":
            f.close()


def read_lines(
    path: str | os.PathLike, on_bad_line: str = "error", encoding: str = "utf-8"
) -> list[str]:
    """Read a whole (small) text file into a list of lines, with the same rules as ``read_chunks``."""
    out: list[str] = []
    for _, texts in read_chunks(path, on_bad_line=on_bad_line, encoding=encoding):
        out.extend(texts)
    return out


def count_lines(path: str | os.PathLike) -> int | None:
    """Count lines of a plain file quickly (for a progress total); None for stdin or gzip."""
    if str(path) == "-" or str(path).endswith(".gz"):
        return None
    n = 0
    last = b"\n"
    with open(path, "rb") as f:
        while True:
            block = f.read(1 << 24)
            if not block:
                break
            n += block.count(b"\n")
            last = block[-1:]
    return n + (0 if last == b"\n" else 1)
