"""Tests for emmax_cli.index: factory choice, build/load round trips, shards, bad inputs."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest

from emmax_cli.errors import IndexError_, InputError
from emmax_cli.index import (
    add_to_index,
    build_index,
    choose_factory,
    load_index,
    sidecar_paths,
)
from emmax_cli.io.parquet import EmbeddingWriter
from emmax_cli.mine import knn


def write_shard(path, emb, ids=None, model="x", chunk=1000, meta=None):
    """An embedding Parquet file written in chunks (row groups), as `emmax embed` does."""
    ids = np.arange(len(emb)) if ids is None else ids
    meta = {"model_id": model} if meta is None else meta
    w = EmbeddingWriter(path, emb.shape[1], meta=meta, with_text=False)
    for s in range(0, len(emb), chunk):
        w.write(ids[s : s + chunk], emb[s : s + chunk])
    w.close()
    return path


def unit(x):
    x = np.ascontiguousarray(x, np.float32)
    faiss.normalize_L2(x)
    return x


@pytest.fixture(scope="module")
def vectors():
    rng = np.random.default_rng(0)
    return rng.standard_normal((5000, 32), dtype=np.float32)  # not normalised: build does it


def test_choose_factory_policy():
    assert choose_factory(10, 384) == "Flat"
    assert choose_factory(100_000, 384) == "Flat"
    assert choose_factory(100_001, 384) == "OPQ64,IVF2048,PQ64"  # stopes tier > 80k
    assert choose_factory(160_001, 1024) == "OPQ64,IVF4096,PQ64"
    assert choose_factory(300_000, 768) == "OPQ64,IVF8192,PQ64"
    assert choose_factory(5_000_000, 1024) == "OPQ64,IVF32768,PQ64"
    assert choose_factory(200_000_000, 1024) == "OPQ64,IVF131072,PQ64"
    assert choose_factory(600_000_000, 1024) == "OPQ64,IVF262144,PQ64"
    # 64 does not divide 300 or 100: largest divisor below 64
    assert choose_factory(200_000, 300) == "OPQ60,IVF4096,PQ60"
    assert choose_factory(200_000, 100) == "OPQ50,IVF4096,PQ50"
    for dim in (384, 300, 100, 768, 1024):  # every choice is a valid faiss factory
        faiss.index_factory(dim, choose_factory(200_000, dim), faiss.METRIC_INNER_PRODUCT)


def test_build_load_flat_two_shards(tmp_path, vectors):
    a = write_shard(tmp_path / "a.parquet", vectors[:3000], ids=np.arange(3000) + 10)
    b = write_shard(tmp_path / "b.parquet", vectors[3000:], ids=np.arange(2000))
    out = tmp_path / "x.faiss"
    done = []
    meta = build_index([a, b], out, chunk_rows=700, progress=done.append)
    assert sum(done) == 5000 and max(done) <= 700
    assert meta["factory"] == "Flat" and meta["ntotal"] == 5000 and meta["train_sample"] == 0
    on_disk = json.loads(sidecar_paths(out)[0].read_text())
    assert on_disk == meta
    assert on_disk["metric"] == "inner_product" and on_disk["normalized"] is True
    assert on_disk["model"] == {"model_id": "x"} and on_disk["dim"] == 32
    assert [s["rows"] for s in on_disk["sources"]] == [3000, 2000]
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary files left

    loaded = load_index(out)
    assert loaded.ntotal == 5000 and loaded.dim == 32 and loaded.factory == "Flat"
    np.testing.assert_array_equal(
        loaded.ids, np.concatenate([np.arange(3000) + 10, np.arange(2000)])
    )
    np.testing.assert_array_equal(loaded.source_of([0, 2999, 3000, 4999]), [0, 0, 1, 1])
    q = unit(vectors[:50])
    sims, idx = knn(q, loaded, 3)
    sims_exact, idx_exact = knn(q, unit(vectors), 3)
    np.testing.assert_array_equal(idx, idx_exact)
    np.testing.assert_allclose(sims, sims_exact, atol=1e-5)
    assert (idx[:, 0] == np.arange(50)).all()


def test_build_ivf_roundtrip(tmp_path, vectors):
    src = write_shard(tmp_path / "a.parquet", vectors)
    out = tmp_path / "ivf.faiss"
    meta = build_index([src], out, factory="IVF16,Flat", seed=1)
    assert meta["factory"] == "IVF16,Flat"
    assert meta["train_sample"] == 5000 and meta["nprobe"] == 128
    loaded = load_index(out)
    ivf = faiss.extract_index_ivf(loaded.index)
    assert ivf.nlist == 16 and ivf.nprobe == 128 and ivf.metric_type == faiss.METRIC_INNER_PRODUCT
    q = unit(vectors[::100])
    _, idx = knn(q, loaded, 5)  # nprobe >= nlist: every list visited, exact
    np.testing.assert_array_equal(idx, knn(q, unit(vectors), 5)[1])
    assert faiss.extract_index_ivf(load_index(out, nprobe=1).index).nprobe == 1
    # a smaller explicit training sample is recorded
    meta = build_index([src], out, factory="IVF16,Flat", train_sample=1000, force=True)
    assert meta["train_sample"] == 1000


def test_add_shards_equals_building_at_once(tmp_path, vectors):
    a = write_shard(tmp_path / "a.parquet", vectors[:2500])
    b = write_shard(tmp_path / "b.parquet", vectors[2500:], ids=np.arange(2500) + 7)
    both, grown = tmp_path / "both.faiss", tmp_path / "grown.faiss"
    build_index([a, b], both)
    build_index([a], grown)
    meta = add_to_index(grown, [b])
    assert meta["ntotal"] == 5000 and [s["rows"] for s in meta["sources"]] == [2500, 2500]
    x, y = load_index(both), load_index(grown)
    np.testing.assert_array_equal(x.ids, y.ids)
    q = unit(vectors[::250])
    np.testing.assert_array_equal(knn(q, x, 4)[1], knn(q, y, 4)[1])


def test_dim_and_model_mismatch(tmp_path, vectors):
    a = write_shard(tmp_path / "a.parquet", vectors[:100])
    b = write_shard(tmp_path / "b.parquet", vectors[:100, :16])
    c = write_shard(tmp_path / "c.parquet", vectors[:100], model="other")
    out = tmp_path / "x.faiss"
    with pytest.raises(
        InputError,
        match=r"b\.parquet: embeddings have dimension 16, but .*"
        r"a\.parquet has 32",
    ):
        build_index([a, b], out)
    with pytest.raises(
        InputError,
        match=r"c\.parquet: .*another model \(model_id 'other', "
        r"but .*a\.parquet has 'x'\)",
    ):
        build_index([a, c], out)
    # `emmax embed` metadata: the checksum decides, whatever the name
    d = write_shard(
        tmp_path / "d.parquet", vectors[:50], meta={"model": "tiny", "model_checksum": "abc"}
    )
    e = write_shard(
        tmp_path / "e.parquet", vectors[:50], meta={"model": "tiny", "model_checksum": "def"}
    )
    with pytest.raises(InputError, match="model_checksum 'def'"):
        build_index([d, e], out)
    meta = build_index([d, d], tmp_path / "d.faiss")
    assert meta["model"] == {"model": "tiny", "model_checksum": "abc"}
    with pytest.raises(InputError, match="model_checksum 'def', but the index"):
        add_to_index(tmp_path / "d.faiss", [e])
    assert not out.exists()
    build_index([a], out)
    with pytest.raises(InputError, match="dimension 16, but the index"):
        add_to_index(out, [b])
    with pytest.raises(InputError, match="another model"):
        add_to_index(out, [c])
    assert load_index(out).ntotal == 100  # unchanged


def test_existing_output_bad_factory_and_too_few_rows(tmp_path, vectors):
    a = write_shard(tmp_path / "a.parquet", vectors[:100])
    out = tmp_path / "x.faiss"
    build_index([a], out)
    with pytest.raises(InputError, match="already exists"):
        build_index([a], out)
    with pytest.raises(InputError, match="invalid FAISS factory string 'IVF16,PQ7'"):
        build_index([a], out, factory="IVF16,PQ7", force=True)  # 7 does not divide 32
    with pytest.raises(InputError, match="too few to train"):
        build_index([a], out, factory="IVF1024,Flat", force=True)
    assert load_index(out).factory == "Flat"  # failed rebuilds left the old index intact


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_index_file(tmp_path, vectors, damage):
    a = write_shard(tmp_path / "a.parquet", vectors[:500])
    out = tmp_path / "x.faiss"
    build_index([a], out, factory="IVF4,Flat")
    data = out.read_bytes()
    out.write_bytes(
        {"garbage": b"not an index at all" * 10, "truncated": data[: len(data) // 2], "empty": b""}[
            damage
        ]
    )
    with pytest.raises(IndexError_) as e:
        load_index(out)
    msg = str(e.value)
    assert "\n" not in msg and "cannot read the FAISS index" in msg
    assert "rebuild it with `emmax index`" in msg


def test_missing_or_inconsistent_sidecars(tmp_path, vectors):
    a = write_shard(tmp_path / "a.parquet", vectors[:200])
    out = tmp_path / "x.faiss"
    build_index([a], out)
    meta_path, ids_path = sidecar_paths(out)
    with pytest.raises(InputError, match="no such index file"):
        load_index(tmp_path / "nope.faiss")
    np.save(tmp_path / "short.npy", np.arange(3))
    ids_path.write_bytes((tmp_path / "short.npy").read_bytes())
    with pytest.raises(IndexError_, match="disagree"):
        load_index(out)
    ids_path.unlink()
    with pytest.raises(IndexError_, match=r"sidecar x\.faiss\.ids\.npy is missing"):
        load_index(out)
    np.save(tmp_path / "ids.npy", np.arange(200))
    ids_path.write_bytes((tmp_path / "ids.npy").read_bytes())
    meta_path.write_text("{not json")
    with pytest.raises(IndexError_, match=r"x\.faiss\.json: unreadable index metadata"):
        load_index(out)
    meta_path.unlink()
    with pytest.raises(IndexError_, match=r"x\.faiss\.json is missing.*rebuild"):
        load_index(out)


def test_device_mapping_without_gpu_faiss():
    from emmax_cli.device import faiss_gpu_device
    from emmax_cli.errors import EmmaxError

    if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus():
        pytest.skip("faiss sees a GPU")
    assert faiss_gpu_device("cpu") is None and faiss_gpu_device("auto") is None
    with pytest.raises(EmmaxError, match="no GPU support") as e:
        faiss_gpu_device("cuda:0")
    assert "--device cpu" in e.value.hint
    with pytest.raises(EmmaxError, match="unknown device 'tpu'"):
        faiss_gpu_device("tpu")
