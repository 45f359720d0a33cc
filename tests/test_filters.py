"""The bitext filters (``filters.py``) one by one, and `emmax mine` with them: rank filter,
per-reason counts, output formats, bad input."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import one_line_error

from emmax_cli.cli import cli
from emmax_cli.filters import (
    FILTER_REASONS,
    FilterConfig,
    apply_filters,
    copy_mask,
    duplicate_mask,
    length_ratio,
    normalize,
)


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_normalize_drops_case_punctuation_digits_whitespace():
    assert normalize(["The 2 cats!", "the  cats", "ÉTÉ, 2024."]) == ["thecats", "thecats", "été"]


def test_copy_mask_exact_near_and_not():
    src = ["Der Hund schläft.", "Der Hund schläft heute.", "Der Hund schläft.", "12:30", "a"]
    tgt = ["der hund schläft", "Der Hund schlaeft heute", "The dog is asleep.", "12:30", "b"]
    assert copy_mask(src, tgt, 0.9).tolist() == [True, True, False, True, False]
    assert copy_mask(src, tgt, 1.0).tolist() == [True, False, False, True, False]


def test_length_ratio_and_duplicates():
    assert length_ratio(np.array([10, 0, 3]), np.array([5, 2, 3])).tolist() == [2.0, 2.0, 1.0]
    src = ["A cat.", "a cat", "A dog.", "A bird 1"]
    tgt = ["Eine Katze.", "Katze!", "Ein Hund.", "Ein Vogel 2"]
    # row 1 repeats row 0's source; rows 2 and 3 are new on both sides
    assert duplicate_mask(src, tgt).tolist() == [False, True, False, False]
    assert duplicate_mask(["x 1", "x 2"], ["y", "z"]).tolist() == [False, True]  # digits


def test_apply_filters_first_reason_wins_and_counts_add_up():
    src = ["Hallo Welt", "Guten Morgen allerseits", "Guten Morgen allerseits!", "kurz", "Tag"]
    tgt = ["Hallo Welt", "Good morning everyone", "Good morning, everyone", "x " * 40, "Day"]
    margin = np.array([1.3, 1.2, 1.1, 1.05, 2.5])
    res = apply_filters(
        FilterConfig(margin_cap=2.0, max_repeats=2),
        src,
        tgt,
        margin,
        below_threshold=np.array([False, False, False, False, False]),
        below_rank=np.array([False, False, False, False, True]),
        src_len=np.array([2, 3, 3, 1, 1]),
        tgt_len=np.array([2, 3, 3, 40, 1]),
        src_repeats=np.array([1, 1, 1, 1, 5]),
        tgt_repeats=np.array([1, 1, 1, 1, 1]),
    )
    assert res.reason_names() == ["copy", "", "duplicate", "length", "rank"]  # rank before all
    assert sum(res.counts.values()) == 4 and res.counts["rank"] == 1
    assert res.keep.tolist() == [False, True, False, False, False]
    assert set(res.counts) == set(FILTER_REASONS)


def test_apply_filters_margin_cap_repeats_and_switches():
    src, tgt = ["a b c", "d e f"], ["x y z", "u v w"]
    m = np.array([3.0, 1.1])
    reps = np.array([1, 9])
    res = apply_filters(
        FilterConfig(margin_cap=2.0), src, tgt, m, src_repeats=reps, tgt_repeats=np.ones(2)
    )
    assert res.reason_names() == ["margin_cap", "repeated"]
    off = FilterConfig(margin_cap=None, copy_ratio=None, max_length_ratio=None, max_repeats=None)
    off.dedup = False
    res = apply_filters(off, src, tgt, m, src_repeats=reps, tgt_repeats=np.ones(2))
    assert res.keep.all()


def test_apply_filters_language_check_runs_on_live_pairs_only():
    seen = []

    def check(texts, lang):
        seen.append((lang, list(texts)))
        return np.array(["?" not in t for t in texts])

    res = apply_filters(
        FilterConfig(src_lang="deu", tgt_lang="eng"),
        ["eins zwei drei", "vier fünf sechs", "sieben acht neun"],
        ["one two three", "four? five six", "seven eight nine"],
        np.ones(3),
        below_threshold=np.array([True, False, False]),
        lang_check=check,
    )
    assert res.reason_names() == ["threshold", "tgt_lang", ""]
    assert seen[0] == ("deu", ["vier fünf sechs", "sieben acht neun"])


# ---- emmax mine with the filters, on the tiny model ------------------------------------------
WORDS = "the a cat dog house water tom mary book good morning hello thank yes no".split()


def sentences(n, seed):
    rng = random.Random(seed)
    return [
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))) + f" {i}" for i in range(n)
    ]


@pytest.fixture
def copies(tmp_path):
    """Identical lines on both sides (the tiny model's "translations": they are copies), plus
    a boilerplate line three times on each side."""
    src = sentences(30, 0) + ["all rights reserved"] * 3
    tgt = src[:20] + sentences(10, 1) + ["all rights reserved"] * 3
    random.Random(2).shuffle(tgt)
    (tmp_path / "s.txt").write_text("\n".join(src) + "\n")
    (tmp_path / "t.txt").write_text("\n".join(tgt) + "\n")
    return tmp_path


def test_mine_filters_count_each_reason_and_no_filters_keeps_them(tiny_model, copies):
    d = copies
    base = ("mine", d / "s.txt", d / "t.txt", "-m", tiny_model, "--threshold", "1.0")

    def same(r):
        assert r.exit_code == 0, r.stderr
        return [s for _, s, t in (ln.split("\t") for ln in r.stdout.splitlines()) if s == t]

    plain = same(run(*base, "--no-filters"))
    assert len(plain) == 21  # the 20 identical sentences and the boilerplate line
    filtered = run(*base, "--no-rank-filter")
    assert same(filtered) == []  # every identical pair is a copy
    assert "removed by:" in filtered.stderr and "repeated 1, copy 20" in " ".join(
        filtered.stderr.split()
    )
    kept = run(*base, "--no-rank-filter", "--no-copy-filter")
    assert len(same(kept)) == 20 and "all rights reserved" not in kept.stdout
    assert "repeated 1" in kept.stderr
    loose = run(*base, "--no-rank-filter", "--no-copy-filter", "--max-repeats", "0")
    assert len(same(loose)) == 21


@pytest.fixture
def headed_model(tiny_model, tiny_encoder):
    """The tiny model with a random GMM head (only the plumbing counts)."""
    import torch

    from emmax_cli.models.gmm import GMMHead

    torch.manual_seed(0)
    head = GMMHead(num_ranks=4, dim=tiny_encoder.dim)
    with torch.no_grad():
        head.mu.normal_(0, 0.05)
    head.save(tiny_model)
    return tiny_model


def test_mine_jsonl_and_parquet_carry_scores_and_reasons(headed_model, copies):
    tiny_model = headed_model
    d = copies
    base = (
        "mine",
        d / "s.txt",
        d / "t.txt",
        "-m",
        tiny_model,
        "--threshold",
        "1.0",
        "--src",
        "en",
        "--tgt",
        "en",
        "--no-lang-filter",
        "--min-rank",
        "0",
    )
    r = run(*base, "--format", "jsonl", "--with-dropped")
    assert r.exit_code == 0, r.stderr
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert {
        "score",
        "cosine",
        "rank",
        "rank_prob",
        "probs",
        "src_id",
        "tgt_id",
        "src_lang",
        "tgt_lang",
        "src",
        "tgt",
        "keep",
        "reason",
    } <= set(rows[0])
    assert all(x["keep"] == (x["reason"] == "") for x in rows)
    assert all(x["src"] != x["tgt"] for x in rows if x["keep"])
    assert {x["reason"] for x in rows} >= {"copy"}
    assert rows[0]["src_lang"] == "en"
    out = d / "p.parquet"
    r = run(*base, "--format", "parquet", "--with-dropped", "-o", out)
    assert r.exit_code == 0, r.stderr
    import pyarrow.parquet as pq

    t = pq.read_table(out)
    assert t.num_rows == len(rows) and t.column("reason").to_pylist() == [x["reason"] for x in rows]
    assert t.schema.field("probs").type.list_size == 4


def test_mine_min_rank_filters_by_the_gmm_head(headed_model, copies):
    tiny_model = headed_model
    from emmax_cli.bitext import mine_files

    d = copies
    every = mine_files(
        d / "s.txt", d / "t.txt", model=tiny_model, threshold=1.0, min_rank=0, filters=None
    )
    probs = every.judged.probs
    assert every.judged.probs.shape == (len(every.candidates.score), 4)
    for r in range(4):
        res = mine_files(
            d / "s.txt", d / "t.txt", model=tiny_model, threshold=1.0, min_rank=r, filters=None
        )
        above = every.candidates.score >= 1.0
        passes = probs[:, r:].sum(1) >= 0.5  # the model has no calibrated rank_prob
        assert len(res.pairs.score) == int((above & passes).sum())
        assert res.dropped["rank"] == int((above & ~passes).sum())


def test_mine_filter_option_errors(tiny_model, copies, tmp_path):
    r = run("mine", copies / "s.txt", copies / "t.txt", "-m", tiny_model, "--min-rank", "3")
    one_line_error(r, "GMM head")
    d = copies
    base = ("mine", d / "s.txt", d / "t.txt", "-m", tiny_model)
    r = run(*base, "--src", "xx-nonsense")
    one_line_error(r, "xx-nonsense")
    r = run(*base, "--format", "parquet")
    assert r.exit_code == 2 and "needs -o" in r.stderr
    r = run(*base, "--with-dropped")
    assert r.exit_code == 2
    r = run(*base, "--min-rank", "2", "--no-filters")
    assert r.exit_code == 2
    r = run(*base, "--margin-cap", "1.2", "--no-margin-cap")
    assert r.exit_code == 2
    assert not list(tmp_path.glob("*.parquet"))


def test_length_ratio_is_relative_to_the_median_of_the_kept_pairs():
    rng = np.random.default_rng(0)
    tgt_len = rng.integers(10, 30, 100)
    src_len = np.round(tgt_len * 3.0 * rng.uniform(0.9, 1.1, 100)).astype(int)  # a 3:1 language
    src_len[:5] = tgt_len[:5] * 9  # targets cut to a third of a 3:1 translation
    src = tgt = ["x"] * 100
    cfg = FilterConfig(copy_ratio=None, dedup=False)
    res = apply_filters(cfg, src, tgt, np.ones(100), src_len=src_len, tgt_len=tgt_len)
    assert np.flatnonzero(~res.keep).tolist() == [0, 1, 2, 3, 4]
    absolute = FilterConfig(copy_ratio=None, dedup=False, length_relative=False)
    res = apply_filters(absolute, src, tgt, np.ones(100), src_len=src_len, tgt_len=tgt_len)
    assert (~res.keep).sum() > 90  # the 3:1 language pair itself fails a fixed ratio


def test_normalize_is_stable_under_case_changes():
    assert normalize(["İzmir 1"]) == normalize(["i̇zmir"])
    assert normalize(["ＡＢＣ１"]) == normalize(["abc"])  # full-width forms (NFKC)
