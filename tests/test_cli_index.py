"""`emmax index` and `emmax mine` on damaged embedding files and indexes: each is one line on
stderr, exit 1, no traceback and no output, never a silent wrong result."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import one_line_error

from emmax_cli.cli import cli

WORDS = "the a cat dog house water tom mary book good morning hello thank yes no".split()


def run(*args):
    args = [str(a) for a in args]
    if args[:1] == ["mine"] and "--no-filters" not in args:
        # these corpora pair identical lines (the tiny model's only true translations), which
        # the copy filter rightly drops: the mining mechanics are tested without the filters
        args.append("--no-filters")
    return CliRunner().invoke(cli, args)


def flip_bytes(path, start, n=64):
    data = bytearray(path.read_bytes())
    for i in range(start, start + n):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture
def embedded(tiny_model, tmp_path):
    """src.parquet, tgt.parquet (300 lines each, 3 row groups) and a Flat index of tgt."""
    lines = [
        " ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(5)) + f" {i}" for i in range(300)
    ]
    (tmp_path / "src.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "tgt.txt").write_text("\n".join(reversed(lines)) + "\n")
    for side in ("src", "tgt"):
        r = run("embed", tmp_path / f"{side}.txt", "--model", tiny_model, "--chunk-lines", "100")
        assert r.exit_code == 0, r.output
    r = run("index", tmp_path / "tgt.parquet", "-o", tmp_path / "t.faiss")
    assert r.exit_code == 0, r.output
    return tmp_path


def mine(d, tiny_model, tgt="t.faiss"):
    return run("mine", d / "src.parquet", d / tgt, "--model", tiny_model, "--threshold", "1.0")


def test_intact_index_mines(embedded, tiny_model):
    r = mine(embedded, tiny_model)
    assert r.exit_code == 0, r.stderr
    assert len(r.stdout.splitlines()) >= 10


def test_flipped_bytes_in_index_vectors(embedded, tiny_model):
    """Without a checksum this mined hundreds of garbage pairs with exit 0."""
    index = embedded / "t.faiss"
    flip_bytes(index, index.stat().st_size // 2)
    r = mine(embedded, tiny_model)
    one_line_error(r, "t.faiss is corrupt (checksum mismatch", "rebuild it with `emmax index`")
    assert r.stdout == ""


def test_unnormalised_vectors_in_an_index_without_checksums(embedded, tiny_model):
    meta_path = embedded / "t.faiss.json"
    meta = json.loads(meta_path.read_text())
    del meta["checksums"]
    meta_path.write_text(json.dumps(meta))
    index = embedded / "t.faiss"
    flip_bytes(index, index.stat().st_size // 2)
    r = mine(embedded, tiny_model)
    one_line_error(r, "t.faiss is corrupt", "has norm")
    assert r.stdout == ""


def test_garbage_ids_file(embedded, tiny_model):
    (embedded / "t.faiss.ids.npy").write_bytes(b"\x93NUMPY garbage" * 20)
    r = mine(embedded, tiny_model)
    one_line_error(r, "t.faiss")
    assert "pickle" not in r.stderr


def test_moved_source_of_an_index(embedded, tiny_model):
    (embedded / "tgt.parquet").rename(embedded / "elsewhere.parquet")
    r = mine(embedded, tiny_model)
    one_line_error(
        r, "t.faiss refers to its source file", "tgt.parquet, which is missing", "move it back"
    )


@pytest.mark.parametrize("command", ["index", "mine"])
def test_flipped_bytes_in_parquet(embedded, tiny_model, command):
    src = embedded / "src.parquet"
    md = pq.ParquetFile(src).metadata
    col = md.row_group(1).column(md.num_columns - 1)  # the embedding column comes last
    flip_bytes(src, col.data_page_offset + 32)
    if command == "index":
        r = run("index", src, "-o", embedded / "s.faiss")
        assert not (embedded / "s.faiss").exists()
    else:
        r = mine(embedded, tiny_model)
        assert r.stdout == ""
    one_line_error(r, "src.parquet: not a readable embedding Parquet file", "re-run emmax embed")
