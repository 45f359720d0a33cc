"""Tests for emmax_cli.knn.knn_both: one pass over X·Yᵀ for the k-NN of both sides.

It must return what two exact FAISS searches return: the same neighbours and, where the
arithmetic is exact (small dyadic or integer vectors), the same similarities bit for bit,
ties included; and ``mine()``, which now uses it, the same pairs as before and as LASER."""

from __future__ import annotations

import sys

import faiss
import numpy as np
import pytest
from test_mine import MARGINS, MODES, clustered, laser_reference, pairs

from emmax_cli.errors import EmmaxError, InputError
from emmax_cli.knn import knn
from emmax_cli.knn_both import _NumpyTiles, _one_pass, _TorchTiles, knn_both, one_pass_device
from emmax_cli.mine import mine, mine_from_neighbours

mine_module = sys.modules["emmax_cli.mine"]  # the package's ``mine`` is the function


def faiss_knn(q: np.ndarray, db: np.ndarray, k: int):
    """Unblocked exact FAISS search (LASER's ``IndexFlatIP``)."""
    return faiss.knn(q, db, k, metric=faiss.METRIC_INNER_PRODUCT)


def heap_scan(S: np.ndarray, k: int):
    """FAISS's heap, one entry at a time: scan each row in index order; an entry enters a
    full list only if strictly above its worst; the worst (ties: smallest index) leaves;
    lists sorted by descending value, equal values by descending index."""
    sims = np.full((len(S), k), -np.inf, np.float32)
    ids = np.full((len(S), k), -1, np.int64)
    for r, row in enumerate(S):
        best = [(-np.inf, -1)] * k
        for j, v in enumerate(row.tolist()):
            if v > best[-1][0]:
                best.pop()
                best.insert(sum(1 for b, _ in best if b > v), (v, j))
        sims[r], ids[r] = [b for b, _ in best], [j for _, j in best]
    return sims, ids


def dyadic_units(n: int, rng, dim: int = 16, nnz: int = 4) -> np.ndarray:
    """Unit vectors with ``nnz`` entries of +-1/2: inner products are exact in float32
    whatever the summation order, so ties are exact ties."""
    v = np.zeros((n, dim), np.float32)
    for row in v:
        row[rng.choice(dim, nnz, replace=False)] = rng.choice([-0.5, 0.5], nnz)
    return v


def assert_same(got, ref, exact: bool = True):
    (s, i), (s_ref, i_ref) = got, ref
    assert s.dtype == np.float32 and i.dtype == np.int64
    np.testing.assert_array_equal(i, i_ref)
    if exact:
        np.testing.assert_array_equal(s, s_ref)
    else:
        np.testing.assert_allclose(s, s_ref, atol=1e-6)


# ------------------------------------------------------------------- equals two knn()
@pytest.mark.parametrize("k", [1, 4, 10])
@pytest.mark.parametrize("block_size", [3, 64, 1_000_000])
def test_equals_two_knn_calls(k, block_size):
    n = 90 if block_size < 10 else 600  # block size 3: 30 x 23 tiles
    x, y = clustered(n, 32, seed=11)
    y = y[: n * 3 // 4]
    xy, yx = knn_both(x, y, k, block_size=block_size)
    assert_same(xy, knn(x, y, k), exact=False)
    assert_same(yx, knn(y, x, k), exact=False)
    assert xy[0].shape == (n, k) and yx[0].shape == (len(y), k)
    assert np.all(np.diff(xy[0], axis=1) <= 0) and np.all(np.diff(yx[0], axis=1) <= 0)


def test_many_tiles_and_first_tile_bound():
    """Default tiles (2048): several along both sides, the first one filled via the bound;
    small asymmetric tiles: many tiles and merges."""
    x, y = clustered(2600, 24, seed=12)
    ref = knn(x, y, 4), knn(y, x, 4)
    for tile in (None, (64, 160), (200, 7)):
        xy, yx = knn_both(x, y, 4, tile=tile)
        assert_same(xy, ref[0], exact=False)
        assert_same(yx, ref[1], exact=False)


def test_k_differs_per_direction_and_is_clipped(caplog):
    x, y = clustered(50, 8, seed=4)
    caplog.set_level("WARNING", logger="emmax_cli")
    xy, yx = knn_both(x, y[:3], 10)
    assert xy[0].shape == (50, 3) and yx[0].shape == (3, 10)
    assert_same(xy, knn(x, y[:3], 3), exact=False)
    assert_same(yx, knn(y[:3], x, 10), exact=False)
    assert [r.getMessage() for r in caplog.records] == [
        "k=10 is more than the 3 rows of the y side; using k=3"
    ]
    caplog.clear()
    xy, yx = knn_both(x, y, 2, k_yx=5)
    assert xy[0].shape == (50, 2) and yx[0].shape == (50, 5)
    assert_same(yx, knn(y, x, 5), exact=False)
    assert not caplog.records


# ----------------------------------------------------------------------------- ties
@pytest.mark.parametrize("k", [1, 2, 4, 7])
def test_ties_match_faiss_bit_for_bit(k):
    """Duplicate rows and many equal scores: the same neighbours as FAISS, in its order."""
    rng = np.random.default_rng(k)
    x = dyadic_units(70, rng)
    y = dyadic_units(90, rng)
    y = np.concatenate([y, y[:40], y[10:20]])  # exact duplicate rows
    x = np.concatenate([x, x[:25]])
    ref_xy, ref_yx = faiss_knn(x, y, k), faiss_knn(y, x, k)
    S = x @ y.T  # exact
    for ref, sim in ((ref_xy, S), (ref_yx, S.T)):  # FAISS's tie rule, as documented
        assert_same(heap_scan(sim, k), ref)
    for block_size in (3, 5, 16, 1000):
        xy, yx = knn_both(x, y, k, block_size=block_size)
        assert_same(xy, ref_xy)
        assert_same(yx, ref_yx)


@pytest.mark.parametrize("seed", range(6))
def test_ties_match_heap_scan_on_integer_scores(seed):
    """Scores from a handful of integers: ties at every rank, in every tile shape."""
    rng = np.random.default_rng(100 + seed)
    x = rng.integers(-1, 2, (60, 5)).astype(np.float32)
    y = rng.integers(-1, 2, (75, 5)).astype(np.float32)
    S = x @ y.T
    for k in (1, 3, 6):
        ref_xy, ref_yx = heap_scan(S, k), heap_scan(S.T, k)
        assert_same(faiss_knn(x, y, k), ref_xy)
        for tile in ((3, 5), (7, 2), (16, 40), (64, 64)):
            xy, yx = knn_both(x, y, k, tile=tile)
            assert_same(xy, ref_xy)
            assert_same(yx, ref_yx)


def test_ties_in_blocked_candidate_search():
    """Tiles of 64+ rows and columns take the 8 x 8 block search for candidates; the ragged
    edge tiles, two plain comparisons: ties through both."""
    rng = np.random.default_rng(7)
    x = rng.integers(-1, 2, (200, 6)).astype(np.float32)
    y = rng.integers(-1, 2, (264, 6)).astype(np.float32)
    S = x @ y.T
    for k in (1, 4):
        ref_xy, ref_yx = heap_scan(S, k), heap_scan(S.T, k)
        for tile in ((64, 128), (128, 64)):
            xy, yx = one_pass(x, y, k, [_NumpyTiles(tile, 10**6)])
            assert_same(xy, ref_xy)
            assert_same(yx, ref_yx)


def test_negative_zero_ties_with_zero():
    x = np.array([[1, 0], [-1, 0]], np.float32)
    y = np.array([[0, 1], [0, -1], [0, 1]], np.float32)  # x @ y.T holds 0.0 and -0.0
    for k in (1, 2, 3):
        xy, yx = knn_both(x, y, k)
        assert_same(xy, faiss_knn(x, y, k))
        assert_same(yx, faiss_knn(y, x, min(k, 2)))


# ------------------------------------------------------------------- inputs, edges
def test_float16_is_computed_in_float32():
    x, y = clustered(300, 16, seed=7)
    x16, y16 = x.astype(np.float16), y.astype(np.float16)
    ref = knn_both(x16.astype(np.float32), y16.astype(np.float32), 4)
    for block_size in (128, 1_000_000):
        got = knn_both(x16, y16, 4, block_size=block_size)
        assert_same(got[0], ref[0], exact=block_size > 300)
        assert_same(got[1], ref[1], exact=block_size > 300)
    assert_same(ref[0], knn(x16, y16, 4), exact=False)


def test_memmap_inputs(tmp_path):
    x, y = clustered(400, 16, seed=8)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y.astype(np.float16))
    xm = np.load(tmp_path / "x.npy", mmap_mode="r")
    ym = np.load(tmp_path / "y.npy", mmap_mode="r")
    ref = knn_both(x, y.astype(np.float16).astype(np.float32), 5, block_size=100)
    got = knn_both(xm, ym, 5, block_size=100)
    assert_same(got[0], ref[0])
    assert_same(got[1], ref[1])


def test_empty_sides_and_progress():
    x, y = clustered(40, 8, seed=9)
    done = []
    xy, yx = knn_both(x[:0], y, 4, progress=done.append)
    assert xy[0].shape == xy[1].shape == (0, 4)
    assert yx[0].shape == yx[1].shape == (40, 0)
    assert sum(done) == 40
    xy, yx = knn_both(x, y[:0], 4)
    assert xy[0].shape == (40, 0) and yx[0].shape == (0, 4)
    done.clear()
    knn_both(x, y[:30], 4, block_size=16, progress=done.append)
    assert sum(done) == 70 and len(done) > 1 and all(d > 0 for d in done)


def test_errors():
    x, y = clustered(20, 8, seed=10)
    with pytest.raises(InputError, match="dimension"):
        knn_both(x, y[:, :4], 2)
    with pytest.raises(InputError, match="k must be"):
        knn_both(x, y, 0)
    with pytest.raises(InputError, match="k must be"):
        knn_both(x, y, 2, k_yx=0)
    with pytest.raises(InputError, match="block size"):
        knn_both(x, y, 2, block_size=0)
    with pytest.raises(InputError, match="2-D"):
        knn_both(x[0], y, 2)
    with pytest.raises(EmmaxError, match="unknown device"):
        knn_both(x, y, 2, device="tpu")


def test_one_pass_device():
    assert one_pass_device("cpu") == "cpu"
    assert one_pass_device("auto") in ("cpu", "cuda", None)
    with pytest.raises(EmmaxError):
        one_pass_device("tpu")


def lists(n: int, k: int):
    return np.full((n, k), -np.inf, np.float32), np.full((n, k), -1, np.int64)


def one_pass(x, y, k, tiles):
    """The search loop on given tiles (one per search thread)."""
    xy, yx = lists(len(x), k), lists(len(y), k)
    _one_pass(x, y, xy, yx, 10**6, tiles, None)
    return xy, yx


def test_search_threads_pipeline():
    """1 to 3 search threads (bands of y rows; x bands handed on): the same lists."""
    x, y = clustered(700, 16, seed=14)
    ref = one_pass(x, y, 4, [_NumpyTiles((256, 64), 10**6)])
    rng = np.random.default_rng(4)
    xi = rng.integers(-1, 2, (300, 5)).astype(np.float32)
    yi = rng.integers(-1, 2, (260, 5)).astype(np.float32)
    exact = heap_scan(xi @ yi.T, 5), heap_scan(yi @ xi.T, 5)
    for threads in (2, 3):
        got = one_pass(x, y, 4, [_NumpyTiles((256, 64), 10**6) for _ in range(threads)])
        assert_same(got[0], ref[0], exact=False)
        assert_same(got[1], ref[1], exact=False)
        got = one_pass(xi, yi, 5, [_NumpyTiles((64, 16), 10**6) for _ in range(threads)])
        assert_same(got[0], exact[0])
        assert_same(got[1], exact[1])


@pytest.mark.parametrize("bad", [0, 1])
def test_a_failing_search_thread_stops_all(bad):
    class Failing(_NumpyTiles):
        def search(self, xt, yt, xy, yx, r0, c0):
            if r0 >= 128:
                raise ValueError("boom")
            super().search(xt, yt, xy, yx, r0, c0)

    x, y = clustered(600, 8, seed=15)
    tiles = [_NumpyTiles((64, 64), 10**6), _NumpyTiles((64, 64), 10**6)]
    tiles[bad] = Failing((64, 64), 10**6)
    with pytest.raises(ValueError, match="boom"):
        one_pass(x, y, 3, tiles)


def test_blas_threads_are_restored():
    threadpoolctl = pytest.importorskip("threadpoolctl")

    def blas_threads():
        return [
            i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"
        ]

    before = blas_threads()
    x, y = clustered(300, 8, seed=16)
    knn_both(x, y, 4)
    assert blas_threads() == before
    with pytest.raises(InputError):
        knn_both(x, y[:, :4], 4)
    assert blas_threads() == before


def test_torch_tiles_equal_numpy_tiles():
    """The CUDA code path (torch GEMM, comparisons and candidate lists), run on CPU."""
    for n, k, tile in ((500, 4, (128, 96)), (60, 1, (3, 5)), (500, 7, (512, 512))):
        x, y = clustered(n, 16, seed=13)
        for xs in (x, x.astype(np.float16)):
            ref = one_pass(xs, y, k, [_NumpyTiles(tile, 10**6)])
            with _TorchTiles("cpu", tile, 10**6) as tiles:
                got = one_pass(xs, y, k, [tiles])
            assert_same(got[0], ref[0], exact=False)
            assert_same(got[1], ref[1], exact=False)
    rng = np.random.default_rng(3)  # ties through the torch path too
    xi = rng.integers(-1, 2, (40, 5)).astype(np.float32)
    yi = rng.integers(-1, 2, (50, 5)).astype(np.float32)
    with _TorchTiles("cpu", (7, 9), 10**6) as tiles:
        xy, yx = one_pass(xi, yi, 3, [tiles])
    assert_same(xy, heap_scan(xi @ yi.T, 3))
    assert_same(yx, heap_scan(yi @ xi.T, 3))


# ------------------------------------------------------------------------- mine()
@pytest.fixture(scope="module")
def pair():
    return clustered(2000, 48, seed=3)


def test_mine_uses_one_pass_for_exact_search(pair, monkeypatch):
    x, y = pair
    calls = []

    def spy(name, fn):
        def wrapped(*a, **kw):
            calls.append(name)
            return fn(*a, **kw)

        return wrapped

    monkeypatch.setattr(mine_module, "knn", spy("knn", mine_module.knn))
    monkeypatch.setattr(mine_module, "knn_both", spy("knn_both", mine_module.knn_both))
    for margin in MARGINS:
        for mode in MODES:
            calls.clear()
            mine(x[:300], y[:300], margin=margin, retrieval=mode)
            one_way = margin == "absolute" and mode in ("fwd", "bwd")
            assert calls == (["knn"] if one_way else ["knn_both"]), (margin, mode)
    calls.clear()
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(y[:300])
    mine(x[:300], y[:300], tgt_index=index)
    assert calls == ["knn", "knn"]


@pytest.mark.parametrize("margin", MARGINS)
@pytest.mark.parametrize("mode", MODES)
def test_mine_same_pairs_as_two_faiss_searches(pair, margin, mode):
    """Before (two FAISS searches) and after (one pass): the same pairs and scores. The
    similarities can differ in the last bit, so pairs with scores 1 ulp apart may swap
    places in the list; the pairs and their scores are the same."""
    x, y = pair
    before = mine_from_neighbours(
        faiss_knn(x, y, 4), faiss_knn(y, x, 4), margin=margin, retrieval=mode
    )
    after = mine(x, y, k=4, margin=margin, retrieval=mode)
    assert len(after) == len(before) > 100
    assert set(pairs(after)) == set(pairs(before))
    got = dict(zip(pairs(after), after.score.tolist(), strict=True))
    np.testing.assert_allclose([got[p] for p in pairs(before)], before.score, atol=1e-6)
    np.testing.assert_allclose(after.score, before.score, atol=1e-6)  # sorted the same


@pytest.mark.parametrize("margin", MARGINS)
@pytest.mark.parametrize("mode", MODES)
def test_mine_one_pass_equals_laser_reference(margin, mode):
    x, y = clustered(1500, 32, seed=21)
    y = y[:1300]
    ref = laser_reference(x, y, 4, margin, mode)
    got = mine(x, y, k=4, margin=margin, retrieval=mode, block_size=500)
    assert set(pairs(got)) == set(ref)
    np.testing.assert_allclose(got.score, [ref[p] for p in pairs(got)], atol=2e-6)


def test_mine_with_duplicates_equals_laser_reference():
    """Without dedup, duplicate sentences tie in the k-NN lists: FAISS's tie rule matters."""
    rng = np.random.default_rng(5)
    x, y = dyadic_units(120, rng), dyadic_units(140, rng)
    x = np.concatenate([x, x[:30]])
    y = np.concatenate([y, y[5:45], x[:20]])
    for mode in MODES:
        ref = laser_reference(x, y, 4, "ratio", mode)
        got = mine(x, y, k=4, retrieval=mode)
        assert set(pairs(got)) == set(ref), mode
        np.testing.assert_allclose(got.score, [ref[p] for p in pairs(got)], atol=2e-6)
