"""`emmax embed` end to end on the tiny model: special outputs, refusals before any damage,
Ctrl-C and --resume, several inputs, damaged and wide-encoded inputs."""

from __future__ import annotations

import gzip
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import FifoReader, one_line_error

from emmax_cli.cli import cli
from emmax_cli.models.encoder import Encoder

SENTS = ["Guten Morgen.", "Good morning, Tom.", "", "the cat", "Merci beaucoup!", "Mary"]


def embed(model, *args, input=None):
    argv = ["embed", *map(str, args), "--model", str(model), "--precision", "fp32"]
    return CliRunner().invoke(cli, argv, input=input)


def write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def flat(text: str) -> str:
    """stderr with rich's line wrapping undone."""
    return " ".join(text.split())


def left_behind(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_output_through_a_symlink(tiny_model, tmp_path):
    src = write(tmp_path / "a.txt", SENTS)
    (tmp_path / "store").mkdir()
    real = tmp_path / "store" / "real.parquet"
    real.write_text("old")
    link = tmp_path / "link.parquet"
    link.symlink_to(real)
    r = embed(tiny_model, src, "-o", link, "--force")
    assert r.exit_code == 0, r.output
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert pq.read_table(real).column("text").to_pylist() == SENTS
    assert left_behind(tmp_path) == [] and left_behind(tmp_path / "store") == []


def test_output_into_a_fifo_and_dev_null(tiny_model, tmp_path):
    src = write(tmp_path / "a.txt", SENTS)
    fifo = tmp_path / "out.fifo"
    reader = FifoReader(fifo)
    r = embed(tiny_model, src, "-o", fifo, "--force")
    data = reader.join(30)
    assert r.exit_code == 0, r.output
    table = pq.read_table(pa.BufferReader(data))
    assert table.column("text").to_pylist() == SENTS and table.schema.metadata[b"emmax"]
    assert not fifo.is_file() and left_behind(tmp_path) == []
    r = embed(tiny_model, src, "-o", "/dev/null")  # no --force needed: nothing is replaced
    assert r.exit_code == 0, r.output
    assert os.path.exists("/dev/null") and not os.path.isfile("/dev/null")


def test_output_in_a_missing_folder_refused(tiny_model, tmp_path):
    src = write(tmp_path / "a.txt", SENTS)
    r = embed(tiny_model, src, "-o", tmp_path / "nope" / "x.parquet")
    one_line_error(r, "output folder does not exist")


@pytest.mark.parametrize("via", ["same path", "symlink", "hard link"])
def test_output_onto_the_input_is_refused(tiny_model, tmp_path, via):
    src = write(tmp_path / "same.txt", SENTS)
    out = src
    if via == "symlink":
        out = tmp_path / "link.parquet"
        out.symlink_to(src)
    elif via == "hard link":
        out = tmp_path / "hard.parquet"
        os.link(src, out)
    r = embed(tiny_model, src, "-o", out, "--force")
    one_line_error(r, "is the input file", "same.txt")
    assert src.read_text(encoding="utf-8") == "\n".join(SENTS) + "\n"


def test_several_inputs_into_a_folder(tiny_model, tmp_path):
    a = write(tmp_path / "a.txt", SENTS)
    b = tmp_path / "b.txt.gz"
    b.write_bytes(gzip.compress(("\n".join(SENTS[:3]) + "\n").encode()))
    out = tmp_path / "out"
    out.mkdir()
    r = embed(tiny_model, a, b, "-o", out)
    assert r.exit_code == 0, r.output
    assert pq.read_table(out / "a.parquet").num_rows == 6
    assert pq.read_table(out / "b.parquet").num_rows == 3
    assert "wrote" in r.stderr
    r = embed(tiny_model, a, b, "-o", tmp_path / "file.parquet")
    one_line_error(r, "must be an existing folder")


def test_same_stem_in_one_folder_refused_up_front(tiny_model, tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    a = write(tmp_path / "x" / "c.txt", SENTS)
    b = write(tmp_path / "y" / "c.txt", SENTS[:2])
    out = tmp_path / "out"
    out.mkdir()
    r = embed(tiny_model, a, b, "-o", out, "--force")
    one_line_error(r, "x/c.txt and", "y/c.txt would both be written to", "c.parquet")
    assert list(out.iterdir()) == []


def test_stdin_needs_an_output(tiny_model):
    r = embed(tiny_model, "-", input="a\n")
    assert r.exit_code != 0 and "Traceback" not in r.output and "-o" in r.stderr


def make_gz(path, n=200, cut=None):
    data = gzip.compress("".join(f"the cat number {i}\n" for i in range(n)).encode())
    path.write_bytes(data[:cut] if cut else data)
    return path


def test_corrupt_gzip_leaves_nothing(tiny_model, tmp_path):
    good = make_gz(tmp_path / "good.txt.gz", n=3000)
    bad = make_gz(tmp_path / "c.txt.gz", n=3000, cut=good.stat().st_size * 3 // 4)
    r = embed(tiny_model, bad, "--chunk-lines", "256")
    one_line_error(r, "c.txt.gz", "corrupt or truncated gzip data")
    assert not (tmp_path / "c.parquet").exists()
    assert left_behind(tmp_path) == []  # no .c.parquet.partial/ after an error


def test_utf16_input(tiny_model, tmp_path):
    lines = ["Ċa va", "ਊ", "the cat", "", "a", "b", "c", "d"]  # 0x0A bytes inside characters
    src = tmp_path / "w.txt"
    src.write_bytes(("\n".join(lines) + "\n").encode("utf-16"))
    r = embed(tiny_model, src)
    one_line_error(r, "looks like UTF-16", "--encoding utf-16")
    assert not (tmp_path / "w.parquet").exists()
    r = embed(tiny_model, src, "--encoding", "utf-16")
    assert r.exit_code == 0, r.output
    assert pq.read_table(tmp_path / "w.parquet").column("text").to_pylist() == lines


def test_utf8_bom_not_in_text(tiny_model, tmp_path):
    src = tmp_path / "b.txt"
    src.write_bytes(b"\xef\xbb\xbfhello\nworld\n")
    r = embed(tiny_model, src)
    assert r.exit_code == 0, r.output
    assert pq.read_table(tmp_path / "b.parquet").column("text").to_pylist() == ["hello", "world"]


def test_long_lines_truncated_are_counted(tiny_model, tmp_path):
    src = write(tmp_path / "long.txt", ["the cat " * 100, "short", "the dog " * 80])
    r = embed(tiny_model, src)
    assert r.exit_code == 0, r.output
    assert "2 line(s) longer than 64 tokens were truncated" in flat(r.stderr)


def interrupt_after(monkeypatch, n_calls):
    """Make the n-th call of Encoder.encode raise KeyboardInterrupt (Ctrl-C mid-run)."""
    real = Encoder.encode
    calls = {"n": 0}

    def flaky(self, texts, **kw):
        calls["n"] += 1
        if calls["n"] == n_calls:
            raise KeyboardInterrupt
        return real(self, texts, **kw)

    monkeypatch.setattr(Encoder, "encode", flaky)
    return real


def test_ctrl_c_then_resume_equals_uninterrupted_run(tiny_model, tmp_path, monkeypatch):
    src = write(
        tmp_path / "big.txt", [f"the cat number {i} and the dog {i % 7}" for i in range(100)]
    )
    ref, out = tmp_path / "ref.parquet", tmp_path / "out.parquet"
    assert embed(tiny_model, src, "-o", ref, "--chunk-lines", "16").exit_code == 0
    real = interrupt_after(monkeypatch, 4)
    r = embed(tiny_model, src, "-o", out, "--chunk-lines", "16")
    assert r.exit_code == 130 and "Interrupted." in r.stderr and "Traceback" not in r.output
    assert "interrupted: 3 finished chunk(s) kept in" in flat(r.stderr)
    assert "rerun the same command with --resume to continue" in flat(r.stderr)
    assert not out.exists() and left_behind(tmp_path) == [".out.parquet.partial"]
    monkeypatch.setattr(Encoder, "encode", real)
    r = embed(tiny_model, src, "-o", out, "--chunk-lines", "16", "--resume")
    assert r.exit_code == 0, r.output
    a, b = pq.read_table(out), pq.read_table(ref)
    assert a.equals(b, check_metadata=True)
    assert a.schema.metadata == b.schema.metadata
    assert left_behind(tmp_path) == []


def test_resume_refuses_a_changed_input(tiny_model, tmp_path, monkeypatch):
    lines = [f"the cat number {i:03d}" for i in range(100)]
    src = write(tmp_path / "big.txt", lines)
    out = tmp_path / "out.parquet"
    real = interrupt_after(monkeypatch, 3)
    assert embed(tiny_model, src, "-o", out, "--chunk-lines", "16").exit_code == 130
    monkeypatch.setattr(Encoder, "encode", real)
    st = src.stat()
    lines[5] = "the dog number 005"  # same length, inside a finished chunk
    write(src, lines)
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))  # and the same mtime
    r = embed(tiny_model, src, "-o", out, "--chunk-lines", "16", "--resume")
    one_line_error(r, "big.txt changed since the interrupted run", "rerun without --resume")
    assert not out.exists()
    r = embed(tiny_model, src, "-o", out, "--chunk-lines", "16")  # a fresh run is fine
    assert r.exit_code == 0, r.output
    assert pq.read_table(out).column("text").to_pylist()[5] == "the dog number 005"


def test_resume_from_stdin_refused(tiny_model, tmp_path):
    r = embed(tiny_model, "-", "-o", tmp_path / "s.parquet", "--resume", input="a\n")
    one_line_error(r, "--resume cannot continue from <stdin>")
