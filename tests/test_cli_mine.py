"""`emmax mine`, `emmax index` and `emmax calibrate` end to end on the tiny model, errors
included; and the real default model on Tatoeba deu-eng."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import one_line_error, read_tatoeba

from emmax_cli.cli import cli
from emmax_cli.io.parquet import EmbeddingWriter

WORDS = "the a cat dog house water tom mary book good morning hello thank yes no".split()


def sentences(n, seed):
    rng = random.Random(seed)
    return [
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))) + f" {i}" for i in range(n)
    ]


def run(*args, input=None, filters=False):
    args = [str(a) for a in args]
    if args[:1] == ["mine"] and "--no-filters" not in args and not filters:
        # these corpora pair identical lines (the tiny model's only true translations), which
        # the copy filter rightly drops: the mining mechanics are tested without the filters
        args.append("--no-filters")
    return CliRunner().invoke(cli, args, input=input)


@pytest.fixture
def corpus(tmp_path):
    # identical text on both sides: the tiny model maps a sentence to the same vector, so the
    # mined pairs must be exactly the identical lines, even though the target is shuffled
    src = sentences(60, 0)
    tgt = src[:40] + sentences(20, 1)
    random.Random(2).shuffle(tgt)
    (tmp_path / "src.txt").write_text("\n".join(src + src[:3]) + "\n")  # 3 duplicate lines
    (tmp_path / "tgt.txt").write_text("\n".join(tgt) + "\n")
    return tmp_path, src, tgt


def parse(tsv):
    return [ln.split("\t") for ln in tsv.splitlines()]


def test_mine_text_inputs_recovers_identical_lines(tiny_model, corpus):
    d, src, tgt = corpus
    r = run(
        "mine",
        "--src",
        "de",
        "--tgt",
        "en",
        d / "src.txt",
        d / "tgt.txt",
        "--model",
        tiny_model,
        "--threshold",
        "1.0",
        "--with-ids",
    )
    assert r.exit_code == 0, r.stderr
    rows = parse(r.stdout)
    shared = set(src) & set(tgt)
    assert len(shared) == 40
    assert {s for _, s, t, _, _ in rows if s == t} == shared  # every identical pair is found
    for score, s, t, sid, tid in rows:
        assert float(score) >= 1.0 and (s == t or s not in shared)
        assert src[int(sid)] == s and tgt[int(tid)] == t
    scores = [float(x[0]) for x in rows]
    assert scores == sorted(scores, reverse=True)
    assert len({x[1] for x in rows}) == len(rows)  # 1:1, duplicates unified
    assert "duplicate lines unified" in r.stderr and "1.02:" in r.stderr


def test_mine_parquet_and_index_inputs_agree_with_text(tiny_model, corpus):
    d, _, _ = corpus
    for name in ("src", "tgt"):
        assert (
            run("embed", d / f"{name}.txt", "--model", tiny_model, "--precision", "fp32").exit_code
            == 0
        )
    assert run("index", d / "tgt.parquet", "-o", d / "tgt.faiss").exit_code == 0
    common = ["--model", tiny_model, "--no-threshold", "--precision", "fp32"]
    a = run("mine", d / "src.txt", d / "tgt.txt", *common)
    b = run("mine", d / "src.parquet", d / "tgt.parquet", *common)
    c = run("mine", d / "src.parquet", d / "tgt.faiss", *common)
    assert a.exit_code == b.exit_code == c.exit_code == 0, (a.stderr, b.stderr, c.stderr)
    pa, pb = parse(a.stdout), parse(b.stdout)
    assert [x[1:] for x in pa] == [x[1:] for x in pb]
    np.testing.assert_allclose([float(x[0]) for x in pa], [float(x[0]) for x in pb], atol=1e-5)
    # the Flat index (exact) gives the same pairs; tgt side is not unified there
    assert {tuple(x[1:]) for x in parse(c.stdout)} >= {tuple(x[1:]) for x in pa if x[1] == x[2]}


def test_mine_output_file_top_and_retrieval_modes(tiny_model, corpus):
    d, _, _ = corpus
    out = d / "pairs.tsv"
    r = run(
        "mine",
        d / "src.txt",
        d / "tgt.txt",
        "--model",
        tiny_model,
        "--top",
        "5",
        "-o",
        out,
        "--no-threshold",
    )
    assert r.exit_code == 0 and r.stdout == "" and len(out.read_text().splitlines()) == 5
    one_line_error(
        run("mine", d / "src.txt", d / "tgt.txt", "--model", tiny_model, "-o", out),
        "already exists",
    )


def test_mine_retrieval_modes_match_the_library(tiny_model, tiny_encoder, corpus):
    """Every --retrieval mode gives exactly the pairs of the library's mine() on the unified
    sentences, and the modes relate as they must: intersect = fwd & bwd, union = fwd | bwd."""
    from emmax_cli.mine import mine, unify

    d, _, _ = corpus
    src = (d / "src.txt").read_text().splitlines()
    tgt = (d / "tgt.txt").read_text().splitlines()
    ks, kt = unify(src)[0], unify(tgt)[0]
    S = tiny_encoder.encode([src[i] for i in ks])
    T = tiny_encoder.encode([tgt[i] for i in kt])
    got = {}
    for mode in ("max", "intersect", "fwd", "bwd", "union"):
        r = run(
            "mine", d / "src.txt", d / "tgt.txt", "--model", tiny_model, "--retrieval", mode,
            "--no-threshold", "--with-ids", "--device", "cpu", "--precision", "fp32",
        )  # fmt: skip
        assert r.exit_code == 0, r.stderr
        rows = parse(r.stdout)
        got[mode] = {(int(sid), int(tid)): float(sc) for sc, _, _, sid, tid in rows}
        assert len(got[mode]) == len(rows)  # no pair twice
        for _, s, t, sid, tid in rows:  # texts and ids agree
            assert src[int(sid)] == s and tgt[int(tid)] == t
        ref = mine(S, T, k=4, retrieval=mode)
        want = {
            (int(ks[i]), int(kt[j])): float(x)
            for i, j, x in zip(ref.src_idx, ref.tgt_idx, ref.score, strict=True)
        }
        assert got[mode].keys() == want.keys(), mode
        np.testing.assert_allclose(
            [got[mode][p] for p in want], list(want.values()), atol=2e-6, err_msg=mode
        )
    fwd, bwd = set(got["fwd"]), set(got["bwd"])
    assert len(fwd) == len(ks) and len({s for s, _ in fwd}) == len(ks)  # one pair per source
    assert len(bwd) == len(kt) and len({t for _, t in bwd}) == len(kt)  # one pair per target
    assert set(got["intersect"]) == fwd & bwd
    assert set(got["union"]) == fwd | bwd
    mx = set(got["max"])
    assert len({s for s, _ in mx}) == len({t for _, t in mx}) == len(mx)  # 1-to-1


def test_mine_errors(tiny_model, tmp_path, corpus):
    d, _, _ = corpus
    one_line_error(
        run("mine", d / "nope.txt", d / "tgt.txt", "--model", tiny_model),
        "nope.txt",
        "no such file",
    )
    (d / "empty.txt").write_text("")
    one_line_error(
        run("mine", d / "empty.txt", d / "tgt.txt", "--model", tiny_model), "empty input"
    )
    (d / "bad.txt").write_bytes(b"ok\n\xff\xfe\n")
    one_line_error(
        run("mine", d / "bad.txt", d / "tgt.txt", "--model", tiny_model), "bad.txt line 2"
    )
    one_line_error(
        run("mine", d / "src.txt", d / "tgt.txt", "--model", d / "missing-model"), "missing-model"
    )
    # a Parquet file of another dimension
    with EmbeddingWriter(d / "other.parquet", 16, meta={"model": "x"}) as w:
        w.write(np.arange(3), np.eye(3, 16, dtype=np.float32), ["a", "b", "c"])
    assert run("embed", d / "tgt.txt", "--model", tiny_model).exit_code == 0
    one_line_error(
        run("mine", d / "other.parquet", d / "tgt.parquet", "--model", tiny_model), "dimension 16"
    )
    # a corrupt index
    assert run("index", d / "tgt.parquet", "-o", d / "t.faiss").exit_code == 0
    (d / "t.faiss").write_bytes((d / "t.faiss").read_bytes()[:50])
    r = run("mine", d / "tgt.parquet", d / "t.faiss", "--model", tiny_model)
    one_line_error(r, "t.faiss")
    # not a Parquet embedding file although named so
    (d / "fake.parquet").write_text("hello\n")
    r = run("index", d / "fake.parquet", "-o", d / "f.faiss")
    one_line_error(r, "fake.parquet")
    r = run(
        "mine",
        d / "src.txt",
        d / "tgt.txt",
        "--threshold",
        "1",
        "--no-threshold",
        "--model",
        tiny_model,
    )
    assert r.exit_code == 2


def test_index_shards_and_metadata(tiny_model, corpus):
    d, _, _ = corpus
    for name in ("src", "tgt"):
        assert run("embed", d / f"{name}.txt", "--model", tiny_model).exit_code == 0
    assert run("index", d / "src.parquet", "-o", d / "all.faiss").exit_code == 0
    assert run("index", d / "tgt.parquet", "-o", d / "all.faiss", "--add").exit_code == 0
    meta = json.loads((d / "all.faiss.json").read_text())
    assert meta["ntotal"] == 63 + 60 and meta["factory"] == "Flat" and len(meta["sources"]) == 2


def test_calibrate_writes_threshold(tiny_model, tmp_path):
    rows = [f"{s}\t{s}" for s in sentences(80, 3)]
    (tmp_path / "p.tsv").write_text("\n".join(rows) + "\n")
    r = run("calibrate", tmp_path / "p.tsv", "--model", tiny_model, "-n", "80", "--write")
    assert r.exit_code == 0, r.stderr
    thr = float(r.stdout.splitlines()[1].split("\t")[0])
    meta = json.loads((tiny_model / "emmax.json").read_text())
    assert (
        meta["mine_threshold"] == round(thr, 4)
        and "comparable samples" in meta["mine_threshold_source"]
    )
    (tmp_path / "bad.tsv").write_text("no tab here\n")
    one_line_error(run("calibrate", tmp_path / "bad.tsv", "--model", tiny_model), "bad.tsv line 1")


@pytest.mark.real
def test_tatoeba_deu_eng_mining_default_model(tmp_path, default_encoder):
    """Must show: >= 97% of the 1000 gold pairs at >= 97% precision, default settings (rank
    filter and the other filters on)."""
    de, en = read_tatoeba("deu")
    shuffled = en[:]
    random.Random(0).shuffle(shuffled)
    (tmp_path / "de.txt").write_text("\n".join(de) + "\n")
    (tmp_path / "en.txt").write_text("\n".join(shuffled) + "\n")
    r = run(
        "mine", "--src", "de", "--tgt", "en", tmp_path / "de.txt", tmp_path / "en.txt", filters=True
    )
    assert r.exit_code == 0, r.stderr
    gold = set(zip(de, en, strict=False))
    pairs = [tuple(x[1:3]) for x in parse(r.stdout)]
    correct = sum(p in gold for p in pairs)
    assert correct / len(gold) >= 0.97 and correct / len(pairs) >= 0.97, (correct, len(pairs))
