from __future__ import annotations

import gzip
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import one_line_error

from emmax_cli.cli import cli
from emmax_cli.io.parquet import read_embeddings

SENTS = [
    "Guten Morgen.",
    "Good morning, Tom.",
    "",
    "Das ist ein Hund und eine Katze.",
    "the cat",
    "Merci beaucoup!",
    "Mary has a book",
    "  spaced  out  ",
]


def run(*args, input=None):
    return CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)


def write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_embed_file_rows_metadata(tiny_model, tmp_path):
    src = write(tmp_path / "c.de.txt", SENTS)
    r = run("embed", str(src), "--model", str(tiny_model), "--lang", "de", "--precision", "fp32")
    assert r.exit_code == 0, r.output
    assert r.stdout == ""  # nothing but results on stdout, and embed has none
    out = tmp_path / "c.de.parquet"
    t = pq.read_table(out)
    assert t.column_names == ["id", "text", "lang", "embedding"]
    assert t.column("id").to_pylist() == list(range(len(SENTS)))
    assert t.column("text").to_pylist() == SENTS
    assert set(t.column("lang").to_pylist()) == {"de"}
    meta = json.loads(t.schema.metadata[b"emmax"])
    assert meta["dim"] == 32 and meta["normalized"] is True and meta["model_checksum"]
    ids, X, _, _ = read_embeddings(out)
    assert X.dtype == np.float32 and X.shape == (len(SENTS), 32)
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1, atol=1e-5)


def test_embed_stdin_gzip_float16_no_text(tiny_model, tmp_path):
    gz = tmp_path / "c.txt.gz"
    with gzip.open(gz, "wt", encoding="utf-8") as f:
        f.write("\n".join(SENTS) + "\n")
    r = run("embed", str(gz), "--model", str(tiny_model), "--dtype", "float16", "--no-text")
    assert r.exit_code == 0, r.output
    t = pq.read_table(tmp_path / "c.parquet")
    assert (
        "text" not in t.column_names
        and str(t.schema.field("embedding").type.value_type) == "halffloat"
    )
    r = run(
        "embed",
        "-",
        "-o",
        str(tmp_path / "s.parquet"),
        "--model",
        str(tiny_model),
        input="\n".join(SENTS) + "\n",
    )
    assert r.exit_code == 0, r.output
    a = read_embeddings(tmp_path / "s.parquet")[1]
    b = read_embeddings(tmp_path / "c.parquet")[1]
    np.testing.assert_allclose(a, b, atol=2e-3)  # float16 storage vs float32


def test_embeddings_independent_of_batching_and_order(tiny_encoder):
    X = tiny_encoder.encode(SENTS, batch_size=1)
    Y = tiny_encoder.encode(SENTS, batch_tokens=64)
    perm = np.random.default_rng(0).permutation(len(SENTS))
    Z = tiny_encoder.encode([SENTS[i] for i in perm], batch_size=3)
    assert np.abs(X - Y).max() < 1e-5
    assert np.abs(X[perm] - Z).max() < 1e-5


@pytest.mark.parametrize("policy,rows,text1", [("skip", 2, "c"), ("replace", 3, "b\ufffdb")])
def test_bad_line_policies(tiny_model, tmp_path, policy, rows, text1):
    src = tmp_path / "bad.txt"
    src.write_bytes(b"a\nb\xffb\nc\n")
    out = tmp_path / "bad.parquet"
    r = CliRunner().invoke(
        cli, ["embed", str(src), "--model", str(tiny_model), "--on-bad-line", policy]
    )
    assert r.exit_code == 0, r.output
    t = pq.read_table(out)
    assert t.num_rows == rows and t.column("text").to_pylist()[1] == text1
    if policy == "skip":
        assert t.column("id").to_pylist() == [0, 2]
        assert "skipped 1 undecodable line(s): 2" in r.stderr


def test_errors_missing_empty_undecodable_model(tiny_model, tmp_path):
    runner = CliRunner()
    r = runner.invoke(cli, ["embed", str(tmp_path / "nope.txt"), "--model", str(tiny_model)])
    one_line_error(r, "nope.txt", "no such file")
    (tmp_path / "empty.txt").write_bytes(b"")
    r = runner.invoke(cli, ["embed", str(tmp_path / "empty.txt"), "--model", str(tiny_model)])
    one_line_error(r, "empty input")
    assert not (tmp_path / "empty.parquet").exists()
    (tmp_path / "bad.txt").write_bytes(b"ok\nok\n\xc3\x28 broken\n")
    r = runner.invoke(cli, ["embed", str(tmp_path / "bad.txt"), "--model", str(tiny_model)])
    one_line_error(r, "bad.txt line 3", "--on-bad-line")
    assert not (tmp_path / "bad.parquet").exists()
    assert not list(tmp_path.glob(".bad.parquet*tmp"))
    write(tmp_path / "ok.txt", SENTS)
    r = runner.invoke(
        cli, ["embed", str(tmp_path / "ok.txt"), "--model", str(tmp_path / "no-model")]
    )
    one_line_error(r, "no-model", "no such built-in model or directory")
    (tmp_path / "not-a-model").mkdir()
    r = runner.invoke(
        cli, ["embed", str(tmp_path / "ok.txt"), "--model", str(tmp_path / "not-a-model")]
    )
    one_line_error(r, "not a model directory")
    r = runner.invoke(cli, ["embed", str(tmp_path / "ok.txt"), "--model", str(tiny_model)])
    assert r.exit_code == 0
    r = runner.invoke(cli, ["embed", str(tmp_path / "ok.txt"), "--model", str(tiny_model)])
    one_line_error(r, "already exists", "--force")


def test_corrupt_model_weights_detected(tiny_model, tmp_path):
    w = tiny_model / "encoder" / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-10] ^= 0xFF
    w.write_bytes(bytes(data))
    write(tmp_path / "ok.txt", SENTS)
    r = CliRunner().invoke(cli, ["embed", str(tmp_path / "ok.txt"), "--model", str(tiny_model)])
    one_line_error(r, "checksum mismatch")


def test_interrupt_leaves_nothing_and_resume_gives_same_file(tiny_model, tmp_path, monkeypatch):
    from emmax_cli.embed import embed_file
    from emmax_cli.models.encoder import Encoder

    lines = [f"the cat number {i} and the dog {i % 7}" for i in range(100)]
    src = write(tmp_path / "big.txt", lines)
    enc = Encoder.load(str(tiny_model), device="cpu", precision="fp32")
    ref = embed_file(src, tmp_path / "ref.parquet", enc, chunk_lines=16)
    calls = {"n": 0}
    real = enc.encode

    def flaky(texts, **kw):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(texts, **kw)

    monkeypatch.setattr(enc, "encode", flaky)
    out = tmp_path / "out.parquet"
    with pytest.raises(KeyboardInterrupt):
        embed_file(src, out, enc, chunk_lines=16)
    assert not out.exists() and not list(tmp_path.glob(".out.parquet.tmp"))
    monkeypatch.setattr(enc, "encode", real)
    res = embed_file(src, out, enc, chunk_lines=16, resume=True)
    assert res.resumed_chunks == 3 and res.rows == ref.rows == 100
    got, want = pq.read_table(out), pq.read_table(tmp_path / "ref.parquet")
    assert got.equals(want, check_metadata=True)  # schema metadata too, not only the data
    assert got.schema.metadata == want.schema.metadata
    assert not (tmp_path / ".out.parquet.partial").exists()


def test_error_mid_run_removes_partial_state(tiny_encoder, tmp_path, monkeypatch, caplog):
    """Only Ctrl-C keeps finished chunks for --resume; any other error leaves nothing."""
    from emmax_cli.embed import embed_file

    src = write(tmp_path / "big.txt", [f"line {i}" for i in range(100)])
    enc = tiny_encoder
    real, calls = enc.encode, {"n": 0}

    def failing(texts, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("boom")
        return real(texts, **kw)

    monkeypatch.setattr(enc, "encode", failing)
    with pytest.raises(RuntimeError):
        embed_file(src, tmp_path / "out.parquet", enc, chunk_lines=16)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.txt"]
    calls["n"] = -10
    interrupt = KeyboardInterrupt  # before any chunk finished: nothing worth keeping
    monkeypatch.setattr(enc, "encode", lambda texts, **kw: (_ for _ in ()).throw(interrupt))
    with caplog.at_level("WARNING"), pytest.raises(KeyboardInterrupt):
        embed_file(src, tmp_path / "out.parquet", enc, chunk_lines=16)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.txt"]
    assert "interrupted" not in caplog.text


def test_embed_files_checks_everything_before_loading_the_model(tmp_path, monkeypatch):
    from emmax_cli.embed import embed_files
    from emmax_cli.errors import InputError
    from emmax_cli.models.encoder import Encoder

    def no_load(*a, **kw):
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr(Encoder, "load", no_load)
    a = write(tmp_path / "a.txt", SENTS)
    (tmp_path / "out").mkdir()
    cases = [
        (([str(a), str(tmp_path / "missing.txt")], tmp_path / "out"), "missing.txt: no such file"),
        (([str(a)], a), "is the input file"),
        (([str(a), str(a)], tmp_path / "out"), "would both be written to"),
        (([str(a)], tmp_path / "no" / "x.parquet"), "output folder does not exist"),
        ((["-"], None), "reading stdin needs an output file"),
        (([str(a)], None), "unknown embedding dtype"),
    ]
    for (inputs, out), needle in cases:
        kw = {"dtype": "int8"} if "dtype" in needle else {}
        with pytest.raises(InputError, match=needle):
            embed_files(inputs, out, force=True, **kw)
