"""emmax_cli.io: text decoding (UTF-16/32, BOMs, damaged gzip), special output files, and
embedding Parquet files as other tools read them."""

from __future__ import annotations

import gzip
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import FifoReader

from emmax_cli.errors import InputError
from emmax_cli.io.atomic import atomic_output, check_output
from emmax_cli.io.parquet import EmbeddingWriter, read_embeddings
from emmax_cli.io.text import (
    ReadStats,
    check_text_input,
    count_lines,
    read_chunks,
    read_lines,
    scan_file,
)

# U+010A and U+0A0A hold the byte 0x0A in UTF-16; a byte split would cut them in two
LINES = ["Guten Morgen.", "Ċa va", "ਊ ਊ", "", "the cat", "日本語の文", "x\u2028y", "last"]


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32"])
def test_wide_encodings_split_on_decoded_newlines(tmp_path, encoding):
    src = tmp_path / "w.txt"
    src.write_bytes(("\r\n".join(LINES) + "\r\n").encode(encoding))
    assert read_lines(src, encoding=encoding) == LINES
    chunks = list(read_chunks(src, chunk_lines=3, encoding=encoding))
    assert [c[0].tolist() for c in chunks] == [[0, 1, 2], [3, 4, 5], [6, 7]]


def test_wide_encoding_bad_bytes_by_policy(tmp_path):
    src = tmp_path / "w.txt"
    good = "a\nb\n".encode("utf-16-le")
    src.write_bytes(good + b"\x00\xd8" + "c\nd\n".encode("utf-16-le"))  # lone surrogate
    with pytest.raises(InputError, match=r"w\.txt line 3: cannot decode as utf-16-le"):
        read_lines(src, encoding="utf-16-le")
    stats = ReadStats()
    ids = [
        i
        for c, _ in read_chunks(src, encoding="utf-16-le", on_bad_line="skip", stats=stats)
        for i in c.tolist()
    ]
    assert ids == [0, 1, 3] and stats.skipped == [3]
    assert read_lines(src, encoding="utf-16-le", on_bad_line="replace")[2] == "\ufffdc"


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be"])
def test_utf16_read_as_utf8_names_the_encoding(tmp_path, encoding):
    src = tmp_path / "w.txt"
    src.write_bytes(("\n".join(LINES) + "\n").encode(encoding))
    for policy in ("error", "skip", "replace"):  # never garbage rows, whatever the policy
        with pytest.raises(InputError) as e:
            read_lines(src, on_bad_line=policy)
        assert "looks like UTF-16" in str(e.value) and e.value.hint == "pass --encoding utf-16"
    with pytest.raises(InputError, match="--encoding utf-16"):
        check_text_input(src)  # the cheap check before a model loads says the same
    check_text_input(src, encoding)


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16"])
def test_bom_dropped_from_first_line_only(tmp_path, encoding):
    src = tmp_path / "b.txt"
    body = "\ufeffhello\n\ufeffinner\n"
    src.write_bytes(body.encode("utf-8") if encoding != "utf-16" else body.encode(encoding))
    assert read_lines(src, encoding=encoding) == ["hello", "\ufeffinner"]


def test_latin1_keeps_bom_bytes(tmp_path):
    src = tmp_path / "l.txt"
    src.write_bytes(b"\xef\xbb\xbfcaf\xe9\n")
    assert read_lines(src, encoding="latin-1") == ["\xef\xbb\xbfcaf\xe9"]


def test_unknown_encoding(tmp_path):
    src = tmp_path / "a.txt"
    src.write_text("a\n")
    with pytest.raises(InputError, match="unknown encoding 'klingon'"):
        read_lines(src, encoding="klingon")


def gz_bytes(n=3000):
    return gzip.compress("".join(f"sentence number {i}\n" for i in range(n)).encode())


@pytest.mark.parametrize("damage", ["truncated", "flipped", "not-gzip", "bad-header"])
def test_damaged_gzip_is_one_input_error(tmp_path, damage):
    data = gz_bytes()
    if damage == "truncated":  # EOFError
        data = data[: len(data) * 2 // 3]
    elif damage == "flipped":  # zlib.error or a CRC mismatch
        data = data[:100] + bytes(b ^ 0x5A for b in data[100:400]) + data[400:]
    elif damage == "not-gzip":  # gzip.BadGzipFile from the .gz name
        data = b"plain text\n" * 10
    else:
        data = b"\x1f\x8b\x09" + data[3:]  # unknown compression method
    src = tmp_path / "c.txt.gz"
    src.write_bytes(data)
    with pytest.raises(InputError) as e:
        for _ in read_chunks(src, chunk_lines=100):
            pass
    msg = str(e.value)
    assert msg.startswith(f"{src}: ") and "\n" not in msg
    if damage != "not-gzip":
        assert "corrupt or truncated gzip data" in msg


def test_fifo_input_is_not_consumed_by_counting_or_checks(tmp_path):
    fifo = tmp_path / "in.fifo"
    os.mkfifo(fifo)
    assert count_lines(fifo) is None  # would block or eat the data if it read
    check_text_input(fifo)
    with pytest.raises(InputError, match="not a regular file"):
        scan_file(fifo)


def test_scan_file_hash_sees_same_length_rewrite(tmp_path):
    src = tmp_path / "a.txt"
    src.write_text("the cat\nthe dog\n")
    a = scan_file(src)
    st = src.stat()
    src.write_text("the cat\nthe fox\n")
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, same mtime
    b = scan_file(src)
    assert (a.lines, a.size, a.mtime_ns) == (b.lines, b.size, b.mtime_ns) == (2, 16, st.st_mtime_ns)
    assert a.digest != b.digest


def write_emb(path, n=5, dim=4, dtype="float32"):
    emb = np.eye(n, dim, dtype=np.float32)
    with EmbeddingWriter(path, dim, meta={"model": "m"}, dtype=dtype, lang="de") as w:
        w.write(np.arange(n), emb, [f"s{i}" for i in range(n)])
    return emb


def test_parquet_into_fifo_and_dev_null(tmp_path):
    fifo = tmp_path / "out.fifo"
    reader = FifoReader(fifo)
    with atomic_output(fifo) as tmp:
        assert tmp == fifo  # written in place
        emb = write_emb(tmp)
    data = reader.join(10)
    table = pq.read_table(pa.BufferReader(data))
    assert table.column("text").to_pylist() == [f"s{i}" for i in range(5)]
    assert fifo.exists() and not fifo.is_file()
    with atomic_output("/dev/null") as tmp:
        write_emb(tmp)
    assert np.array_equal(np.stack(table.column("embedding").to_numpy(zero_copy_only=False)), emb)


def test_writer_error_into_a_pipe_leaves_no_valid_file(tmp_path):
    fifo = tmp_path / "out.fifo"
    reader = FifoReader(fifo)
    with pytest.raises(RuntimeError), EmbeddingWriter(fifo, 4) as w:
        w.write(np.arange(2), np.ones((2, 4)))
        raise RuntimeError("boom")
    data = reader.join(10)
    with pytest.raises(pa.ArrowException):
        pq.read_table(pa.BufferReader(data))


def test_symlink_output_replaces_the_target(tmp_path):
    real = tmp_path / "real.parquet"
    real.write_text("old")
    link = tmp_path / "link.parquet"
    link.symlink_to(real.name)
    check_output(link, force=True)
    with atomic_output(link) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".real.parquet")
        write_emb(tmp)
    assert link.is_symlink() and read_embeddings(link)[1].shape == (5, 4)
    with pytest.raises(InputError, match="is a folder"):
        check_output(tmp_path, force=True)


def test_parquet_readable_without_emmax(tmp_path):
    """Embedding files are plain Parquet: other tools read ids, text and vectors as users do
    (duckdb is in the `test` extra; polars is checked when it is installed)."""
    import duckdb

    path = tmp_path / "e.parquet"
    emb = write_emb(path, dtype="float16")
    rows = duckdb.sql(f"SELECT id, text, lang, embedding FROM '{path}' ORDER BY id").fetchall()
    assert [r[:3] for r in rows] == [(i, f"s{i}", "de") for i in range(5)]
    np.testing.assert_array_equal(np.array([r[3] for r in rows], np.float32), emb)
    pl = pytest.importorskip("polars")
    df = pl.read_parquet(path)
    assert df.columns == ["id", "text", "lang", "embedding"]
    assert df["id"].to_list() == list(range(5)) and df["lang"].to_list() == ["de"] * 5
    np.testing.assert_array_equal(np.array(df["embedding"].to_list(), np.float32), emb)
