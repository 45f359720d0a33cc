"""Read sentences from text files or stdin: gzip transparently, one sentence per line,
in chunks, with line numbers in every decoding error.

ASCII-compatible encodings (UTF-8, Latin-1, ...) are split on the byte ``\\n`` and decoded a
chunk at a time (the fast path). Encodings in which ``\\n`` is not the byte 0x0A (UTF-16,
UTF-32, EBCDIC) are decoded as a stream with an incremental decoder and split on the decoded
character. A byte-order mark at the start of the input is dropped in both."""

from __future__ import annotations

import codecs
import gzip
import hashlib
import io
import os
import stat
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..errors import InputError

BAD_LINE_POLICIES = ("error", "skip", "replace")
_BAD_LINE_HINT = "fix the file, or pass --on-bad-line skip|replace"
#: Exceptions a damaged gzip stream raises while it is read.
READ_ERRORS = (OSError, EOFError, zlib.error)
# Stream decoding marks undecodable bytes with a lone surrogate: no valid decode yields one.
_MARK = "\udcff"
_MARK_HANDLER = "emmax-mark-bad-bytes"
codecs.register_error(_MARK_HANDLER, lambda e: (_MARK, e.end))


@dataclass
class ReadStats:
    """What a reader saw: lines read, and the line numbers (1-based) it skipped."""

    lines: int = 0
    skipped: list[int] = field(default_factory=list)


def display_name(path: str | os.PathLike) -> str:
    """``<stdin>`` for ``-``, else the path as given."""
    return "<stdin>" if str(path) == "-" else str(path)


def check_encoding(encoding: str) -> str:
    """The codec's canonical name; InputError for an unknown encoding."""
    try:
        return codecs.lookup(encoding).name
    except LookupError:
        raise InputError(
            f"unknown encoding {encoding!r}", hint="pass e.g. --encoding utf-8, latin-1, utf-16"
        ) from None


def splits_on_newline_byte(encoding: str) -> bool:
    """True if lines of ``encoding`` can be cut on the byte 0x0A before decoding."""
    name = check_encoding(encoding)
    if name.startswith(("utf-16", "utf-32")):
        return False
    try:
        return "\n\r".encode(name) == b"\n\r"
    except (UnicodeError, LookupError):
        return False


def sniff_wide_encoding(head: bytes) -> str | None:
    """``"utf-16"`` / ``"utf-32"`` if the first bytes of a file look like it, else None.

    A byte-order mark decides; without one, text with NUL in a quarter of its bytes is taken
    for UTF-16 (ASCII text in UTF-16 has NUL in every other byte; real UTF-8 text has none)."""
    if head.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        return "utf-32"
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    if len(head) >= 4 and head.count(0) * 4 >= len(head):
        return "utf-16"
    return None


def _check_not_wide(head: bytes, name: str, encoding: str) -> None:
    wide = sniff_wide_encoding(head)
    if wide and splits_on_newline_byte(encoding):
        what = "a byte-order mark" if head[:2] in (b"\xff\xfe", b"\xfe\xff") else "NUL bytes"
        raise InputError(
            f"{name}: looks like {wide.upper()} ({what}), not {encoding}",
            hint=f"pass --encoding {wide}",
        )


def open_binary(path: str | os.PathLike) -> BinaryIO:
    """Open a path (or ``-`` for stdin) for binary reading, gunzipping ``.gz`` or gzip magic.

    Raises:
        InputError: no such file, a folder, or unreadable.
    """
    if str(path) == "-":
        raw: BinaryIO = sys.stdin.buffer
    else:
        p = Path(path)
        if not p.exists():
            raise InputError(f"{p}: no such file", hint="check the path")
        if p.is_dir():
            raise InputError(f"{p}: is a directory, not a text file", hint="pass a file")
        try:
            raw = open(p, "rb")
        except OSError as e:
            raise InputError(f"{p}: cannot open ({e.strerror})", hint="check the path") from None
    if not hasattr(raw, "peek"):
        raw = io.BufferedReader(raw)  # type: ignore[arg-type]
    peek = raw.peek(2)[:2]  # type: ignore[attr-defined]
    if peek == b"\x1f\x8b" or str(path).endswith(".gz"):
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    return raw


def _peek(f: BinaryIO, n: int = 4096) -> bytes:
    return f.peek(n)[:n] if hasattr(f, "peek") else b""  # type: ignore[attr-defined]


def check_text_input(path: str | os.PathLike, encoding: str = "utf-8") -> None:
    """Cheap checks on an input before expensive work: it exists, is not a folder, its gzip
    header (if any) and first block are readable, and it does not look like UTF-16/32 read
    as a byte encoding. Pipes and stdin are only checked for existence (nothing is consumed).

    Raises:
        InputError: with the file name and a hint.
    """
    check_encoding(encoding)
    if str(path) == "-":
        return
    p = Path(path)
    if p.exists() and not p.is_dir() and not p.is_file():
        return  # a FIFO or device: reading ahead would consume it
    f = open_binary(p)
    try:
        try:
            head = _peek(f)
        except READ_ERRORS as e:
            raise _read_error(display_name(path), f, e) from None
        _check_not_wide(head, display_name(path), encoding)
    finally:
        f.close()


def _read_error(name: str, f: BinaryIO, e: BaseException) -> InputError:
    if isinstance(f, gzip.GzipFile):
        return InputError(
            f"{name}: corrupt or truncated gzip data ({e or type(e).__name__})",
            hint="check the file with gzip -t, or fetch it again",
        )
    return InputError(f"{name}: cannot read ({e})", hint="check that the file is intact")


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
                    f"{name} line {lineno + 1}: cannot decode as {encoding} "
                    f"({e.reason} at byte {e.start})",
                    hint=_BAD_LINE_HINT,
                ) from None
            if on_bad_line == "skip":
                stats.skipped.append(lineno + 1)
                continue
            t = b.decode(encoding, errors="replace")
        ids.append(lineno)
        texts.append(t)
    return ids, texts


def _byte_lines(f: BinaryIO) -> Iterator[bytes]:
    for line in f:
        if line.endswith(b"\n"):
            line = line[:-1]
            if line.endswith(b"\r"):
                line = line[:-1]
        yield line


def _stream_lines(f: BinaryIO, encoding: str) -> Iterator[str]:
    """Decode the whole stream incrementally and split on the character ``\\n``."""
    dec = codecs.getincrementaldecoder(encoding)(errors=_MARK_HANDLER)
    pending = ""
    while True:
        block = f.read(1 << 20)
        parts = (pending + dec.decode(block, final=not block)).split("\n")
        pending = parts.pop()
        for line in parts:
            yield line[:-1] if line.endswith("\r") else line
        if not block:
            break
    if pending:
        yield pending[:-1] if pending.endswith("\r") else pending


def _check_stream_chunk(
    buf: list[str], first: int, name: str, encoding: str, on_bad_line: str, stats: ReadStats
) -> tuple[list[int], list[str]]:
    ids, texts = [], []
    for i, t in enumerate(buf):
        lineno = first + i
        if _MARK in t:
            if on_bad_line == "error":
                raise InputError(
                    f"{name} line {lineno + 1}: cannot decode as {encoding} "
                    f"(invalid data at character {t.index(_MARK)})",
                    hint=_BAD_LINE_HINT,
                )
            if on_bad_line == "skip":
                stats.skipped.append(lineno + 1)
                continue
            t = t.replace(_MARK, "\ufffd")
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
    *,
    end_line: int | None = None,
    start_byte: int | None = None,
) -> Iterator[tuple[np.ndarray, list[str]]]:
    """Yield ``(ids, texts)`` chunks: ``ids`` are 0-based input line numbers (int64).

    Every input line yields one entry (skipped lines excepted, see ``on_bad_line``). The
    trailing newline (and a ``\\r`` before it) is stripped, and a byte-order mark at the start
    of the input; nothing else is. Lines before ``start_line`` are read and dropped, unless
    ``start_byte`` (the byte offset where line ``start_line`` starts, for encodings that split
    on the byte ``\\n``) lets the reader seek there. Reading stops before ``end_line``.

    Raises:
        InputError: empty, unreadable (e.g. corrupt gzip) or undecodable input, an unknown
            encoding, or a UTF-16/32 file read with a byte encoding; all name the file.
    """
    if on_bad_line not in BAD_LINE_POLICIES:
        raise InputError(
            f"unknown --on-bad-line {on_bad_line!r}", hint="use error, skip or replace"
        )
    if chunk_lines < 1:
        raise InputError(f"chunk size must be at least 1 line, got {chunk_lines}")
    byte_path = splits_on_newline_byte(encoding)
    # the BOM is dropped from the first line below, so utf-8-sig decodes as utf-8
    codec = "utf-8" if check_encoding(encoding) == "utf-8-sig" else encoding
    stats = stats if stats is not None else ReadStats()
    name = display_name(path)
    f = open_binary(path)
    try:
        lineno = 0
        buf: list = []
        first = 0

        def decode(buf: list, first: int) -> tuple[list[int], list[str]]:
            if byte_path:
                ids, texts = _decode_lines(buf, first, name, codec, on_bad_line, stats)
            else:
                ids, texts = _check_stream_chunk(buf, first, name, encoding, on_bad_line, stats)
            if first == 0 and ids and ids[0] == 0 and texts[0].startswith("\ufeff"):
                texts[0] = texts[0][1:]
            return ids, texts

        try:
            if byte_path:
                _check_not_wide(_peek(f), name, encoding)
            if start_byte and byte_path:
                f.seek(start_byte)
                lineno = start_line
            lines = _byte_lines(f) if byte_path else _stream_lines(f, codec)
            for line in lines:
                if end_line is not None and lineno >= end_line:
                    break
                if lineno >= start_line:
                    if not buf:
                        first = lineno
                    buf.append(line)
                lineno += 1
                if len(buf) >= chunk_lines:
                    ids, texts = decode(buf, first)
                    buf = []
                    stats.lines = lineno
                    yield np.asarray(ids, dtype=np.int64), texts
        except READ_ERRORS as e:
            raise _read_error(name, f, e) from None
        if buf:
            ids, texts = decode(buf, first)
            yield np.asarray(ids, dtype=np.int64), texts
        stats.lines = lineno
        if lineno == 0 and end_line != 0:
            raise InputError(
                f"{name}: empty input (no lines)", hint="pass a file with one sentence per line"
            )
    finally:
        if str(path) != "-":
            f.close()


def read_lines(
    path: str | os.PathLike, on_bad_line: str = "error", encoding: str = "utf-8"
) -> list[str]:
    """Read a whole (small) text file into a list of lines, with the rules of ``read_chunks``."""
    out: list[str] = []
    for _, texts in read_chunks(path, on_bad_line=on_bad_line, encoding=encoding):
        out.extend(texts)
    return out


def is_regular_file(path: str | os.PathLike) -> bool:
    """True for a regular file (after links); False for ``-``, pipes, devices, folders."""
    if str(path) == "-":
        return False
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


@dataclass
class FileScan:
    """One read pass over a file: its line count (None for gzip) and content digest."""

    lines: int | None
    size: int
    mtime_ns: int
    digest: str
    line_starts: list[int] | None = None  # byte offsets of lines 0, L, 2L, ... (``mark_every``)


def scan_file(
    path: str | os.PathLike, count: bool = True, mark_every: int | None = None
) -> FileScan:
    """Hash a regular file's bytes (BLAKE2b) and count its lines, in one streamed pass.

    With ``mark_every`` L (and ``count``), also record the byte offset where each L-th line
    starts (lines 0, L, 2L, ...; none at the very end), for readers that seek there. gzip
    files are neither counted nor marked.

    Raises:
        InputError: not a regular file, or unreadable.
    """
    if not is_regular_file(path):
        raise InputError(f"{display_name(path)}: not a regular file")
    h = hashlib.blake2b(digest_size=20)
    n, pos, last, gz = 0, 0, b"\n", None
    starts = [0] if mark_every else None
    try:
        st = os.stat(path)
        with open(path, "rb") as f:
            while block := f.read(1 << 22):
                if gz is None:  # gzip by magic, as open_binary decides
                    gz = block[:2] == b"\x1f\x8b" or str(path).endswith(".gz")
                h.update(block)
                if count and not gz:
                    if starts is not None:
                        nl = np.flatnonzero(np.frombuffer(block, np.uint8) == 10)
                        # line n + j + 1 starts after this block's j-th newline
                        first = (-(n + 1)) % mark_every  # first j with (n + j + 1) % L == 0
                        starts.extend((pos + nl[first::mark_every] + 1).tolist())
                        n += len(nl)
                    else:
                        n += block.count(b"\n")
                pos += len(block)
                last = block[-1:]
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror})") from None
    lines = None if (gz or not count) else n + (0 if last == b"\n" else 1)
    if starts is not None and not gz:
        starts = [s for s in starts if s < pos] or [0]
    return FileScan(lines, st.st_size, st.st_mtime_ns, h.hexdigest(), None if gz else starts)


def count_lines(path: str | os.PathLike) -> int | None:
    """Count lines of a plain file quickly (for a progress total); None for stdin, pipes,
    devices and gzip (counting those would consume or decompress them)."""
    if str(path).endswith(".gz") or not is_regular_file(path):
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
