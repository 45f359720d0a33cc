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


def strip_checksums(out):
    """Make the sidecar look like a format-1 index (written before checksums)."""
    meta_path = sidecar_paths(out)[0]
    meta = json.loads(meta_path.read_text())
    meta.pop("checksums")
    meta["format_version"] = 1
    meta_path.write_text(json.dumps(meta))


def flip_bytes(path, start, n=64):
    data = bytearray(path.read_bytes())
    for i in range(start, start + n):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("checksums", [True, False])
@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_index_file(tmp_path, vectors, damage, checksums):
    a = write_shard(tmp_path / "a.parquet", vectors[:500])
    out = tmp_path / "x.faiss"
    build_index([a], out, factory="IVF4,Flat")
    if not checksums:
        strip_checksums(out)
    data = out.read_bytes()
    out.write_bytes(
        {"garbage": b"not an index at all" * 10, "truncated": data[: len(data) // 2], "empty": b""}[
            damage
        ]
    )
    with pytest.raises(IndexError_) as e:
        load_index(out)
    msg = str(e.value)
    assert "\n" not in msg and "rebuild it with `emmax index`" in msg
    if checksums:  # found before faiss parses anything
        assert "is corrupt (checksum mismatch in x.faiss)" in msg
    else:
        assert "cannot read the FAISS index" in msg


def test_checksums_written_and_flipped_vector_bytes_detected(tmp_path, vectors):
    """64 flipped bytes in the vector data load fine in faiss and mine garbage: the checksum
    catches them; without checksums (format 1) the norm check on a Flat index does."""
    a = write_shard(tmp_path / "a.parquet", vectors[:2000])
    out = tmp_path / "x.faiss"
    meta = build_index([a], out)
    assert meta["format_version"] == 2 and set(meta["checksums"]) == {"algorithm", "ids", "index"}
    flip_bytes(out, out.stat().st_size // 2)
    with pytest.raises(IndexError_, match=r"x\.faiss is corrupt \(checksum mismatch in x\.faiss\)"):
        load_index(out)
    strip_checksums(out)
    with pytest.raises(IndexError_, match=r"is corrupt \(row \d+ has norm .* normalised\)"):
        load_index(out)
    # an intact format-1 index still loads
    build_index([a], out, force=True)
    strip_checksums(out)
    assert load_index(out).ntotal == 2000


def test_missing_or_inconsistent_sidecars(tmp_path, vectors):
    a = write_shard(tmp_path / "a.parquet", vectors[:200])
    out = tmp_path / "x.faiss"
    build_index([a], out)
    strip_checksums(out)  # the checks below are behind the checksum
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


@pytest.mark.parametrize(
    "content,needle",
    [
        (b"garbage, not numpy at all" * 4, "(unreadable)"),
        ("float", "dtype float64"),
        ("2d", "shape (100, 2)"),
    ],
)
def test_garbage_ids_file(tmp_path, vectors, content, needle):
    a = write_shard(tmp_path / "a.parquet", vectors[:200])
    out = tmp_path / "x.faiss"
    build_index([a], out)
    strip_checksums(out)
    ids_path = sidecar_paths(out)[1]
    if content == "float":
        np.save(ids_path, np.arange(200, dtype=np.float64))
    elif content == "2d":
        np.save(ids_path, np.zeros((100, 2), np.int64))
    else:
        ids_path.write_bytes(content)
    with pytest.raises(IndexError_) as e:
        load_index(out)
    msg = str(e.value)
    assert "x.faiss.ids.npy: not a row-id file written by emmax index" in msg and needle in msg
    assert "pickle" not in msg and "\n" not in msg


def test_moved_or_changed_source_file(tmp_path, vectors):
    a = write_shard(tmp_path / "a.parquet", vectors[:200])
    out = tmp_path / "x.faiss"
    build_index([a], out)
    a.rename(tmp_path / "moved.parquet")
    with pytest.raises(InputError) as e:
        load_index(out)
    assert str(e.value) == (
        f"index {out} refers to its source file {a}, which is missing "
        "(move it back or rebuild the index)"
    )
    assert load_index(out, check_source_files=False).ntotal == 200  # --add does not need it
    write_shard(a, vectors[:150])
    with pytest.raises(InputError, match=r"now has 150 rows, not 200"):
        load_index(out)


def test_flipped_bytes_in_parquet_source(tmp_path, vectors):
    """Damage inside a data page (not the footer): found while reading, mid-iteration."""
    import pyarrow.parquet as pq

    from emmax_cli.io.parquet import iter_embeddings, read_embeddings

    a = write_shard(tmp_path / "a.parquet", vectors[:3000], chunk=500)
    md = pq.ParquetFile(a).metadata
    col = md.row_group(3).column(md.num_columns - 1)  # the embedding column of group 3
    flip_bytes(a, col.data_page_offset + 64)
    out = tmp_path / "x.faiss"
    for call in (
        lambda: build_index([a], out),
        lambda: read_embeddings(a),
        lambda: list(iter_embeddings(a, batch_rows=500)),
    ):
        with pytest.raises(InputError) as e:
            call()
        msg = str(e.value)
        assert msg.startswith(f"{a}: not a readable embedding Parquet file (")
        assert msg.endswith("(re-run emmax embed)") and "\n" not in msg
    assert not out.exists() and not list(tmp_path.glob(".x.faiss*"))
    it = iter_embeddings(a, batch_rows=500)
    assert len(next(it)["id"]) == 500  # the groups before the damage still read


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
