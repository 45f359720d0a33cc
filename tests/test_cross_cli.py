"""`emmax rank --cross` and `emmax mine --rerank` on the tiny model with a random cross
scorer: formats, symmetry, agreement with plain mining, errors."""

from __future__ import annotations

import json
import random

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import one_line_error

from emmax_cli.cli import cli
from emmax_cli.models.cross import WEIGHTS_FILE, CrossPlugin

SRC = [
    "guten morgen tom",
    "the cat and the dog",
    "merci beaucoup",
    "mary has a book",
    "ich bin ein hund",
    "hello you",
    "das ist nicht gut",
    "le chat est avec la maison et le chien",
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
WORDS = "the a cat dog house water tom mary book good morning hello thank yes no".split()


def run(*args, input=None):
    return CliRunner().invoke(cli, [str(a) for a in args], input=input)


def write(path, lines):
    path.write_text("".join(x + "\n" for x in lines), encoding="utf-8")
    return path


@pytest.fixture
def cross_model(tiny_model, tiny_encoder):
    """A private copy of the tiny model with a random cross scorer (one plugged layer)."""
    CrossPlugin.for_net(tiny_encoder.net, layers=1).save(tiny_model)
    return tiny_model


@pytest.fixture
def files(tmp_path):
    return write(tmp_path / "a.txt", SRC), write(tmp_path / "b.txt", TGT)


@pytest.fixture
def corpus(tmp_path):
    """Identical lines on both sides (the tiny model's only translations), target shuffled."""
    rng = random.Random(0)
    src = [
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))) + f" {i}" for i in range(40)
    ]
    tgt = src[:25] + [f"{s} extra words here" for s in src[25:]]
    random.Random(1).shuffle(tgt)
    return write(tmp_path / "src.txt", src), write(tmp_path / "tgt.txt", tgt)


def tsv_rows(text):
    return [[float(x) for x in line.split("\t")] for line in text.splitlines()]


# ---- emmax rank --cross -----------------------------------------------------------------------
def test_rank_cross_tsv_rows_sum_to_one_symmetric(cross_model, files, tiny_encoder):
    r = run("rank", *files, "--cross", "-m", cross_model, "--device", "cpu", "--header")
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "rank\tp0\tp1\tp2\tp3\tcosine"
    rows = np.array(tsv_rows("\n".join(lines[1:])))
    assert rows.shape == (len(SRC), 6)
    probs = rows[:, 1:5]
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=2e-4)
    assert (rows[:, 0] == probs.argmax(1)).all()
    # the cosine is that of the encoder's own embeddings
    a, b = tiny_encoder.encode(SRC), tiny_encoder.encode(TGT)
    np.testing.assert_allclose(rows[:, 5], (a * b).sum(1), atol=2e-4)
    assert "cross scorer" in r.stderr
    # swapping the sides gives the same numbers
    swapped = run("rank", files[1], files[0], "--cross", "-m", cross_model, "--device", "cpu")
    assert swapped.exit_code == 0, swapped.stderr
    assert swapped.stdout == "\n".join(lines[1:]) + "\n"


def test_rank_cross_jsonl_parquet_and_small_batches(cross_model, files, tmp_path):
    pairs = write(tmp_path / "p.tsv", [f"{a}\t{b}" for a, b in zip(SRC, TGT, strict=True)])
    r = run("rank", pairs, "--cross", "-m", cross_model, "--format", "jsonl", "--chunk-lines", 3)
    assert r.exit_code == 0, r.stderr
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert len(rows) == len(SRC)
    for row in rows:
        assert set(row) == {"rank", "probs", "cosine"} and len(row["probs"]) == 4
        assert abs(sum(row["probs"]) - 1) < 1e-5 and row["rank"] == np.argmax(row["probs"])
    out = tmp_path / "r.parquet"
    r = run(
        "rank", *files, "--cross", "-m", cross_model, "--format", "parquet", "-o", out,
        "--batch-tokens", 16,
    )  # fmt: skip
    assert r.exit_code == 0, r.stderr
    t = pq.read_table(out)
    assert t.column("id").to_pylist() == list(range(len(SRC)))
    meta = json.loads(t.schema.metadata[b"emmax"])
    assert meta["ranker"] == "cross" and meta["num_ranks"] == 4
    np.testing.assert_allclose(
        np.array(t.column("probs").to_pylist()), [x["probs"] for x in rows], atol=1e-5
    )


def test_rank_cross_without_or_with_corrupt_plugin(tiny_model, tiny_encoder, files, tmp_path):
    out = tmp_path / "r.tsv"
    r = run("rank", *files, "--cross", "-m", tiny_model, "-o", out)
    one_line_error(r, "no cross scorer", "emmax train --phase cross")
    assert not out.exists()
    CrossPlugin.for_net(tiny_encoder.net, layers=1).save(tiny_model)
    (tiny_model / WEIGHTS_FILE).write_bytes(b"\x00\x01garbage")
    r = run("rank", *files, "--cross", "-m", tiny_model, "-o", out)
    one_line_error(r, "unreadable cross scorer")
    assert not out.exists()


# ---- emmax mine --rerank ----------------------------------------------------------------------
def mine(corpus, model, *extra):
    return run(
        "mine", *corpus, "-m", model, "--threshold", "1.0", "--no-filters", "--device", "cpu",
        *extra,
    )  # fmt: skip


def jsonl(text):
    return [json.loads(x) for x in text.splitlines()]


def test_mine_rerank_min_prob_zero_keeps_the_plain_pairs(cross_model, corpus):
    plain = mine(corpus, cross_model, "--format", "jsonl")
    assert plain.exit_code == 0, plain.stderr
    ranked = mine(corpus, cross_model, "--format", "jsonl", "--rerank", "--rerank-min-prob", 0)
    assert ranked.exit_code == 0, ranked.stderr
    a, b = jsonl(plain.stdout), jsonl(ranked.stdout)
    assert len(a) >= 20 and len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert {k: v for k, v in y.items() if not k.startswith("cross_")} == x
        assert 0 <= y["cross_rank"] < 4 and 0 < y["cross_prob"] < 0.99
    keys = list(b[0])
    assert keys.index("cross_rank") + 1 == keys.index("cross_prob") == keys.index("src_id") - 1
    assert "cross_rank 0" not in ranked.stderr  # nothing removed, nothing reported
    # the TSV stays LASER's score<TAB>src<TAB>tgt, the same pairs
    tsv_a = mine(corpus, cross_model)
    tsv_b = mine(corpus, cross_model, "--rerank", "--rerank-min-prob", 0)
    assert tsv_b.exit_code == 0 and tsv_b.stdout == tsv_a.stdout
    # --top: the best pairs that pass, scoring stops early
    top = mine(
        corpus, cross_model, "--format", "jsonl", "--rerank", "--rerank-min-prob", 0,
        "--top", 3,
    )  # fmt: skip
    assert top.exit_code == 0, top.stderr
    assert jsonl(top.stdout) == b[:3]


def test_mine_rerank_min_prob_one_removes_everything(cross_model, corpus, tmp_path):
    plain = mine(corpus, cross_model, "--format", "jsonl")
    n = len(jsonl(plain.stdout))
    r = mine(
        corpus, cross_model, "--format", "jsonl", "--rerank", "--rerank-min-prob", 1,
        "--with-dropped",
    )  # fmt: skip
    assert r.exit_code == 0, r.stderr
    err = " ".join(r.stderr.split())  # log lines wrap
    assert " 0 of " in err and "removed by: " in err and f"cross_rank {n}" in err
    rows = jsonl(r.stdout)
    assert not any(x["keep"] for x in rows)
    reranked = [x for x in rows if x["reason"] == "cross_rank"]
    assert len(reranked) == n
    assert all(x["cross_rank"] is not None and x["cross_prob"] < 1 for x in reranked)
    # candidates dropped before the rerank were not read by it
    assert all(x["cross_rank"] is None for x in rows if x["reason"] != "cross_rank")
    # parquet: the same columns, nullable
    out = tmp_path / "pairs.parquet"
    r = mine(
        corpus, cross_model, "--format", "parquet", "-o", out, "--rerank",
        "--rerank-min-prob", 1, "--with-dropped",
    )  # fmt: skip
    assert r.exit_code == 0, r.stderr
    t = pq.read_table(out).to_pylist()
    assert [x["reason"] for x in t] == [x["reason"] for x in rows]
    assert [x["cross_rank"] for x in t] == [x["cross_rank"] for x in rows]
    np.testing.assert_allclose(
        [x["cross_prob"] for x in t if x["cross_prob"] is not None],
        [x["cross_prob"] for x in reranked],
        rtol=1e-6,
    )
    # no pairs at all: an empty file with the cross columns
    out2 = tmp_path / "none.parquet"
    r = mine(corpus, cross_model, "--format", "parquet", "-o", out2, "--rerank",
             "--rerank-min-prob", 1)  # fmt: skip
    assert r.exit_code == 0, r.stderr
    t2 = pq.read_table(out2)
    assert t2.num_rows == 0 and {"cross_rank", "cross_prob"} <= set(t2.column_names)


def test_mine_rerank_errors(tiny_model, corpus, tmp_path):
    out = tmp_path / "pairs.tsv"
    r = mine(corpus, tiny_model, "--rerank", "-o", out)
    one_line_error(r, "model tiny-0", "no cross scorer", "emmax train --phase cross")
    assert not out.exists()
    r = mine(corpus, tiny_model, "--rerank-min-prob", 0.3)
    assert r.exit_code == 2 and "--rerank-min-prob is for --rerank" in r.stderr
    r = mine(corpus, tiny_model, "--rerank", "--rerank-min-prob", 1.5)
    assert r.exit_code == 2
    (tiny_model / "cross_head.json").write_text("{}")
    (tiny_model / WEIGHTS_FILE).write_bytes(b"\x00\x01garbage")
    r = mine(corpus, tiny_model, "--rerank", "-o", out)
    one_line_error(r, "unreadable cross scorer")
    assert not out.exists()
