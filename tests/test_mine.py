"""Tests for emmax_cli.mine: golden margin cases, LASER equivalence, kNN blocking, helpers."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from emmax_cli.errors import EmmaxError, InputError
from emmax_cli.mine import (
    MinedPairs,
    calibrate_threshold,
    dedup_embeddings,
    greedy_one_to_one,
    knn,
    margin_scores,
    mine,
    mine_from_neighbours,
    threshold_counts,
    unify,
)

MODES = ("max", "intersect", "fwd", "bwd", "union")
MARGINS = ("ratio", "distance", "absolute")


def unit(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    faiss.normalize_L2(x)
    return x


def clustered(n: int, dim: int, seed: int = 0, n_clusters: int = 50):
    """Clustered unit vectors; the first half of the targets are noisy copies of sources."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((n_clusters, dim), dtype=np.float32)
    x = centers[rng.integers(0, n_clusters, n)] + 0.8 * rng.standard_normal((n, dim), np.float32)
    y = centers[rng.integers(0, n_clusters, n)] + 0.8 * rng.standard_normal((n, dim), np.float32)
    half = n // 2
    y[:half] = x[:half] + 0.5 * rng.standard_normal((half, dim), np.float32)
    return unit(x), unit(y)


def neighbours_of(S: np.ndarray, k: int):
    """k-NN (sims, idx) of every row of a similarity matrix, highest first."""
    order = np.argsort(-S, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(S, order, 1).astype(np.float32), order.astype(np.int64)


def pairs(p: MinedPairs) -> list[tuple[int, int]]:
    return list(zip(p.src_idx.tolist(), p.tgt_idx.tolist(), strict=False))


# ---------------------------------------------------------------------------------------
# Golden 3x3 case, k = 2 (rows: sources s0..s2, columns: targets t0..t2)
#
#        t0   t1   t2      fwd 2-NN mean: s0 (.9+.8)/2=.85  s1 (.7+.6)/2=.65  s2 (.5+.3)/2=.40
#  s0   .4   .8   .9      bwd 2-NN mean: t0 (.4+.2)/2=.30  t1 (.8+.6)/2=.70  t2 (.9+.7)/2=.80
#  s1   .1   .6   .7
#  s2   .2   .5   .3
#
# ratio margin cos / ((mean_s + mean_t) / 2) of the 2-NN candidates:
#  fwd  s0-t2 .9/.825 = 1.090909   s0-t1 .8/.775 = 1.032258   -> s0 -> t2  1.090909
#       s1-t2 .7/.725 = 0.965517   s1-t1 .6/.675 = 0.888889   -> s1 -> t2  0.965517
#       s2-t1 .5/.550 = 0.909091   s2-t2 .3/.600 = 0.5        -> s2 -> t1  0.909091
#  bwd  t0-s0 .4/.575 = 0.695652   t0-s2 .2/.350 = 0.571429   -> t0 -> s0  0.695652
#       t1-s0 .8/.775 = 1.032258   t1-s1 .6/.675 = 0.888889   -> t1 -> s0  1.032258
#       t2-s0 .9/.825 = 1.090909   t2-s1 .7/.725 = 0.965517   -> t2 -> s0  1.090909
# intersect: only s0->t2 is confirmed by t2->s0.
# max: pool sorted (0,2) 1.0909 x2, (0,1) 1.0323, (1,2) .9655, (2,1) .9091, (0,0) .6957;
#      greedy 1:1 accepts (0,2), rejects (0,1) [s0 used] and (1,2) [t2 used], accepts (2,1),
#      rejects (0,0).
# union: the five distinct pooled pairs.
# ---------------------------------------------------------------------------------------
S3 = np.array([[0.4, 0.8, 0.9], [0.1, 0.6, 0.7], [0.2, 0.5, 0.3]])
GOLDEN_RATIO = {
    "fwd": [((0, 2), 1.090909), ((1, 2), 0.965517), ((2, 1), 0.909091)],
    "bwd": [((0, 2), 1.090909), ((0, 1), 1.032258), ((0, 0), 0.695652)],
    "intersect": [((0, 2), 1.090909)],
    "max": [((0, 2), 1.090909), ((2, 1), 0.909091)],
    "union": [
        ((0, 2), 1.090909),
        ((0, 1), 1.032258),
        ((1, 2), 0.965517),
        ((2, 1), 0.909091),
        ((0, 0), 0.695652),
    ],
}


@pytest.mark.parametrize("mode", MODES)
def test_golden_ratio_3x3(mode):
    p = mine_from_neighbours(neighbours_of(S3, 2), neighbours_of(S3.T, 2), retrieval=mode)
    expected = GOLDEN_RATIO[mode]
    assert pairs(p) == [pair for pair, _ in expected]
    np.testing.assert_allclose(p.score, [s for _, s in expected], atol=1e-6)
    assert p.src_idx.dtype == np.int64 and p.tgt_idx.dtype == np.int64
    assert p.score.dtype == np.float32


def test_golden_distance_and_absolute_3x3():
    nn = neighbours_of(S3, 2), neighbours_of(S3.T, 2)
    # distance: s0-t2 .9-.825=.075, s0-t1 .8-.775=.025 -> s0->t2; s1-t2 .7-.725=-.025,
    # s1-t1 .6-.675=-.075 -> s1->t2; s2-t1 .5-.55=-.05, s2-t2 .3-.6=-.3 -> s2->t1
    p = mine_from_neighbours(*nn, margin="distance", retrieval="fwd")
    assert pairs(p) == [(0, 2), (1, 2), (2, 1)]
    np.testing.assert_allclose(p.score, [0.075, -0.025, -0.05], atol=1e-6)
    # absolute: plain cosine, fwd best s0->t2 .9, s1->t2 .7, s2->t1 .5; bwd best t0<-s0 .4,
    # t1<-s0 .8, t2<-s0 .9; max: (0,2) then every other pair touches s0 or t2 except (2,1)
    p = mine_from_neighbours(*nn, margin="absolute", retrieval="max")
    assert pairs(p) == [(0, 2), (2, 1)]
    np.testing.assert_allclose(p.score, [0.9, 0.5], atol=1e-6)


def test_golden_threshold_and_top_every_mode():
    nn = neighbours_of(S3, 2), neighbours_of(S3.T, 2)
    for mode in MODES:
        p = mine_from_neighbours(*nn, retrieval=mode, threshold=1.0)
        assert pairs(p) == [pair for pair, s in GOLDEN_RATIO[mode] if s >= 1.0], mode
        p = mine_from_neighbours(*nn, retrieval=mode, top=1)
        assert pairs(p) == [GOLDEN_RATIO[mode][0][0]], mode
    # >= : a threshold equal to a score keeps it
    exact = mine_from_neighbours(*nn, retrieval="max").score[-1]
    assert len(mine_from_neighbours(*nn, retrieval="max", threshold=float(exact))) == 2
    assert len(mine_from_neighbours(*nn, retrieval="union", top=0)) == 0


def test_margin_scores_vectorised_formula():
    sims, idx = neighbours_of(S3, 2)
    m_src = sims.mean(axis=1)
    m_tgt = neighbours_of(S3.T, 2)[0].mean(axis=1)
    r = margin_scores(sims, idx, m_src, m_tgt, "ratio")
    np.testing.assert_allclose(r[0], [0.9 / 0.825, 0.8 / 0.775], rtol=1e-6)
    d = margin_scores(sims, idx, m_src, m_tgt, "distance")
    np.testing.assert_allclose(d[0], [0.075, 0.025], atol=1e-6)
    np.testing.assert_array_equal(margin_scores(sims, idx, m_src, m_tgt, "absolute"), sims)
    # a missing neighbour (approximate index) can never be chosen
    idx2 = idx.copy()
    idx2[0, 0] = -1
    assert margin_scores(sims, idx2, m_src, m_tgt)[0, 0] == -np.inf


# ---------------------------------------------------------------------------------------
# LASER reference: a plain copy of mine_bitexts.py's loops (knnCPU, score_candidates, the
# retrieval branches). Two emmax choices are applied to it: the threshold holds in every
# mode with `>=`, and max sorts stably. "union" follows stopes' fastmax_retrieval.
# ---------------------------------------------------------------------------------------
def laser_reference(x, y, k, margin_name, retrieval, threshold=None):
    def knn_cpu(a, b, kk):
        index = faiss.IndexFlatIP(a.shape[1])
        index.add(b)
        return index.search(a, kk)

    x2y_sim, x2y_ind = knn_cpu(x, y, min(y.shape[0], k))
    x2y_mean = x2y_sim.mean(axis=1)
    y2x_sim, y2x_ind = knn_cpu(y, x, min(x.shape[0], k))
    y2x_mean = y2x_sim.mean(axis=1)

    if margin_name == "absolute":

        def margin(a, b):
            return a
    elif margin_name == "distance":

        def margin(a, b):
            return a - b
    else:

        def margin(a, b):
            return a / b

    def score(xv, yv, fwd_mean, bwd_mean):
        return margin(xv.dot(yv), (fwd_mean + bwd_mean) / 2)

    def score_candidates(xs, ys, candidate_inds, fwd_mean, bwd_mean):
        scores = np.zeros(candidate_inds.shape)
        for i in range(scores.shape[0]):
            for j in range(scores.shape[1]):
                kk = candidate_inds[i, j]
                scores[i, j] = score(xs[i], ys[kk], fwd_mean[i], bwd_mean[kk])
        return scores

    fwd_scores = score_candidates(x, y, x2y_ind, x2y_mean, y2x_mean)
    bwd_scores = score_candidates(y, x, y2x_ind, y2x_mean, x2y_mean)
    fwd_best = x2y_ind[np.arange(x.shape[0]), fwd_scores.argmax(axis=1)]
    bwd_best = y2x_ind[np.arange(y.shape[0]), bwd_scores.argmax(axis=1)]
    out = []
    if retrieval == "fwd":
        for i, j in enumerate(fwd_best):
            out.append((fwd_scores[i].max(), i, j))
    if retrieval == "bwd":
        for j, i in enumerate(bwd_best):
            out.append((bwd_scores[j].max(), i, j))
    if retrieval == "intersect":
        for i, j in enumerate(fwd_best):
            if bwd_best[j] == i:
                out.append((fwd_scores[i].max(), i, j))
    if retrieval == "union":
        seen = set()
        for s, i, j in sorted(
            [(fwd_scores[i].max(), i, j) for i, j in enumerate(fwd_best)]
            + [(bwd_scores[j].max(), i, j) for j, i in enumerate(bwd_best)],
            key=lambda t: -t[0],
        ):
            if (i, j) not in seen:
                seen.add((i, j))
                out.append((s, i, j))
    if retrieval == "max":
        indices = np.stack(
            (
                np.concatenate((np.arange(x.shape[0]), bwd_best)),
                np.concatenate((fwd_best, np.arange(y.shape[0]))),
            ),
            axis=1,
        )
        scores = np.concatenate((fwd_scores.max(axis=1), bwd_scores.max(axis=1)))
        seen_src, seen_trg = set(), set()
        for i in np.argsort(-scores, kind="stable"):
            src_ind, trg_ind = indices[i]
            if src_ind not in seen_src and trg_ind not in seen_trg:
                seen_src.add(src_ind)
                seen_trg.add(trg_ind)
                out.append((scores[i], src_ind, trg_ind))
    if threshold is not None:
        out = [t for t in out if t[0] >= threshold]
    return {(int(i), int(j)): float(s) for s, i, j in out}


@pytest.fixture(scope="module")
def random_pair():
    return clustered(2000, 48, seed=3)


@pytest.mark.parametrize("margin", MARGINS)
@pytest.mark.parametrize("mode", MODES)
def test_mine_equals_laser_reference(random_pair, margin, mode):
    x, y = random_pair
    threshold = {"ratio": 1.0, "distance": 0.0, "absolute": 0.5}[margin]
    for thr in (None, threshold):
        ref = laser_reference(x, y, 4, margin, mode, thr)
        got = mine(x, y, k=4, margin=margin, retrieval=mode, threshold=thr)
        assert len(ref) > 100
        assert set(pairs(got)) == set(ref)
        assert len(pairs(got)) == len(ref)  # no duplicate pairs
        np.testing.assert_allclose(got.score, [ref[p] for p in pairs(got)], atol=2e-6)
        assert np.all(np.diff(got.score) <= 0)


def test_mine_aliases_and_block_size(random_pair):
    x, y = random_pair
    x, y = x[:500], y[:400]
    assert pairs(mine(x, y, retrieval="forward")) == pairs(mine(x, y, retrieval="fwd"))
    assert pairs(mine(x, y, retrieval="backward")) == pairs(mine(x, y, retrieval="bwd"))
    assert pairs(mine(x, y, block_size=150)) == pairs(mine(x, y))


def test_mine_max_is_one_to_one_and_finds_copies(random_pair):
    x, y = random_pair
    p = mine(x, y, threshold=1.06)
    assert len(set(p.src_idx.tolist())) == len(p) == len(set(p.tgt_idx.tolist()))
    true = p.src_idx == p.tgt_idx
    assert true.mean() > 0.9 and true.sum() > 500


def test_mine_accepts_a_faiss_index_as_database(random_pair):
    x, y = random_pair
    index_x, index_y = faiss.IndexFlatIP(x.shape[1]), faiss.IndexFlatIP(y.shape[1])
    index_x.add(x)
    index_y.add(y)
    p = mine(x, y, src_index=index_x, tgt_index=index_y)
    q = mine(x, y)  # one-pass exact search: scores may differ from FAISS's by one ulp, so
    # pairs whose scores are that close may swap places
    assert set(pairs(p)) == set(pairs(q)) and len(p) == len(q)
    np.testing.assert_allclose(p.score, q.score, atol=1e-6)


def test_mine_errors(random_pair):
    x, y = random_pair
    with pytest.raises(EmmaxError, match="unknown margin 'cosine'") as e:
        mine(x, y, margin="cosine")
    assert "ratio, distance, absolute" in str(e.value)
    with pytest.raises(EmmaxError, match="unknown retrieval mode 'best'") as e:
        mine(x, y, retrieval="best")
    assert "max" in e.value.hint and "union" in e.value.hint
    with pytest.raises(InputError, match="not L2-normalised"):
        mine(x * 2, y)
    with pytest.raises(InputError, match="dimension"):
        mine(x, y[:, :10])
    with pytest.raises(InputError, match="empty"):
        mine(x[:0], y)
    with pytest.raises(InputError, match="k must be"):
        mine(x, y, k=0)


def test_mine_small_side_clips_k(caplog):
    x, y = clustered(20, 16, seed=1)
    with caplog.at_level("WARNING", logger="emmax_cli"):
        p = mine(x, y[:2], k=4)  # only 2 targets: k = 2 fwd; 20 sources, k = 4 bwd
    assert len(p) == 2
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warned == [
        "k=4 is more than the source (20 rows) or target (2 rows) holds; "
        "each direction uses at most as many neighbours as the other side has"
    ]  # once, not once per direction
    caplog.clear()
    with caplog.at_level("WARNING", logger="emmax_cli"):
        mine(x, y, k=4)
    assert not caplog.records


def test_greedy_one_to_one_matches_sequential_loop():
    rng = np.random.default_rng(5)
    for n, m in ((50, 400), (3000, 6000), (10, 10)):
        src, tgt = rng.integers(0, n, m), rng.integers(0, n, m)
        seen_s, seen_t, expected = set(), set(), []
        for s, t in zip(src.tolist(), tgt.tolist(), strict=False):
            ok = s not in seen_s and t not in seen_t
            if ok:
                seen_s.add(s)
                seen_t.add(t)
            expected.append(ok)
        np.testing.assert_array_equal(greedy_one_to_one(src, tgt, n, n), expected)


# ------------------------------------------------------------------------------- knn
def test_knn_blocked_equals_unblocked():
    x, y = clustered(700, 32, seed=2)
    sims, idx = knn(x, y, 5, block_size=1_000_000)
    sims_b, idx_b = knn(x, y, 5, block_size=250)  # 3 query blocks x 3 database blocks
    np.testing.assert_array_equal(idx_b, idx)
    np.testing.assert_allclose(sims_b, sims, atol=1e-6)
    # and both equal brute force
    S = x @ y.T
    np.testing.assert_array_equal(idx, np.argsort(-S, axis=1, kind="stable")[:, :5])
    assert sims.dtype == np.float32 and idx.dtype == np.int64


def test_knn_clips_k_and_reports_progress(caplog):
    x, y = clustered(50, 8, seed=4)
    done = []
    caplog.set_level("WARNING", logger="emmax_cli")
    sims, idx = knn(x, y[:3], 10, block_size=16, progress=done.append)
    assert sims.shape == idx.shape == (50, 3)
    assert done == [16, 16, 16, 2]
    assert [r.getMessage() for r in caplog.records] == [
        "k=10 is more than the 3 rows of the database; using k=3"
    ]


def test_knn_with_index_database():
    x, y = clustered(300, 16, seed=6)
    index = faiss.IndexFlatIP(16)
    index.add(y)
    sims, idx = knn(x, index, 4, block_size=50)
    sims2, idx2 = knn(x, y, 4)
    np.testing.assert_array_equal(idx, idx2)
    np.testing.assert_allclose(sims, sims2, atol=1e-6)
    ivf = faiss.index_factory(16, "IVF4,Flat", faiss.METRIC_INNER_PRODUCT)
    ivf.train(y)
    ivf.add(y)
    _, idx3 = knn(x, ivf, 4, nprobe=4)  # all lists visited: exact
    assert faiss.extract_index_ivf(ivf).nprobe == 4
    np.testing.assert_array_equal(idx3, idx2)


# ------------------------------------------------------------------------- unify, dedup
def test_unify_first_occurrence():
    keep, inverse = unify(["a", "b", "a", "c", "b", "a"])
    np.testing.assert_array_equal(keep, [0, 1, 3])
    np.testing.assert_array_equal(inverse, [0, 1, 0, 2, 1, 0])
    keep, inverse = unify([])
    assert keep.shape == inverse.shape == (0,)


def test_unify_fallback_for_undecodable_text():
    texts = ["x\udcff", "y", "x\udcff", "z"]  # lone surrogate (surrogateescape input)
    keep, inverse = unify(texts)
    np.testing.assert_array_equal(keep, [0, 1, 3])
    np.testing.assert_array_equal(inverse, [0, 1, 0, 2])


def test_dedup_embeddings_maps_back():
    texts = ["b", "a", "b", "a", "c"]
    emb = np.arange(10, dtype=np.float32).reshape(5, 2)
    uniq, keep, inverse = dedup_embeddings(texts, emb)
    np.testing.assert_array_equal(uniq, emb[[0, 1, 4]])
    assert [texts[keep[u]] for u in inverse] == texts
    with pytest.raises(InputError):
        dedup_embeddings(texts, emb[:3])


# -------------------------------------------------------------------- thresholds
def test_threshold_counts():
    scores = np.array([1.01, 1.02, 1.05, 1.06, 1.1], np.float32)
    counts = threshold_counts(scores)
    assert counts == {1.02: 4, 1.04: 3, 1.06: 2, 1.08: 1}
    assert threshold_counts(np.zeros(0), (1.0,)) == {1.0: 0}


def test_calibrate_threshold_golden():
    # walk: F1 after each item (n_gold=4): .4, .667, .571, .75 (best, item 4), .667
    # threshold = midpoint of 0.6 and the next score 0.5
    thr, p, r, f1 = calibrate_threshold([0.9, 0.8, 0.7, 0.6, 0.5], [1, 1, 0, 1, 0], n_gold=4)
    assert thr == pytest.approx(0.55)
    assert (p, r, f1) == pytest.approx((0.75, 0.75, 0.75))
    # input order does not matter
    thr2, *_ = calibrate_threshold([0.5, 0.6, 0.7, 0.8, 0.9], [0, 1, 0, 1, 1], n_gold=4)
    assert thr2 == thr


def test_calibrate_threshold_best_is_last_item():
    # F1 (n_gold = 2 correct): .667, .5, .8 -> best at the last item: clamp, thr = 0.7 itself
    thr, p, r, f1 = calibrate_threshold([0.9, 0.8, 0.7], [True, False, True])
    assert thr == pytest.approx(0.7)
    assert (p, r, f1) == pytest.approx((2 / 3, 1.0, 0.8))


@pytest.mark.parametrize("correct", [[1, 1, 0, 0], [1, 0, 1, 0]])
def test_calibrate_threshold_ties_are_one_group(correct):
    # groups {.9} {.8 .8} {.7}, n_gold 2: F1 .667, then (P 2/3, R 1) .8, then .667.
    # Item-wise LASER would stop inside the tie (F1 1.0, thr .8) although `>= .8` keeps both.
    scores = [0.9, 0.8, 0.8, 0.7]
    thr, p, r, f1 = calibrate_threshold(scores, correct, n_gold=2)
    assert thr == pytest.approx(0.75)
    assert (p, r, f1) == pytest.approx((2 / 3, 1.0, 0.8))
    kept = np.array(scores) >= thr
    assert kept.sum() == 3 and np.array(correct)[kept].sum() / kept.sum() == pytest.approx(p)


def test_calibrate_threshold_tie_group_best_first():
    thr, p, r, f1 = calibrate_threshold([0.9, 0.8, 0.8], [1, 0, 0], n_gold=1)
    assert thr == pytest.approx(0.85) and f1 == 1.0


def test_calibrate_threshold_errors():
    with pytest.raises(InputError, match="no candidate is a gold pair"):
        calibrate_threshold([0.9, 0.8], [0, 0])
    with pytest.raises(InputError, match="n_gold"):
        calibrate_threshold([0.9, 0.8], [1, 1], n_gold=1)
    with pytest.raises(InputError):
        calibrate_threshold([], [])


def test_threshold_counts_agree_with_mine_threshold(random_pair):
    x, y = random_pair
    p = mine(x, y)
    counts = threshold_counts(p.score, (1.0, 1.04, 1.06))
    for t, n in counts.items():
        assert len(mine(x, y, threshold=t)) == n > 0


def test_knn_converts_float16_block_by_block():
    x, y = clustered(300, 16, seed=7)
    x16, y16 = x.astype(np.float16), y.astype(np.float16)
    sims, idx = knn(x16, y16, 4, block_size=128)
    sims32, idx32 = knn(x16.astype(np.float32), y16.astype(np.float32), 4)
    np.testing.assert_array_equal(idx, idx32)
    np.testing.assert_allclose(sims, sims32, atol=1e-6)
    assert len(mine(x16, y16)) > 0  # fp16 norms pass the normalisation check
