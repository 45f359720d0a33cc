"""`emmax score` and ``score.score_files``: columns and formats, the margin against a brute-force
computation, filter reasons, --keep-only, stdin, one-line errors, and the real default model."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import TATOEBA, one_line_error, read_tatoeba

from emmax_cli.cli import cli
from emmax_cli.errors import InputError
from emmax_cli.models.gmm import fit_gmm_interpolation
from emmax_cli.score import COLUMNS, SCORE_REASONS, score_files

SRC = [
    "guten morgen tom",
    "the cat and the dog",
    "merci beaucoup",
    "mary has a book",
    "ich bin ein hund",
    "hello you",
    "das ist nicht gut",
    "le chat est avec la maison",
    "where is the house",
    "tom is not here today",
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
    "wo ist das haus",
    "tom ist heute nicht hier",
]
NO_LANG = [c for c in COLUMNS if "lang" not in c]


def run(*args, input=None, ok=True):
    return CliRunner().invoke(cli, [str(a) for a in args], input=input, catch_exceptions=not ok)


def write(path, lines):
    path.write_text("".join(x + "\n" for x in lines), encoding="utf-8")
    return path


def tsv_rows(text):
    lines = text.splitlines()
    return lines[0].split("\t"), [
        dict(zip(lines[0].split("\t"), ln.split("\t"), strict=True)) for ln in lines[1:]
    ]


@pytest.fixture(scope="module")
def tiny_head(tiny_encoder):
    q, t = tiny_encoder.encode(SRC * 4), tiny_encoder.encode(TGT * 4)
    return fit_gmm_interpolation(q, t, steps=5, batch_pairs=256, seed=0)


@pytest.fixture
def ranked_model(tiny_model, tiny_head):
    tiny_head.save(tiny_model)
    return tiny_model


@pytest.fixture
def files(tmp_path):
    return write(tmp_path / "a.txt", SRC), write(tmp_path / "b.txt", TGT)


def brute_force_margin(x, y, k=4):
    """margin_i = cos(x_i, y_i) / ((mean top-k cos of x_i among y + of y_i among x) / 2)."""
    s = x @ y.T
    mx = -np.sort(-s, axis=1)[:, :k].mean(1)
    my = -np.sort(-s.T, axis=1)[:, :k].mean(1)
    return np.diag(s) / ((mx + my) / 2)


# ---- columns, formats, the margin --------------------------------------------------------------
def test_tsv_has_every_column_with_a_head(ranked_model, files):
    r = run("score", *files, "-m", ranked_model, "--device", "cpu", "--min-rank", "0")
    assert r.exit_code == 0, r.stderr
    header, rows = tsv_rows(r.stdout)
    assert header == NO_LANG and len(rows) == len(SRC)
    for row in rows:
        assert 0 <= int(row["rank"]) <= 3 and 0 <= float(row["p_top"]) <= 1
        assert row["keep"] == "1" and row["reason"] == ""
    assert f"kept {len(SRC)} of {len(SRC)} pairs; dropped: none" in " ".join(r.stderr.split())


def test_margin_equals_brute_force(tiny_encoder, files, tmp_path):
    out = tmp_path / "s.jsonl"
    spool = tmp_path / "spool"
    spool.mkdir()
    res = score_files(
        *files, out, model=tiny_encoder, fmt="jsonl", chunk_lines=3, block_size=4, tmp_dir=spool
    )
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    x, y = tiny_encoder.encode(SRC), tiny_encoder.encode(TGT)
    np.testing.assert_allclose([r["margin"] for r in rows], brute_force_margin(x, y), atol=2e-5)
    np.testing.assert_allclose([r["cosine"] for r in rows], np.sum(x * y, 1), atol=2e-5)
    assert [r["id"] for r in rows] == list(range(len(SRC)))
    assert res.pairs == len(SRC) and res.min_rank is None and "rank" not in res.columns
    assert not list(spool.iterdir())  # the temporary embeddings are gone


def test_no_margin_is_one_streaming_pass(tiny_encoder, files, tmp_path):
    a = score_files(*files, tmp_path / "a.jsonl", model=tiny_encoder, fmt="jsonl")
    b = score_files(*files, tmp_path / "b.jsonl", model=tiny_encoder, fmt="jsonl", margin=False)
    assert "margin" in a.columns and "margin" not in b.columns
    ra = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    rb = [json.loads(x) for x in (tmp_path / "b.jsonl").read_text().splitlines()]
    assert [r["cosine"] for r in ra] == [r["cosine"] for r in rb]


def test_jsonl_and_parquet(ranked_model, files, tmp_path):
    r = run("score", *files, "-m", ranked_model, "--format", "jsonl", "--min-rank", "0")
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert len(rows) == len(SRC) and rows[3]["id"] == 3 and len(rows[3]["probs"]) == 4
    assert set(rows[0]) == {"id", "probs", *NO_LANG} and rows[0]["reason"] is None
    assert abs(sum(rows[0]["probs"]) - 1) < 1e-4 and rows[0]["p_top"] == rows[0]["probs"][-1]
    out = tmp_path / "s.parquet"
    r = run("score", *files, "-m", ranked_model, "--format", "parquet", "-o", out)
    assert r.exit_code == 0, r.stderr
    t = pq.read_table(out)
    assert t.column_names == ["id", *NO_LANG, "probs"] and t.num_rows == len(SRC)
    assert json.loads(t.schema.metadata[b"emmax"])["min_rank"] == 3
    keep, rank = t.column("keep").to_pylist(), t.column("rank").to_pylist()
    assert t.column("reason").to_pylist() == [None if k else "rank" for k in keep]
    probs = np.array(t.column("probs").to_pylist())
    assert keep == (probs[:, 3] >= 0.5).tolist()  # no calibrated rank_prob: 0.5
    assert all(r == 3 for k, r in zip(keep, rank, strict=True) if k)


# ---- verdicts ---------------------------------------------------------------------------------
REASON_PAIRS = [
    ("the cat and the dog", "die katze und der hund"),  # kept
    ("hello you", "Hello, you!"),  # copy
    ("", "good morning"),  # empty
    ("the cat is with the house and the dog and mary and tom", "chat"),  # length (12 vs 1)
    ("mary has a book", "mary hat ein buch"),  # kept
    ("tom is here", "   "),  # empty (blank)
    ("Mary has a book!", "eine andere übersetzung"),  # duplicate source (across chunks)
    ("ich bin ein hund", "i am a dog"),  # kept
    ("wo ist das haus", "MARY HAT EIN BUCH"),  # duplicate target
]


def test_reasons_and_keep_only(tiny_model, tmp_path):
    pairs = write(tmp_path / "p.tsv", [f"{s}\t{t}" for s, t in REASON_PAIRS])
    r = run("score", pairs, "-m", tiny_model, "--chunk-lines", "2", "--no-margin")
    assert r.exit_code == 0, r.stderr
    header, rows = tsv_rows(r.stdout)
    assert header == ["cosine", "length_ratio", "keep", "reason"]
    reasons = [row["reason"] for row in rows]
    assert reasons == ["", "copy", "empty", "length", "", "empty", "duplicate", "", "duplicate"]
    assert float(rows[3]["length_ratio"]) > 2.5
    err = " ".join(r.stderr.split())  # log lines may wrap
    assert "model tiny-0 has no GMM head" in err
    assert "kept 3 of 9 pairs; dropped: empty 2, copy 1, duplicate 2, length 1" in err
    out = tmp_path / "kept.tsv"
    r = run("score", pairs, "-m", tiny_model, "--keep-only", "-o", out)
    assert r.exit_code == 0, r.stderr
    kept = [f"{s}\t{t}" for (s, t), why in zip(REASON_PAIRS, reasons, strict=True) if not why]
    assert out.read_text(encoding="utf-8").splitlines() == kept
    # every filter off but the empty sides
    r = run("score", pairs, "-m", tiny_model, "--no-filters", "--no-margin")
    assert [row["reason"] for row in tsv_rows(r.stdout)[1]] == [
        "empty" if "empty" in why else "" for why in reasons
    ]
    off = ["--no-copy-filter", "--max-length-ratio", "0", "--no-dedup", "--no-margin"]
    r = run("score", pairs, "-m", tiny_model, *off)
    assert [row["reason"] for row in tsv_rows(r.stdout)[1]].count("") == 7


def test_rank_threshold_and_margin_cap(ranked_model, files, tiny_encoder, tmp_path):
    r = run("score", *files, "-m", ranked_model, "--threshold", "1e9", "--no-filters")
    assert {row["reason"] for row in tsv_rows(r.stdout)[1]} == {"threshold"}
    r = run("score", *files, "-m", ranked_model, "--margin-cap", "-1e9", "--min-rank", "0")
    assert {row["reason"] for row in tsv_rows(r.stdout)[1]} == {"margin_cap"}
    r = run("score", *files, "-m", ranked_model)  # default: the top rank
    rows = tsv_rows(r.stdout)[1]
    assert all((row["reason"] == "rank") == (float(row["p_top"]) < 0.5) for row in rows)
    one_line_error(run("score", *files, "-m", ranked_model, "--min-rank", "4"), "ranks go from 0")
    r = run("score", *files, "-m", tiny_encoder.root, "--min-rank", "2")
    one_line_error(r, "--min-rank needs a GMM head")
    assert run("score", *files, "--no-margin", "--threshold", "1").exit_code == 2


def test_languages(tiny_model, tmp_path):
    pytest.importorskip("emmax_cli.langid")
    pairs = [
        ("Das Wetter ist heute sehr schön.", "The weather is very nice today."),
        ("The weather is very nice today.", "The weather is really nice today."),
        ("Ich habe keine Zeit für dieses Buch.", "Je n'ai pas le temps pour ce livre."),
    ]
    p = write(tmp_path / "p.tsv", [f"{s}\t{t}" for s, t in pairs])
    r = run("score", p, "-m", tiny_model, "--src", "de", "--tgt", "en", "--no-copy-filter")
    assert r.exit_code == 0, r.stderr
    header, rows = tsv_rows(r.stdout)
    assert header == ["cosine", "margin", "src_lang_ok", "tgt_lang_ok", *COLUMNS[-3:]]
    oks = [(x["src_lang_ok"], x["tgt_lang_ok"]) for x in rows]
    assert oks == [("1", "1"), ("0", "1"), ("1", "0")]
    assert [x["reason"] for x in rows] == ["", "src_lang", "tgt_lang"]
    r = run("score", p, "-m", tiny_model, "--src", "de", "--tgt", "en", "--no-lang-filter")
    assert [x["reason"] for x in tsv_rows(r.stdout)[1]] == ["", "", ""]


# ---- inputs and errors ------------------------------------------------------------------------
def test_stdin(tiny_model, files):
    text = "".join(f"{s}\t{t}\n" for s, t in zip(SRC, TGT, strict=True))
    r = run("score", "-", "-m", tiny_model, "--format", "jsonl", input=text)
    assert r.exit_code == 0, r.stderr
    assert len(r.stdout.splitlines()) == len(SRC)
    r2 = run(
        "score", "-", files[1], "-m", tiny_model, "--format", "jsonl", input=files[0].read_text()
    )
    assert r2.stdout == r.stdout


@pytest.mark.parametrize(
    "case, needle",
    [
        ("ragged", "has 10 lines but"),
        ("bad_tsv", "p.tsv line 2: expected two tab-separated columns"),
        ("empty", "empty input"),
        ("missing", "no such file"),
        ("undecodable", "line 2: cannot decode as utf-8"),
        ("unknown_lang", "xx"),
        ("exists", "output already exists"),
    ],
)
def test_bad_input_is_one_line_and_no_output(case, needle, tiny_model, files, tmp_path):
    out = tmp_path / "out.tsv"
    args = [*files]
    if case == "ragged":
        args = [files[0], write(tmp_path / "short.txt", TGT[:7])]
    elif case == "bad_tsv":
        args = [write(tmp_path / "p.tsv", ["a\tb", "no tab here", "c\td"])]
    elif case == "empty":
        args = [write(tmp_path / "e.tsv", [])]
    elif case == "missing":
        args = [tmp_path / "nope.txt", files[1]]
    elif case == "undecodable":
        (tmp_path / "bad.txt").write_bytes(b"ok\n\xff\xfe broken\n" + b"x\n" * 8)
        args = [tmp_path / "bad.txt", files[1]]
    elif case == "unknown_lang":
        pytest.importorskip("emmax_cli.langid")
        args += ["--src", "xx"]
    elif case == "exists":
        out.write_text("keep me")
    before = sorted(tmp_path.iterdir())
    r = run("score", *args, "-m", tiny_model, "-o", out, ok=False)
    one_line_error(r, needle)
    assert sorted(tmp_path.iterdir()) == before  # no output, no temporary file
    assert case != "exists" or out.read_text() == "keep me"


def test_library_errors(tiny_encoder, files, tmp_path):
    with pytest.raises(InputError, match="parquet needs an output file"):
        score_files(*files, model=tiny_encoder, fmt="parquet")
    with pytest.raises(InputError, match="need the margin"):
        score_files(*files, model=tiny_encoder, margin=False, threshold=1.0)
    with pytest.raises(InputError, match="no such folder"):
        score_files(*files, model=tiny_encoder, tmp_dir=tmp_path / "nope")
    assert SCORE_REASONS[0] == "empty"


# ---- the real default model -------------------------------------------------------------------
@pytest.mark.skipif(not TATOEBA.exists(), reason="../shared/data is not available")
def test_real_model_on_tatoeba(default_encoder, tmp_path):
    de, en = read_tatoeba("deu")
    src, tgt = de[:12], en[:12]
    tgt = tgt[:6] + tgt[7:] + tgt[6:7]  # the first 6 pairs aligned, the rest not
    pairs = write(tmp_path / "p.tsv", [f"{s}\t{t}" for s, t in zip(src, tgt, strict=True)])
    out = tmp_path / "s.jsonl"
    langs = {}
    try:
        import emmax_cli.langid  # noqa: F401

        langs = {"src_lang": "de", "tgt_lang": "en"}
    except ImportError:
        pass
    res = score_files(pairs, None, out, model=default_encoder, fmt="jsonl", **langs)
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert res.min_rank == 3 and res.model == "emmax-small"
    assert all(r["rank"] == 3 and r["keep"] and r["margin"] > 1 for r in rows[:6])
    assert all(not r["keep"] and r["reason"] == "rank" for r in rows[6:])
    assert min(r["cosine"] for r in rows[:6]) > max(r["cosine"] for r in rows[6:])
    if langs:
        assert all(r["src_lang_ok"] and r["tgt_lang_ok"] for r in rows)
