"""`emmax index` on a shard folder (`emmax embed --ray`): a Flat index equals one built from a
single file; an IVF index merged on disk (`X.faiss.ivfdata`) answers the same k-NN as one
built in one go; global ids; Ray tasks; damaged inputs and moved indexes."""

from __future__ import annotations

import json
import os
import shutil
import time

import faiss
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import one_line_error

from emmax_cli.cli import cli
from emmax_cli.errors import IndexError_, InputError
from emmax_cli.index import add_to_index, build_index, load_index
from emmax_cli.index_meta import file_digest
from emmax_cli.index_shards import build_sharded_index
from emmax_cli.io.parquet import EmbeddingWriter
from emmax_cli.shards import (
    FORMAT,
    VERSION,
    iter_shard_rows,
    open_shard_dir,
    shard_name,
    write_manifest,
)

META = {"model_id": "x"}
K = 10


def write_parquet(path, ids, emb, chunk=400):
    w = EmbeddingWriter(path, emb.shape[1], meta=META, with_text=False)
    for s in range(0, len(emb), chunk):
        w.write(ids[s : s + chunk], emb[s : s + chunk])
    w.close()
    return path


def make_shard_dir(folder, embeddings_per_shard, ids_per_shard=None, inputs=None, done=True):
    """A finished shard folder as `emmax embed --ray` writes it, without Ray: one Parquet file
    per shard (ids = input line numbers) and a manifest with sizes and digests.

    Args:
        embeddings_per_shard: one (n, dim) array per shard.
        ids_per_shard: each shard's `id` column (default: consecutive line numbers).
        inputs: each shard's input number (default: all from input 0); a shard's lines
            start where the previous shard of its input ended.
        done: the `done` flag of every shard (or a list of flags).
    """
    folder.mkdir()
    n = len(embeddings_per_shard)
    inputs = inputs or [0] * n
    dones = done if isinstance(done, list) else [done] * n
    ends: dict[int, int] = {}
    shards = []
    for i, emb in enumerate(embeddings_per_shard):
        inp, start = inputs[i], ends.get(inputs[i], 0)
        ids = start + np.arange(len(emb)) if ids_per_shard is None else ids_per_shard[i]
        end = int(ids[-1]) + 1 if len(ids) else start
        path = write_parquet(folder / shard_name(i), np.asarray(ids, np.int64), emb)
        shards.append(
            {
                "name": path.name,
                "input": inp,
                "start_line": start,
                "end_line": end,
                "start_byte": 0,
                "done": dones[i],
                "rows": len(emb),
                "lines": end - start,
                "bytes": path.stat().st_size,
                "blake2b": file_digest(path),
            }
        )
        ends[inp] = end
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "job": {"model": "x", "shard_lines": 1000},
        "inputs": [{"path": f"in{k}.txt", "lines": ends[k]} for k in sorted(ends)],
        "shards": shards,
    }
    write_manifest(folder, manifest)
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """3000 random vectors (dim 32) in 3 uneven shards of two inputs, with gaps in the line
    numbers (skipped bad lines), and the same rows with their global ids in one file."""
    d = tmp_path_factory.mktemp("shards")
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((3000, 32), dtype=np.float32)  # build normalises
    sizes, inputs = [1100, 1200, 700], [0, 0, 1]
    parts = np.split(emb, np.cumsum(sizes)[:-1])
    # input 0: lines 0..2627, every 8th line skipped; input 1: lines 0..699
    in0 = np.array([i for i in range(2700) if i % 8 != 7])[:2300]
    ids = [in0[:1100], in0[1100:], np.arange(700)]
    folder = make_shard_dir(d / "emb", parts, ids, inputs)
    global_ids = np.concatenate([ids[0], ids[1], ids[2] + int(in0[-1]) + 1])
    one = write_parquet(d / "one.parquet", global_ids, emb)
    queries = rng.standard_normal((200, 32), dtype=np.float32)
    faiss.normalize_L2(queries)
    return {"dir": folder, "one": one, "emb": emb, "ids": global_ids, "queries": queries}


def knn_ids(path, queries, nprobe=None):
    li = load_index(path, nprobe=nprobe)
    dist, rows = li.index.search(queries, K)
    return li.ids[rows], dist


def test_flat_shard_dir_equals_one_file(tmp_path, data):
    meta = build_index([data["dir"]], tmp_path / "s.faiss", "Flat")
    build_index([data["one"]], tmp_path / "o.faiss", "Flat")
    ids_s, d_s = knn_ids(tmp_path / "s.faiss", data["queries"])
    ids_o, d_o = knn_ids(tmp_path / "o.faiss", data["queries"])
    np.testing.assert_array_equal(ids_s, ids_o)
    np.testing.assert_array_equal(d_s, d_o)
    assert meta["shard_dir"] == str(data["dir"].resolve())
    assert [s["rows"] for s in meta["sources"]] == [1100, 1200, 700]
    assert "ondisk" not in meta and not (tmp_path / "s.faiss.ivfdata").exists()


def test_ids_sidecar_holds_the_global_ids(tmp_path, data):
    build_index([data["dir"]], tmp_path / "s.faiss", "IVF16,Flat", workers=2)
    ids = np.load(tmp_path / "s.faiss.ids.npy")
    streamed = np.concatenate([b["id"] for b in iter_shard_rows(open_shard_dir(data["dir"]))])
    np.testing.assert_array_equal(ids, streamed)
    np.testing.assert_array_equal(ids, data["ids"])
    assert ids[1099] == 1256 and ids[2299] == 2627 and ids[-1] == 2628 + 699  # input 1: +2628


def recall(found, exact):
    return np.mean([len(set(f) & set(e)) / K for f, e in zip(found, exact, strict=True)])


@pytest.mark.parametrize("factory", ["IVF16,Flat", "IVF16,PQ8x4", "PCAR32,IVF16,Flat"])
def test_ivf_merged_on_disk_answers_like_one_go(tmp_path, data, factory, capfd, request):
    t0 = time.perf_counter()
    meta = build_sharded_index(
        data["dir"], tmp_path / "s.faiss", factory, train_sample=2000, nprobe=16, workers=3
    )
    seconds = time.perf_counter() - t0
    build_index([data["one"]], tmp_path / "o.faiss", factory, train_sample=2000, nprobe=16)
    build_index([data["one"]], tmp_path / "exact.faiss", "Flat")
    data_file = tmp_path / "s.faiss.ivfdata"
    assert meta["ondisk"] == data_file.name and meta["ondisk_bytes"] == data_file.stat().st_size
    assert meta["train_sample"] == 2000 and meta["nprobe"] == 16
    exact, _ = knn_ids(tmp_path / "exact.faiss", data["queries"])
    report = [f"{factory}: sharded build {seconds:.2f}s"]
    for nprobe in (16, 4):  # 16: every list is visited
        ids_s, d_s = knn_ids(tmp_path / "s.faiss", data["queries"], nprobe)
        ids_o, d_o = knn_ids(tmp_path / "o.faiss", data["queries"], nprobe)
        np.testing.assert_array_equal(ids_s, ids_o)  # same training sample, same lists
        np.testing.assert_allclose(d_s, d_o, rtol=0, atol=1e-6)
        r_s, r_o = recall(ids_s, exact), recall(ids_o, exact)
        report.append(f"{factory} nprobe {nprobe}: recall@{K} {r_s:.3f} (one go {r_o:.3f})")
        assert r_s == r_o
        if factory == "IVF16,Flat" and nprobe == 16:
            assert r_s == 1.0
    li = load_index(tmp_path / "s.faiss")
    od = faiss.downcast_InvertedLists(faiss.extract_index_ivf(li.index).invlists)
    assert isinstance(od, faiss.OnDiskInvertedLists)  # the lists stay on disk
    out = capfd.readouterr().out
    assert "resizing" not in out and "ivfdata" not in out  # faiss's printf kept off stdout
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no work folder
    if request.config.getoption("capture") == "no":  # pytest -s: the figures
        with capfd.disabled():
            print("\n" + "\n".join(report))


def test_ray_tasks_build_the_same_index(tmp_path, data, ray_local):
    kw = dict(train_sample=2000, nprobe=8)
    build_sharded_index(data["dir"], tmp_path / "r.faiss", "IVF16,Flat", ray_address="local", **kw)
    build_sharded_index(data["dir"], tmp_path / "t.faiss", "IVF16,Flat", workers=2, **kw)
    ids_r, d_r = knn_ids(tmp_path / "r.faiss", data["queries"])
    ids_t, d_t = knn_ids(tmp_path / "t.faiss", data["queries"])
    np.testing.assert_array_equal(ids_r, ids_t)
    np.testing.assert_array_equal(d_r, d_t)
    np.testing.assert_array_equal(np.load(tmp_path / "r.faiss.ids.npy"), data["ids"])
    ivfdata = (tmp_path / "t.faiss.ivfdata").read_bytes()
    assert (tmp_path / "r.faiss.ivfdata").read_bytes() == ivfdata
    r = run("index", data["dir"], "-o", tmp_path / "c.faiss", "--type", "IVF16,Flat",
            "--train-sample", "2000", "--ray")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert (tmp_path / "c.faiss.ivfdata").read_bytes() == ivfdata


def test_loads_from_another_cwd_and_after_moving(tmp_path, data, monkeypatch):
    (tmp_path / "idx").mkdir()
    (tmp_path / "other").mkdir()
    build_sharded_index(data["dir"], tmp_path / "idx" / "s.faiss", "IVF16,Flat", nprobe=16)
    want, _ = knn_ids(tmp_path / "idx" / "s.faiss", data["queries"])
    monkeypatch.chdir(tmp_path / "other")
    got, _ = knn_ids("../idx/s.faiss", data["queries"])
    np.testing.assert_array_equal(got, want)
    shutil.move(tmp_path / "idx", tmp_path / "moved")
    got, _ = knn_ids(tmp_path / "moved" / "s.faiss", data["queries"])
    np.testing.assert_array_equal(got, want)
    monkeypatch.chdir(tmp_path / "moved")
    got, _ = knn_ids("s.faiss", data["queries"])
    np.testing.assert_array_equal(got, want)


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_cli_builds_from_a_folder(tmp_path, data):
    r = run("index", data["dir"], "-o", tmp_path / "s.faiss", "--type", "IVF16,Flat",
            "--workers", "2", "--nprobe", "16")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert r.stdout == ""
    meta = json.loads((tmp_path / "s.faiss.json").read_text())
    assert meta["ondisk"] == "s.faiss.ivfdata" and meta["ntotal"] == 3000
    ids, _ = knn_ids(tmp_path / "s.faiss", data["queries"])
    exact = data["ids"][np.argsort(-(data["queries"] @ unit(data["emb"]).T), axis=1)[:, :K]]
    assert recall(ids, exact) == 1.0


def unit(x):
    x = np.array(x, np.float32)
    faiss.normalize_L2(x)
    return x


def test_cli_folder_errors(tmp_path, data):
    (tmp_path / "plain").mkdir()
    r = run("index", tmp_path / "plain", "-o", tmp_path / "p.faiss")
    one_line_error(r, "no manifest.json", "emmax embed --ray")
    emb = np.ones((10, 8), np.float32)
    make_shard_dir(tmp_path / "half", [emb, emb], done=[True, False])
    r = run("index", tmp_path / "half", "-o", tmp_path / "h.faiss")
    one_line_error(r, "1 of 2 shards are not finished", "rerun `emmax embed --ray`")
    r = run("index", data["dir"], data["one"], "-o", tmp_path / "m.faiss")
    one_line_error(r, "is a folder", "indexed on its own")
    assert not list(tmp_path.glob("*.faiss*"))


@pytest.fixture
def ondisk(tmp_path, data):
    build_sharded_index(data["dir"], tmp_path / "s.faiss", "IVF16,Flat", nprobe=16)
    return tmp_path / "s.faiss"


@pytest.mark.parametrize(
    "damage, needle",
    [
        ("remove", "inverted lists s.faiss.ivfdata are missing"),
        ("truncate", "s.faiss.ivfdata has"),
        ("append", "s.faiss.ivfdata has"),
        ("flip", "checksum mismatch in s.faiss.ivfdata"),
    ],
)
def test_damaged_ivfdata_is_one_line(ondisk, data, damage, needle):
    f = ondisk.with_name("s.faiss.ivfdata")
    raw = f.read_bytes()
    if damage == "remove":
        f.unlink()
    elif damage == "truncate":
        f.write_bytes(raw[: len(raw) // 2])
    elif damage == "append":
        f.write_bytes(raw + b"\0" * 64)
    else:
        f.write_bytes(raw[:100] + bytes([raw[100] ^ 0xFF]) + raw[101:])
    with pytest.raises(IndexError_, match="rebuild it"):
        load_index(ondisk)
    r = run("index", data["one"], "-o", ondisk, "--add")  # loads the index first
    one_line_error(r, needle, "rebuild it with `emmax index`")


def test_size_is_checked_even_without_the_digest(ondisk):
    meta_path = ondisk.with_name("s.faiss.json")
    meta = json.loads(meta_path.read_text())
    del meta["ondisk_blake2b"]
    meta_path.write_text(json.dumps(meta))
    f = ondisk.with_name("s.faiss.ivfdata")
    f.write_bytes(f.read_bytes()[:-8])
    with pytest.raises(IndexError_, match="has .* bytes"):
        load_index(ondisk)  # not a SIGBUS on the first search


def test_add_to_a_sharded_index_is_refused(ondisk, data):
    before = ondisk.read_bytes()
    with pytest.raises(InputError, match="built from a shard folder cannot be extended"):
        add_to_index(ondisk, [data["one"]])
    r = run("index", data["one"], "-o", ondisk, "--add")
    one_line_error(r, "cannot be extended", "rebuild it")
    assert ondisk.read_bytes() == before
    build_index([data["one"]], ondisk.with_name("o.faiss"), "Flat")
    r = run("index", data["dir"], "-o", ondisk.with_name("o.faiss"), "--add")
    one_line_error(r, "is a folder", "indexed on its own")


def test_flat_type_and_auto_need_no_ondisk(tmp_path, data):
    meta = build_sharded_index(data["dir"], tmp_path / "a.faiss")  # auto: Flat at 3000 rows
    assert meta["factory"] == "Flat" and meta["nprobe"] is None and "ondisk" not in meta
    assert os.path.exists(tmp_path / "a.faiss") and not (tmp_path / "a.faiss.ivfdata").exists()
