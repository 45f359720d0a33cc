"""`emmax mine --ray`: k-NN searches as Ray tasks over query shards give the pairs of a
single-process run (tiny model; and the real default model on Tatoeba deu/eng, sharded by
`embed --ray`), resume from finished shards, and refuse bad work folders in one line."""

from __future__ import annotations

import random

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import one_line_error, read_tatoeba
from test_ray_embed import said, write_corpus

from emmax_cli.cli import cli
from emmax_cli.mine import mine
from emmax_cli.mine_shards import mine_ray


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def pairs_of(tsv: str) -> dict[tuple[int, int], float]:
    """(src_id, tgt_id) -> score of `--with-ids` TSV output."""
    out = {}
    for line in tsv.splitlines():
        f = line.split("\t")
        out[int(f[-2]), int(f[-1])] = float(f[0])
    return out


def same_pairs(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and len(a) > 0
    # float32 GEMMs of other shapes round differently in the last bit
    assert max(abs(a[p] - b[p]) for p in a) <= 2e-6


def as_dict(p) -> dict[tuple[int, int], float]:
    return {
        (s, t): v
        for s, t, v in zip(p.src_idx.tolist(), p.tgt_idx.tolist(), p.score.tolist(), strict=True)
    }


def unit(rng, n, d=16):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("retrieval", ["max", "intersect", "union"])
def test_mine_ray_equals_mine(ray_local, tmp_path, retrieval):
    rng = np.random.default_rng(0)
    y = unit(rng, 900)
    x = np.concatenate([y[:500] + 0.05 * unit(rng, 500), unit(rng, 300)])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ref = mine(x, y, k=4, retrieval=retrieval)
    got = mine_ray(x, y, k=4, retrieval=retrieval, work_dir=tmp_path / "w", query_rows=250)
    assert not (tmp_path / "w").exists()  # removed on success
    same_pairs(as_dict(ref), as_dict(got))


def test_mine_ray_resumes_from_finished_shards(ray_local, tmp_path, caplog):
    rng = np.random.default_rng(1)
    x, y = unit(rng, 600), unit(rng, 500)
    work = tmp_path / "w"
    first = mine_ray(x, y, work_dir=work, query_rows=200, keep_work=True)
    shards = sorted(work.glob("*.npz"))
    assert len(shards) == 6  # 3 source and 3 target query shards
    shards[1].unlink()  # as if the driver died with this shard in flight
    caplog.set_level("INFO")
    again = mine_ray(x, y, work_dir=work, query_rows=200)
    assert "5 finished query shard(s) reused" in caplog.text
    assert np.array_equal(first.src_idx, again.src_idx)
    assert np.array_equal(first.score, again.score)
    # other embeddings in the same work folder: started afresh, not mixed up
    caplog.clear()
    other = mine_ray(x[::-1].copy(), y, work_dir=work, query_rows=200)
    assert "reused" not in caplog.text
    assert np.array_equal(np.sort(other.src_idx), np.sort(len(x) - 1 - first.src_idx))


def test_mine_ray_cli_on_shard_folders_and_index(ray_local, tiny_model, tmp_path):
    s = write_corpus(tmp_path / "s.txt", 700, seed=5)
    lines = s.read_text().splitlines()
    random.Random(0).shuffle(lines)
    t = tmp_path / "t.txt"
    t.write_text("\n".join(lines[:600]) + "\n")
    for side in ("s", "t"):
        r = run("embed", tmp_path / f"{side}.txt", "--model", tiny_model, "--chunk-lines", 100)
        assert r.exit_code == 0, r.output
        r = run(
            "embed",
            tmp_path / f"{side}.txt",
            "--model",
            tiny_model,
            "--ray",
            "-o",
            tmp_path / f"{side}.shards",
            "--shard-lines",
            200,
            "--chunk-lines",
            100,
        )
        assert r.exit_code == 0, r.output
    common = ("--model", tiny_model, "--no-filters", "--with-ids", "--threshold", 1.0)
    ref = run("mine", tmp_path / "s.parquet", tmp_path / "t.parquet", *common)
    assert ref.exit_code == 0, ref.output
    got = run(
        "mine",
        "--ray",
        "--query-rows",
        150,
        tmp_path / "s.shards",
        tmp_path / "t.shards",
        *common,
        "-o",
        tmp_path / "p.tsv",
    )
    assert got.exit_code == 0, got.output
    same_pairs(pairs_of(ref.stdout), pairs_of((tmp_path / "p.tsv").read_text()))
    assert not (tmp_path / ".p.tsv.work").exists()
    # the other side through an index built from its shard folder
    r = run("index", tmp_path / "t.shards", "-o", tmp_path / "t.faiss")
    assert r.exit_code == 0, r.output
    got = run("mine", tmp_path / "s.shards", tmp_path / "t.faiss", *common, "--ray")
    assert got.exit_code == 0, got.output
    same_pairs(pairs_of(ref.stdout), pairs_of(got.stdout))


def test_mine_ray_bad_input(ray_local, tiny_model, tmp_path):
    s = write_corpus(tmp_path / "s.txt", 50)
    (tmp_path / "plain").mkdir()
    r = run("mine", "--ray", s, tmp_path / "plain", "--model", tiny_model)
    assert r.exit_code == 2 and "is not a Ray address" in r.output  # --ray ate the input
    r = run("mine", s, tmp_path / "plain", "--model", tiny_model, "--ray")
    one_line_error(r, "plain: is a folder without a shard manifest")
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "x").write_text("x")
    r = run("mine", "--ray", "local", "--work-dir", tmp_path / "w", s, s, "--model", tiny_model)
    one_line_error(r, "is not an emmax mining work folder")
    r = run("mine", "--work-dir", tmp_path / "w", s, s, "--model", tiny_model)
    assert r.exit_code == 2 and "are for --ray" in r.output


@pytest.mark.real
def test_mine_ray_tatoeba_deu_eng_same_pairs(ray_local, tmp_path):
    """Must show: `mine --ray` on Tatoeba deu/eng sharded by `embed --ray` gives the pairs of
    `emmax mine` on the text files (default model and filters)."""
    de, en = read_tatoeba("deu")
    random.Random(0).shuffle(en)
    for lang, lines in (("de", de), ("en", en)):
        (tmp_path / f"{lang}.txt").write_text("\n".join(lines) + "\n")
        shards = tmp_path / f"{lang}.shards"
        r = run(
            "embed",
            tmp_path / f"{lang}.txt",
            "--lang",
            lang,
            "-o",
            shards,
            "--chunk-lines",
            128,
            "--shard-lines",
            256,
            "--ray",
        )
        assert r.exit_code == 0, r.output
    opts = ("--src", "de", "--tgt", "en", "--with-ids")
    ref = run("mine", tmp_path / "de.txt", tmp_path / "en.txt", *opts)
    got = run(
        "mine", tmp_path / "de.shards", tmp_path / "en.shards", *opts, "--query-rows", 300, "--ray"
    )
    assert ref.exit_code == 0 and got.exit_code == 0, (ref.output, got.output)
    a, b = pairs_of(ref.stdout), pairs_of(got.stdout)
    # the text run embeds in other batches than the shards' windows: scores differ in the
    # 6th decimal at most, the pairs not at all
    assert a.keys() == b.keys() and len(a) >= 950
    diff = max(abs(a[p] - b[p]) for p in a)
    assert diff <= 1e-5
    assert said(got, "removed by:")
    print(f"Tatoeba deu/eng: {len(a)} pairs, same set; max score difference {diff:.2g}")
