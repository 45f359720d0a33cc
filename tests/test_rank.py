"""`emmax rank` and the rank library: formats, inputs, errors, and (real) rank quality."""

from __future__ import annotations

import json
import random

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner
from conftest import SHARED

from emmax_cli.cli import cli
from emmax_cli.errors import InputError, ModelLoadError
from emmax_cli.models.gmm import WEIGHTS_FILE, GMMHead, fit_gmm_interpolation
from emmax_cli.rank import load_head_for, read_pair_chunks, score_pairs

SRC = [
    "guten morgen tom",
    "the cat and the dog",
    "merci beaucoup",
    "mary has a book",
    "ich bin ein hund",
    "hello you",
    "das ist nicht gut",
    "le chat est avec la maison",
]
TGT = [
    "good morning tom",
    "die katze und der hund",
    "thank you very much",
    "mary hat ein buch",
    "i am a dog",
    "bonjour vous",
    "that is not good",
    "the cat is with the house",
]


def run(*args, input=None, ok=True):
    return CliRunner().invoke(cli, [str(a) for a in args], input=input, catch_exceptions=not ok)


def write(path, lines):
    path.write_text("".join(x + "\n" for x in lines), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_head(tiny_encoder) -> GMMHead:
    """A head warmed up on tiny-model embeddings (random encoder: only the plumbing counts)."""
    q = tiny_encoder.encode(SRC * 4)
    t = tiny_encoder.encode(TGT * 4)
    return fit_gmm_interpolation(q, t, steps=5, batch_pairs=256, seed=0)


@pytest.fixture
def ranked_model(tiny_model, tiny_head):
    tiny_head.save(tiny_model)
    return tiny_model


@pytest.fixture
def files(tmp_path):
    return write(tmp_path / "a.txt", SRC), write(tmp_path / "b.txt", TGT)


def parse_tsv(text):
    return [line.split("\t") for line in text.splitlines()]


def test_rank_two_files_tsv(ranked_model, files, tiny_encoder, tiny_head):
    r = run("rank", *files, "--model", ranked_model, "--device", "cpu")
    assert r.exit_code == 0, r.output
    rows = parse_tsv(r.stdout)
    assert len(rows) == len(SRC) and all(len(row) == 1 + 4 + 1 for row in rows)
    probs = np.array([[float(x) for x in row[1:5]] for row in rows])
    np.testing.assert_allclose(probs.sum(1), 1, atol=3e-4)
    assert [int(row[0]) for row in rows] == probs.argmax(1).tolist()
    a, b = tiny_encoder.encode(SRC), tiny_encoder.encode(TGT)
    np.testing.assert_allclose([float(row[5]) for row in rows], (a * b).sum(1), atol=1e-4)
    ref = score_pairs(tiny_encoder, tiny_head, SRC, TGT)
    np.testing.assert_allclose(probs, ref.probs, atol=1e-4)


def test_rank_pairs_tsv_header_and_symmetry(ranked_model, files, tmp_path):
    pairs = write(tmp_path / "pairs.tsv", [f"{s}\t{t}" for s, t in zip(SRC, TGT, strict=False)])
    r1 = run("rank", *files, "-m", ranked_model, "--header")
    r2 = run("rank", pairs, "-m", ranked_model, "--header")
    r3 = run("rank", files[1], files[0], "-m", ranked_model, "--header")  # swapped order
    assert r1.exit_code == r2.exit_code == r3.exit_code == 0
    assert r1.stdout.splitlines()[0] == "rank\tp0\tp1\tp2\tp3\tcosine"
    assert r1.stdout == r2.stdout == r3.stdout  # same pairs; the score is symmetric


def test_rank_jsonl_and_small_chunks(ranked_model, files):
    r = run("rank", *files, "-m", ranked_model, "--format", "jsonl", "--chunk-lines", "3")
    assert r.exit_code == 0, r.output
    recs = [json.loads(x) for x in r.stdout.splitlines()]
    assert len(recs) == len(SRC) and set(recs[0]) == {"rank", "probs", "cosine"}
    assert all(len(x["probs"]) == 4 and abs(sum(x["probs"]) - 1) < 1e-5 for x in recs)
    whole = run("rank", *files, "-m", ranked_model, "--format", "jsonl").stdout
    whole = [json.loads(x) for x in whole.splitlines()]
    for x, y in zip(recs, whole, strict=False):  # chunking changes nothing
        assert x["rank"] == y["rank"] and np.allclose(x["probs"], y["probs"], atol=1e-5)


def test_rank_parquet_atomic_and_force(ranked_model, files, tmp_path):
    out = tmp_path / "r.parquet"
    r = run("rank", *files, "-m", ranked_model, "--format", "parquet")
    assert r.exit_code == 2 and "needs -o" in r.stderr
    r = run("rank", *files, "-m", ranked_model, "--format", "parquet", "-o", out)
    assert r.exit_code == 0, r.output
    assert r.stdout == ""
    t = pq.read_table(out)
    assert t.column_names == ["id", "rank", "probs", "cosine"]
    assert t.column("id").to_pylist() == list(range(len(SRC)))
    probs = np.array(t.column("probs").to_pylist())
    assert probs.shape == (len(SRC), 4) and np.allclose(probs.sum(1), 1, atol=1e-5)
    meta = json.loads(t.schema.metadata[b"emmax"])
    assert meta["num_ranks"] == 4 and meta["model"] == "tiny-0" and len(meta["rank_names"]) == 4
    r = run("rank", *files, "-m", ranked_model, "--format", "parquet", "-o", out, ok=False)
    assert r.exit_code == 1 and "already exists" in r.stderr and "--force" in r.stderr
    r = run("rank", *files, "-m", ranked_model, "--format", "parquet", "-o", out, "--force")
    assert r.exit_code == 0, r.output


def test_rank_text_output_file(ranked_model, files, tmp_path):
    out = tmp_path / "r.tsv"
    r = run("rank", *files, "-m", ranked_model, "-o", out)
    assert r.exit_code == 0 and r.stdout == ""
    assert out.read_text() == run("rank", *files, "-m", ranked_model).stdout


def one_line_error(r, *needles):
    assert r.exit_code == 1, r.output
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_mismatched_lengths(ranked_model, tmp_path):
    a, b = write(tmp_path / "a.txt", SRC), write(tmp_path / "b.txt", TGT[:5])
    r = run("rank", a, b, "-m", ranked_model, ok=False)
    one_line_error(r, "a.txt has 8 lines", "b.txt has 5")


def test_mismatched_lengths_from_stdin_leaves_no_output(ranked_model, tmp_path):
    """Stdin cannot be counted up front: the lockstep reader finds the mismatch."""
    b, out = write(tmp_path / "b.txt", TGT[:5]), tmp_path / "r.jsonl"
    r = run(
        "rank",
        "-",
        b,
        "-m",
        ranked_model,
        "--chunk-lines",
        "2",
        "--format",
        "jsonl",
        "-o",
        out,
        input="".join(s + "\n" for s in SRC),
        ok=False,
    )
    one_line_error(r, "<stdin> has 8 lines", "b.txt has 5")
    assert not out.exists() and not list(tmp_path.glob(".*"))


def test_tsv_line_without_tab(ranked_model, tmp_path):
    pairs = write(tmp_path / "p.tsv", ["a\tb", "c\td", "no tab here", "e\tf"])
    r = run("rank", pairs, "-m", ranked_model, ok=False)
    one_line_error(r, "p.tsv line 3", "two tab-separated")


def test_missing_head(tiny_model, files):
    one_line_error(
        run("rank", *files, "-m", tiny_model, ok=False),
        "model tiny-0 has no GMM head",
        "emmax train",
    )


def test_corrupt_head(ranked_model, files):
    (ranked_model / WEIGHTS_FILE).write_bytes(b"\x00\x01garbage")
    one_line_error(run("rank", *files, "-m", ranked_model, ok=False), "corrupt GMM head weights")


def test_missing_input_and_usage(ranked_model, files, tmp_path):
    r = run("rank", tmp_path / "nope.txt", files[1], "-m", ranked_model, ok=False)
    one_line_error(r, "no such file")
    r = run("rank", *files, files[0], "-m", ranked_model, ok=False)
    assert r.exit_code == 2
    r = run("rank", *files, "-m", ranked_model, "--format", "jsonl", "--header", ok=False)
    assert r.exit_code == 2


def test_library_errors(tiny_encoder, tiny_model, tmp_path):
    with pytest.raises(ModelLoadError, match="has no GMM head"):
        load_head_for(tiny_encoder)
    with pytest.raises(InputError, match="has 2 lines but"):
        read_pair_chunks(write(tmp_path / "x", ["a", "b"]), write(tmp_path / "y", ["a"]))
    with pytest.raises(InputError, match="empty input"):
        list(read_pair_chunks(write(tmp_path / "e", []), write(tmp_path / "f", [])))


# ---- real model --------------------------------------------------------------------------------
WMT = SHARED / "train" / "wmt"


def read_tsv(path, start, n):
    rows = [ln.split("\t") for ln in path.read_text(encoding="utf-8").splitlines()]
    return rows[start : start + n]


@pytest.mark.real
def test_real_ranks_translations_top_and_shuffled_zero(real_encoder):
    """Warm up a head on 500 deu-eng WMT training pairs; score 200 other pairs. The
    distributed data has no train/*/heldout/ folders, so the evaluation pairs are WMT
    train pairs far from (and disjoint with) the fitting ones."""
    train_file = WMT / "deu-eng.tsv"
    if not train_file.exists():
        pytest.skip("../shared/data/train/wmt is not available")
    heldout = WMT / "heldout" / "deu-eng.tsv"
    fit = read_tsv(train_file, 0, 500)
    ev = read_tsv(heldout, 0, 200) if heldout.exists() else read_tsv(train_file, 10_000, 200)
    assert not {p[0] for p in fit} & {p[0] for p in ev}
    enc = real_encoder
    head = fit_gmm_interpolation(
        enc.encode([p[0] for p in fit]), enc.encode([p[1] for p in fit]), steps=50, seed=0
    )
    src, tgt = [p[0] for p in ev], [p[1] for p in ev]
    shuffled = tgt[:]
    random.Random(0).shuffle(shuffled)
    true = score_pairs(enc, head, src, tgt)
    wrong = score_pairs(enc, head, src, shuffled)
    top = float((true.rank == 3).mean())
    zero = float((wrong.rank == 0).mean())
    print(
        f"\ntranslations at rank 3: {top:.1%} {np.bincount(true.rank, minlength=4).tolist()}; "
        f"shuffled at rank 0: {zero:.1%} {np.bincount(wrong.rank, minlength=4).tolist()}; "
        f"rank means {head.rank_means.tolist()}"
    )
    assert top >= 0.6 and zero >= 0.8
    assert (true.rank == 0).mean() <= 0.02 and (wrong.rank == 3).mean() <= 0.02
    er = (
        GMMHead.expected_rank(torch.from_numpy(true.probs)).mean()
        - GMMHead.expected_rank(torch.from_numpy(wrong.probs)).mean()
    )
    assert er > 2.0
    assert head.rank_means_ordered()
