"""emmax eval: golden tests of the metrics (BUCC P/R/F1 and threshold, retrieval, xsim,
geometry), tiny-model runs of every evaluation and CLI command, and a few real-model checks
against the published base-model figures (``real``)."""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import one_line_error

from emmax_cli.cli import cli
from emmax_cli.errors import EmmaxError, InputError
from emmax_cli.eval import bucc, geometry, tatoeba, xsim

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DATA = SHARED / "data"
TATOEBA = DATA / "tatoeba" / "v1"
needs_data = pytest.mark.skipif(not DATA.exists(), reason="../shared/data is not available")


def unit(x):
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# ---- BUCC metric and threshold: hand-computed ---------------------------------------------------
def test_bucc_metrics_hand_computed():
    pred = [
        ("de1", "en1"),
        ("de2", "en2"),
        ("de3", "en3"),
        ("de3", "en3"),
    ]  # a repeated pair counts once
    gold = [("de1", "en1"), ("de2", "en9"), ("de4", "en4")]
    m = bucc.bucc_metrics(pred, gold)
    # |E| = 3, |G| = 3, |E ∩ G| = 1 -> P = R = F1 = 1/3
    assert (m["n_pred"], m["n_gold"], m["n_correct"]) == (3, 3, 1)
    assert m["precision"] == pytest.approx(1 / 3) and m["recall"] == pytest.approx(1 / 3)
    assert m["f1"] == pytest.approx(1 / 3)
    # 2 of 2 extracted are right, 2 of 4 gold found: P = 1, R = 1/2, F1 = 2*1*.5/1.5 = 2/3
    m = bucc.bucc_metrics(
        [("a", "1"), ("b", "2")], [("a", "1"), ("b", "2"), ("c", "3"), ("d", "4")]
    )
    assert (m["precision"], m["recall"], m["f1"]) == pytest.approx((1.0, 0.5, 2 / 3))
    assert bucc.bucc_metrics([], gold)["f1"] == 0.0
    assert bucc.bucc_metrics(pred, [])["recall"] == 0.0


def _cands(scores, correct):
    pairs = [(f"s{i}", f"t{i}" if c else f"x{i}") for i, c in enumerate(correct)]
    gold = {(f"s{i}", f"t{i}") for i, c in enumerate(correct) if c}
    return bucc.Candidates(pairs, np.asarray(scores, np.float32)), gold


def test_threshold_midpoint_with_ties():
    # scores 1.10 T | 1.08 T, 1.08 F (a tie: one group) | 1.05 T | 1.01 F;
    # 4 gold pairs (one never mined)
    c, gold = _cands([1.10, 1.08, 1.08, 1.05, 1.01], [1, 1, 0, 1, 0])
    gold = gold | {("s_missing", "t_missing")}
    # after 1.10: tp 1, P 1,   R 1/4, F1 0.4
    # after 1.08: tp 2, P 2/3, R 1/2, F1 4/7   (the tie is never split)
    # after 1.05: tp 3, P 3/4, R 3/4, F1 0.75  <- best
    # after 1.01: tp 3, P 3/5, R 3/4, F1 2/3
    thr, p, r, f1 = bucc.tune_threshold(c, gold)
    assert thr == pytest.approx((1.05 + 1.01) / 2, abs=1e-6)
    assert (p, r, f1) == pytest.approx((0.75, 0.75, 0.75))
    # applying the threshold reproduces the tuned figures
    m = bucc.bucc_metrics(c.above(thr), gold)
    assert (m["precision"], m["recall"], m["f1"]) == pytest.approx((p, r, f1))


def test_threshold_tie_at_the_end_is_one_group():
    # 1.2 T | 1.1 T, 1.1 F: walking item by item would stop after the first 1.1 (F1 = 1) with a
    # threshold of 1.1 that keeps the wrong 1.1 as well; as one group: P 2/3, R 1, F1 0.8,
    # and the best group is the last one, so the threshold is its own score.
    c, gold = _cands([1.2, 1.1, 1.1], [1, 1, 0])
    thr, p, r, f1 = bucc.tune_threshold(c, gold)
    assert thr == pytest.approx(1.1, abs=1e-6)
    assert (p, r, f1) == pytest.approx((2 / 3, 1.0, 0.8))
    m = bucc.bucc_metrics(c.above(thr), gold)
    assert m["f1"] == pytest.approx(0.8)


def test_threshold_best_at_last_item_is_clamped():
    c, gold = _cands([1.3, 1.2, 1.1], [1, 1, 1])  # F1 grows to 1.0 at the last candidate
    thr, p, r, f1 = bucc.tune_threshold(c, gold)
    assert thr == pytest.approx(1.1, abs=1e-6)  # no next item: its own score, not an IndexError
    assert (p, r, f1) == (1.0, 1.0, 1.0)
    assert len(c.above(thr)) == 3


def test_threshold_first_best_wins():
    # F1 0.667 after the 1st, 0.5 after the 2nd, 0.8 after the 3rd, 0.667 after the 4th
    c, gold = _cands([1.4, 1.3, 1.2, 1.1], [1, 0, 1, 0])
    thr, p, r, f1 = bucc.tune_threshold(c, gold)
    assert thr == pytest.approx(1.15, abs=1e-6)
    assert (p, r, f1) == pytest.approx((2 / 3, 1.0, 0.8))
    with pytest.raises(InputError):
        bucc.tune_threshold(c, set())


def test_bucc_readers_and_duplicate_texts(tmp_path):
    bucc.write_split(
        tmp_path,
        "de",
        "sample",
        [("de-1", "Hallo Welt"), ("de-2", "Guten Morgen"), ("de-3", "Hallo Welt")],
        [("en-1", "Hello world"), ("en-2", "Good morning")],
        [("de-2", "en-2")],
    )
    s = bucc.find_split(tmp_path, "de", bucc.SAMPLE_SPLITS)
    assert (s.pair, s.split, s.src_ids, s.tgt_texts) == (
        "de-en",
        "sample",
        ["de-1", "de-2", "de-3"],
        ["Hello world", "Good morning"],
    )
    assert s.gold == {("de-2", "en-2")}
    # "Hallo Welt" occurs twice: it is dropped from the text -> id map (LASER)
    assert bucc._unique_text_ids(s.src_ids, s.src_texts) == {"Guten Morgen": "de-2"}
    assert bucc.available_pairs(tmp_path) == ["de-en"]
    assert bucc.pair_lang("fr-en") == "fr" and bucc.pair_lang("zh") == "zh"
    with pytest.raises(InputError):
        bucc.find_split(tmp_path, "fr", bucc.SAMPLE_SPLITS)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "de-en.sample.de").write_text("no tab here\n")
    (tmp_path / "bad" / "de-en.sample.en").write_text("en-1\tx\n")
    with pytest.raises(InputError, match="ID<TAB>sentence"):
        bucc.find_split(tmp_path / "bad", "de", bucc.SAMPLE_SPLITS)


def _read_tsv(path: Path) -> list[tuple[str, str]]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        a, _, b = line.partition("\t")
        out.append((a, b))
    return out


def make_bucc_set(root: Path, n_gold=(40, 150), n_fill=(300, 1000), seed=0) -> tuple[Path, Path]:
    """A BUCC-format de-en set from the shared train data: gold pairs from wmt/deu-eng.tsv
    hidden among German lines of other deu-eng pairs (their English side left out) and English
    lines of wmt/fra-eng.tsv that are not in deu-eng at all. Returns (sample_dir, test_dir)."""
    de_en = _read_tsv(DATA / "train" / "wmt" / "deu-eng.tsv")
    en_all = {e for _, e in de_en}
    de_all = {d for d, _ in de_en}
    en_fill = sorted({e for _, e in _read_tsv(DATA / "train" / "wmt" / "fra-eng.tsv")} - en_all)
    rng = random.Random(seed)
    rows = rng.sample(range(len(de_en)), sum(n_gold) + sum(n_fill))
    rng.shuffle(en_fill)
    dirs = []
    start, efill = 0, 0
    for split, ng, nf in (("sample", n_gold[0], n_fill[0]), ("training", n_gold[1], n_fill[1])):
        gold_rows = rows[start : start + ng]
        fill_rows = rows[start + ng : start + ng + nf]
        start += ng + nf
        src = [(de_en[i][0], de_en[i][1]) for i in gold_rows] + [
            (de_en[i][0], None) for i in fill_rows
        ]
        tgt = [(de_en[i][1], de_en[i][0]) for i in gold_rows] + [
            (e, None) for e in en_fill[efill : efill + nf] if e not in de_all
        ]
        efill += nf
        rng.shuffle(src)
        rng.shuffle(tgt)
        s_ids = {t: f"de-{i:09d}" for i, (t, _) in enumerate(src)}
        t_ids = {t: f"en-{i:09d}" for i, (t, _) in enumerate(tgt)}
        gold = [(s_ids[de_en[i][0]], t_ids[de_en[i][1]]) for i in gold_rows]
        d = root / split
        bucc.write_split(
            d, "de", split, [(s_ids[t], t) for t, _ in src], [(t_ids[t], t) for t, _ in tgt], gold
        )
        dirs.append(d)
    return dirs[0], dirs[1]


@needs_data
def test_eval_bucc_tiny_model_on_a_built_set(tmp_path, tiny_encoder):
    sample, test = make_bucc_set(tmp_path, n_gold=(40, 150), n_fill=(300, 1000))
    assert len((test / "de-en.training.gold").read_text().splitlines()) == 150
    res = bucc.eval_bucc(tiny_encoder, sample, test, pairs="de-en")
    (p,) = res.pairs
    assert (p.pair, p.tune_split, p.test_split) == ("de-en", "sample", "training")
    assert p.n_gold == 150 and p.n_src == 1150
    assert np.isfinite(p.threshold)
    for v in (p.precision, p.recall, p.f1, p.tune_precision, p.tune_recall, p.tune_f1):
        assert 0.0 <= v <= 1.0
    assert p.n_correct <= min(p.n_pred, p.n_gold)
    d = json.loads(json.dumps(res.to_dict()))
    assert d["pairs"]["de-en"]["n_gold"] == 150


@pytest.mark.real
@needs_data
def test_eval_bucc_real_model_small_set(tmp_path, real_encoder):
    sample, test = make_bucc_set(tmp_path, n_gold=(20, 50), n_fill=(60, 100), seed=1)
    res = bucc.eval_bucc(real_encoder, sample, test)
    (p,) = res.pairs
    assert p.f1 > 0.8, p
    assert 0.95 < p.threshold < 1.3


# ---- retrieval, tatoeba -----------------------------------------------------------------------
def _ref_margin_retrieve(X, Y, k, margin):
    """LASER xsim, written as loops (the reference for retrieve_both)."""
    S = X @ Y.T
    kx, ky = min(k, len(Y)), min(k, len(X))
    mx = np.sort(S, axis=1)[:, ::-1][:, :kx].mean(1)
    my = np.sort(S, axis=0)[::-1][:ky].mean(0)
    out = []
    for i in range(len(X)):
        cand = np.argsort(-S[i], kind="stable")[:kx]
        best, arg = -np.inf, -1
        for j in cand:
            avg = (mx[i] + my[j]) / 2
            sc = S[i, j] / avg if margin == "ratio" else S[i, j] - avg
            if sc > best:
                best, arg = sc, j
        out.append(arg)
    return np.array(out)


@pytest.mark.parametrize("margin", [None, "ratio", "distance"])
def test_retrieve_both_matches_reference(margin):
    rng = np.random.default_rng(0)
    X, Y = unit(rng.normal(size=(70, 16))), unit(rng.normal(size=(50, 16)))
    fwd, bwd = xsim.retrieve_both(X, Y, margin=margin, k=4, block=16)  # several blocks
    if margin is None:
        S = X @ Y.T
        assert (fwd == S.argmax(1)).all() and (bwd == S.argmax(0)).all()
    else:
        assert (fwd == _ref_margin_retrieve(X, Y, 4, margin)).all()
        assert (bwd == _ref_margin_retrieve(Y, X, 4, margin)).all()


def test_knn_both_exact_across_blocks():
    rng = np.random.default_rng(1)
    X, Y = unit(rng.normal(size=(37, 8))), unit(rng.normal(size=(29, 8)))
    fs, fi, bs, bi = xsim.knn_both(X, Y, 5, block=7)
    S = X @ Y.T
    assert np.allclose(fs, -np.sort(-S, axis=1)[:, :5], atol=1e-6)
    assert np.allclose(bs, -np.sort(-S.T, axis=1)[:, :5], atol=1e-6)
    assert np.allclose(np.take_along_axis(S, fi, 1), fs) and np.allclose(
        np.take_along_axis(S.T, bi, 1), bs
    )


def test_ratio_margin_demotes_a_hub():
    # x_i = e_i (i < 6); the hub h = normalised sum of the e_i has cos 1/sqrt(6) = 0.408 with
    # every x; the true partner y_i = 0.38 e_i + 0.925 e_7 has cos 0.38. Cosine picks the hub
    # every time. k = 4 means: x_i 0.197, h 0.408, y_i 0.095, so ratio(x_i, h) = 0.408 / 0.303
    # = 1.35 < ratio(x_i, y_i) = 0.38 / 0.146 = 2.6: the margin picks the partner.
    d, n = 8, 6
    X = np.eye(d, dtype=np.float32)[:n]
    hub = unit(X.sum(0, keepdims=True))
    Yp = 0.38 * X + np.sqrt(1 - 0.38**2) * np.eye(d, dtype=np.float32)[7]
    Y = np.vstack([hub, Yp]).astype(np.float32)
    cos_fwd, _ = xsim.retrieve_both(X, Y, margin=None)
    ratio_fwd, _ = xsim.retrieve_both(X, Y, margin="ratio", k=4)
    assert (cos_fwd == 0).all()
    assert (ratio_fwd == np.arange(1, n + 1)).all()


def test_tatoeba_score_lang_index_vs_text_based():
    eng = ["Hi.", "Hi.", "Thanks.", "Bye."]  # a duplicate English line (as in low-resource sets)
    xx = ["Salut.", "Coucou.", "Merci.", "Au revoir."]
    E = unit([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]])
    X = unit([[1, 0.1, 0], [1, 0, 0.1], [0, 1, 0], [0, 0.1, 1]])
    r = tatoeba.score_lang("fra", X, E, xx, eng)
    # xx->eng: "Coucou." retrieves line 0 ("Hi.", first of the tie): wrong by index, right by text
    assert (r.n, r.xx2eng, r.xx2eng_text) == (4, 0.75, 1.0)
    # eng->xx: both "Hi." lines retrieve the same French line: one index error, one text error
    assert (r.eng2xx, r.eng2xx_text) == (0.75, 0.75)
    assert r.mean == pytest.approx(0.75)


def _small_tatoeba(root: Path, langs=("deu", "fra"), n=40) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for lg in langs:
        for side in (lg, "eng"):
            src = TATOEBA / f"tatoeba.{lg}-eng.{side}"
            lines = src.read_text(encoding="utf-8").splitlines()[:n]
            (root / src.name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


@needs_data
def test_eval_tatoeba_tiny_model(tmp_path, tiny_encoder):
    d = _small_tatoeba(tmp_path / "tat")
    res = tatoeba.eval_tatoeba(tiny_encoder, d, langs="deu,fra")
    assert [r.lang for r in res.languages] == ["deu", "fra"]
    for r in res.languages:
        assert r.n == 40 and 0 <= r.xx2eng <= r.xx2eng_text <= 1
    assert "xtreme36" not in res.averages and res.averages["all"]["n_langs"] == 2
    assert res.averages["all"]["xx2eng"] == pytest.approx(
        np.mean([r.xx2eng for r in res.languages])
    )
    res_m = tatoeba.eval_tatoeba(tiny_encoder, d, langs=["fra"], margin="ratio")
    assert res_m.to_dict()["retrieval"] == "ratio margin, k=4"
    with pytest.raises(InputError, match="xyz"):
        tatoeba.eval_tatoeba(tiny_encoder, d, langs="deu,xyz")


@needs_data
def test_resolve_langs():
    assert len(tatoeba.XTREME36) == 36 and len(set(tatoeba.XTREME36)) == 36
    assert tatoeba.resolve_langs(TATOEBA, "xtreme") == list(tatoeba.XTREME36)
    assert len(tatoeba.resolve_langs(TATOEBA, "all")) == 112
    assert tatoeba.resolve_langs(TATOEBA, " deu, fra,deu") == ["deu", "fra"]


@pytest.mark.real
@needs_data
@pytest.mark.parametrize("lang", ["swh", "tel", "jav"])  # small sets (390, 234, 205 lines)
def test_tatoeba_reproduces_base_figures(real_encoder, lang):
    ref = json.loads((SHARED / "docs" / "base-tatoeba.json").read_text())[lang]
    (r,) = tatoeba.eval_tatoeba(real_encoder, TATOEBA, langs=[lang]).languages
    assert abs(r.xx2eng - ref["xx2eng"]) <= 0.005, (r, ref)
    assert abs(r.eng2xx - ref["eng2xx"]) <= 0.005, (r, ref)


# ---- xsim -------------------------------------------------------------------------------------
def test_xsim_from_embeddings_golden():
    rng = np.random.default_rng(3)
    a = unit(rng.normal(size=(20, 32)))
    embs = {"aaa": a, "bbb": unit(a + 0.05 * rng.normal(size=a.shape)), "ccc": a[::-1].copy()}
    res = xsim.xsim_from_embeddings(embs, margin="ratio")
    M = np.array([[np.nan if v is None else v for v in row] for row in res.matrix])
    assert np.isnan(np.diag(M)).all()
    assert M[0, 1] == 0 and M[1, 0] == 0  # near-copies align perfectly
    assert M[0, 2] == 100 and M[2, 0] == 100  # reversed order: every line wrong
    assert res.average == pytest.approx(M[~np.isnan(M)].mean())
    assert res.per_lang["aaa"]["as_source"] == pytest.approx(50.0)


def _multiway(root: Path, langs=("eng", "deu", "fra"), n=30) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for lg in langs:
        lines = (
            (DATA / "flores200" / "devtest" / f"{lg}.txt")
            .read_text(encoding="utf-8")
            .splitlines()[:n]
        )
        (root / f"{lg}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (root / "sent_ids.txt").write_text("\n".join(str(i) for i in range(n)) + "\n")  # ignored
    return root


@needs_data
def test_eval_xsim_tiny_model(tmp_path, tiny_encoder):
    d = _multiway(tmp_path / "mw")
    res = xsim.eval_xsim(tiny_encoder, d)
    assert res.langs == ["deu", "eng", "fra"] and res.n == 30 and res.margin == "ratio"
    assert all(0 <= v <= 100 for row in res.matrix for v in row if v is not None)
    assert 0 <= res.average_text <= res.average <= 100
    res = xsim.eval_xsim(tiny_encoder, d, langs=["eng", "fra"], margin=None, n=10)
    assert res.n == 10 and res.to_dict()["margin"] == "cosine"
    (d / "deu.txt").write_text("only one line\n")
    with pytest.raises(InputError, match="not line-aligned"):
        xsim.eval_xsim(tiny_encoder, d)


# ---- geometry ---------------------------------------------------------------------------------
def test_invariance_cosines_closed_form_matches_brute_force():
    rng = np.random.default_rng(4)
    L, n = 3, 5
    E = unit(rng.normal(size=(L * n, 6))).reshape(L, n, 6)
    got = geometry.invariance_cosines(E)
    trans, cross, mono, anyp = [], [], [], []
    for a in range(L):
        for i in range(n):
            for b in range(L):
                for j in range(n):
                    if (a, i) == (b, j):
                        continue
                    c = float(E[a, i] @ E[b, j])
                    if i == j:
                        trans.append(c)
                    elif a == b:
                        mono.append(c)
                    else:
                        cross.append(c)
                    if i != j:
                        anyp.append(c)
    assert got["translation"] == pytest.approx(np.mean(trans), abs=1e-6)
    assert got["random_crosslingual"] == pytest.approx(np.mean(cross), abs=1e-6)
    assert got["random_monolingual"] == pytest.approx(np.mean(mono), abs=1e-6)
    assert got["random_any"] == pytest.approx(np.mean(anyp), abs=1e-6)


def test_calinski_harabasz_hand_computed():
    # centroids 1 and 11, grand mean 6: B = 2*25 + 2*25 = 100, W = 4 x 1 = 4; k = 2, N = 4
    X = np.array([[0.0], [2.0], [10.0], [12.0]])
    assert geometry.calinski_harabasz(X, np.array([0, 0, 1, 1])) == pytest.approx(
        (100 / 1) / (4 / 2)
    )
    with pytest.raises(InputError):
        geometry.calinski_harabasz(X, np.zeros(4))


def test_partition_ratio():
    X = np.array([[1.0, 0], [-1, 0], [0, 1], [0, -1]])  # symmetric: Z(u) equal for all ±u
    assert geometry.partition_ratio(X) == pytest.approx(1.0)
    rng = np.random.default_rng(5)
    cone = unit(np.array([5.0] + [0] * 7) + rng.normal(size=(200, 8)))  # all near one direction
    iso = unit(rng.normal(size=(200, 8)))
    # unit vectors bound the ratio below by exp(-2): the cone sits near exp(-2 * 0.9)
    assert geometry.partition_ratio(cone) < 0.3 and geometry.partition_ratio(iso) > 0.8


def test_language_probe_separates_and_fails_as_expected():
    rng = np.random.default_rng(6)
    L, n, d = 4, 40, 16
    meaning = rng.normal(size=(n, d))
    offsets = 3 * rng.normal(size=(L, d))
    lang = np.repeat(np.arange(L), n)
    mid = np.tile(np.arange(n), L)
    X_lang = np.vstack([meaning + offsets[i] for i in range(L)]) + 0.1 * rng.normal(size=(L * n, d))
    X_neutral = np.vstack([meaning for _ in range(L)]) + 0.01 * rng.normal(size=(L * n, d))
    assert geometry.language_probe(X_lang, lang, mid)["test_accuracy"] > 0.95
    assert geometry.language_probe(X_neutral, lang, mid)["test_accuracy"] < 0.6


@needs_data
def test_eval_geometry_tiny_model(tmp_path, tiny_encoder):
    d = _multiway(tmp_path / "mw", n=30)
    res = geometry.eval_geometry(tiny_encoder, d, langs="eng,deu,fra", n=20)
    assert res.langs == ["eng", "deu", "fra"] and res.n == 20 and res.points.shape == (60, 2)
    d_ = json.loads(json.dumps(res.to_dict()))
    assert set(d_["invariance"]) >= {
        "translation_cosine",
        "random_crosslingual_cosine",
        "xsim_error",
    }
    assert 0 < d_["isotropy"]["partition_ratio"] <= 1
    assert d_["canonical_form"]["lang_probe"]["chance"] == pytest.approx(1 / 3)


# ---- plots ------------------------------------------------------------------------------------
def test_plots_write_pngs(tmp_path):
    pytest.importorskip("matplotlib")
    from emmax_cli.eval import plots

    rows = [
        tatoeba.TatoebaLang(lg, 10, a, b, a, b)
        for lg, a, b in [("deu", 0.9, 0.8), ("fra", 0.7, 0.75)]
    ]
    res = tatoeba.TatoebaResult(rows, None, 4, tatoeba.averages(rows), {"model": "m"})
    p = plots.plot_tatoeba(res, tmp_path / "t.png")
    assert p.read_bytes()[:4] == b"\x89PNG"
    rng = np.random.default_rng(7)
    E = unit(rng.normal(size=(3 * 12, 8))).reshape(3, 12, 8)
    g = geometry.geometry_from_embeddings(E, ["aaa", "bbb", "ccc"])
    p = plots.plot_geometry(g, tmp_path / "g.png")
    assert p.read_bytes()[:4] == b"\x89PNG"


def test_plots_without_matplotlib(monkeypatch, tmp_path):
    import builtins

    from emmax_cli.eval import plots

    real_import = builtins.__import__

    def fake_import(name, *a, **kw):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(EmmaxError, match=r"emmax\[plot\]"):
        plots.plot_tatoeba({"languages": {}}, tmp_path / "x.png")


# ---- CLI --------------------------------------------------------------------------------------
@needs_data
def test_cli_eval_commands_tiny_model(tmp_path, tiny_model_dir):
    r = CliRunner()
    tat = _small_tatoeba(tmp_path / "tat", n=20)
    out = r.invoke(
        cli,
        [
            "eval",
            "tatoeba",
            str(tat),
            "--langs",
            "deu,fra",
            "-m",
            str(tiny_model_dir),
            "--device",
            "cpu",
            "--json",
            "--quiet",
        ],
        catch_exceptions=False,
    )
    assert out.exit_code == 0, out.output
    d = json.loads(out.stdout)
    assert set(d["languages"]) == {"deu", "fra"} and d["model"]["precision"] == "fp32"
    out = r.invoke(
        cli,
        [
            "eval",
            "tatoeba",
            str(tat),
            "--langs",
            "deu",
            "-m",
            str(tiny_model_dir),
            "--device",
            "cpu",
            "--quiet",
            "--plot",
            str(tmp_path / "t.png"),
        ],
        catch_exceptions=False,
    )
    assert out.exit_code == 0 and "xx->eng" in out.stdout and "all evaluated avg" in out.stdout
    assert (tmp_path / "t.png").exists()
    out = r.invoke(
        cli, ["eval", "tatoeba", str(tat), "--langs", "deu,zzz", "-m", str(tiny_model_dir)]
    )
    assert out.exit_code == 1 and "zzz" in out.output and "Traceback" not in out.output

    mw = _multiway(tmp_path / "mw", n=15)
    out = r.invoke(
        cli,
        ["eval", "xsim", str(mw), "-m", str(tiny_model_dir), "--device", "cpu", "--quiet"],
        catch_exceptions=False,
    )
    assert (
        out.exit_code == 0
        and "src\\tgt" in out.stdout
        and "average over 6 directions" in out.stdout
    )
    out = r.invoke(
        cli,
        [
            "eval",
            "geometry",
            str(mw),
            "-n",
            "10",
            "-m",
            str(tiny_model_dir),
            "--device",
            "cpu",
            "--quiet",
            "--json",
        ],
        catch_exceptions=False,
    )
    assert out.exit_code == 0 and json.loads(out.stdout)["n"] == 10


WORDS = "the a cat dog house water tom mary book good morning hello thank yes no".split()


def identical_bucc_set(root: Path, n_gold: int = 30, n_fill: int = 40) -> tuple[Path, Path]:
    """A BUCC-format set the tiny (random) model solves exactly: every gold pair is the same
    sentence on both sides (same text, same vector), hidden among distinct one-sided lines."""
    rng = random.Random(5)
    # distinct word sequences (numbers would all be <unk> to the tiny tokenizer)
    pool = iter(
        dict.fromkeys(
            " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 9)))
            for _ in range(8 * (n_gold + n_fill))
        )
    )
    dirs = []
    for split in ("sample", "training"):
        gold = [next(pool) for _ in range(n_gold)]
        src = [(f"de-{i}", t) for i, t in enumerate(gold + [next(pool) for _ in range(n_fill)])]
        tgt = [(f"en-{i}", t) for i, t in enumerate(gold + [next(pool) for _ in range(n_fill)])]
        rng.shuffle(src)
        rng.shuffle(tgt)
        pairs = [(f"de-{i}", f"en-{i}") for i in range(n_gold)]
        bucc.write_split(root / split, "de", split, src, tgt, pairs)
        dirs.append(root / split)
    return dirs[0], dirs[1]


def test_cli_eval_bucc_tiny_model_finds_every_gold_pair(tmp_path, tiny_model_dir, tiny_encoder):
    sample, test = identical_bucc_set(tmp_path / "bucc")
    args = ["eval", "bucc", "--sample-dir", str(sample), "--test-dir", str(test)]
    args += ["--pairs", "de-en", "-m", str(tiny_model_dir), "--device", "cpu", "--quiet"]
    out = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert out.exit_code == 0, out.output
    lines = out.stdout.splitlines()
    assert lines[0] == "BUCC 2018 (%), tiny-0, threshold tuned -> scored: sample -> training"
    assert lines[1].split() == "pair threshold tune F1 P R F1 extracted gold".split()
    assert len(lines) == 4 and lines[3].split()[0] == "de-en"
    js = CliRunner().invoke(cli, [*args, "--json"], catch_exceptions=False)
    assert js.exit_code == 0, js.output
    got = json.loads(js.stdout)
    p = got["pairs"]["de-en"]
    # every gold pair is one sentence on both sides: all are found, few one-sided lines pass
    assert p["recall"] == 1.0 and p["n_correct"] == p["n_gold"] == 30 and p["precision"] >= 0.9
    assert p["tune_recall"] == 1.0 and p["n_src"] == p["n_tgt"] == 70
    thr, tune_f1, prec, rec, f1, n_pred, n_gold = lines[3].split()[1:]
    assert [float(thr), int(n_pred), int(n_gold)] == [round(p["threshold"], 4), p["n_pred"], 30]
    assert [tune_f1, prec, rec, f1] == [
        f"{100 * p[k]:.2f}" for k in ("tune_f1", "precision", "recall", "f1")
    ]
    # the CLI reports exactly what the library computes with the same encoder
    lib = bucc.eval_bucc(tiny_encoder, sample, test, pairs="de-en")
    assert got == json.loads(json.dumps(lib.to_dict(), default=float))


def test_cli_eval_bucc_without_a_gold_candidate_is_one_line(tmp_path, tiny_model_dir):
    sample, test = identical_bucc_set(tmp_path / "bucc")
    # gold pairs that are never mined: each gold source is paired with a one-sided target
    (sample / "de-en.sample.gold").write_text("".join(f"de-{i}\ten-{40 + i}\n" for i in range(5)))
    out = CliRunner().invoke(
        cli,
        [
            "eval",
            "bucc",
            "--sample-dir",
            str(sample),
            "--test-dir",
            str(test),
            "-m",
            str(tiny_model_dir),
            "--device",
            "cpu",
            "--quiet",
        ],
    )
    one_line_error(out, "no candidate is a gold pair")
    assert out.stdout == ""


# ---- bench report -----------------------------------------------------------------------------
def test_make_report_renders_results(tmp_path):
    spec = importlib.util.spec_from_file_location("make_report", REPO / "bench" / "make_report.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    res = tmp_path / "results"
    res.mkdir()
    (res / "embed.json").write_text(
        json.dumps(
            {
                "title": "Embedding throughput",
                "machine": "2 vCPU test box",
                "columns": ["batch", "sent/s"],
                "rows": [[64, 149.2], [128, 151.0]],
                "notes": "median of 3",
            }
        )
    )
    (res / "broken.json").write_text("{not json")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "base-tatoeba-emmax.json").write_text(
        json.dumps(
            {
                "task": "tatoeba",
                "retrieval": "cosine",
                "model": {"model": "m"},
                "averages": {
                    "all": {
                        "label": "all evaluated (1 languages, unweighted mean)",
                        "n_langs": 1,
                        "xx2eng": 0.9,
                        "eng2xx": 0.8,
                        "mean": 0.85,
                    }
                },
                "languages": {
                    "deu": {"lang": "deu", "n": 1000, "xx2eng": 0.9, "eng2xx": 0.8, "mean": 0.85}
                },
            }
        )
    )
    text = mod.render(results_dir=res, docs_dir=docs, reference=None)
    assert "## Embedding throughput" in text and "2 vCPU test box" in text
    assert "| batch | sent/s |" in text and "| 64 | 149.2 |" in text
    assert "broken.json" in text  # reported, not fatal
    assert "| deu | 1000 | 90.00 | 80.00 |" in text
