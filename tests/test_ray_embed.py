"""`emmax embed --ray` on a local Ray cluster (2 CPUs, tiny model): the same rows as a
single-process run, a killed worker and a killed driver cost only the shards in flight, and
bad input fails in one line."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from click.testing import CliRunner
from conftest import one_line_error

from emmax_cli.cli import cli
from emmax_cli.io.parquet import read_embeddings
from emmax_cli.shards import open_shard_dir, read_shard_dir, scan_input

WORDS = "the a cat dog house water tom mary book good morning hello thank yes no".split()


def write_corpus(path: Path, n: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    lines = (" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 20))) for _ in range(n))
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def run(*args, env=None):
    return CliRunner().invoke(cli, [str(a) for a in args], env=env)


def said(r, text: str) -> bool:
    """``text`` is in the command's output (the console wraps long lines)."""
    return text in " ".join(r.output.split())


def single(tmp_path, tiny_model, inp, chunk=200):
    """The single-process reference, with one torch thread like each Ray worker."""
    import torch

    out = tmp_path / "single.parquet"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        r = run("embed", inp, "--model", tiny_model, "-o", out, "--chunk-lines", chunk, "--force")
    finally:
        torch.set_num_threads(before)
    assert r.exit_code == 0, r.output
    return read_embeddings(out, with_text=True)


def same_rows(folder, ref):
    ids, emb, texts, _ = read_shard_dir(folder)
    assert np.array_equal(ids, ref[0])
    assert texts == ref[2]
    assert np.array_equal(emb, ref[1])  # bit for bit: same windows, same thread count


def test_scan_input_cuts_at_line_starts(tmp_path):
    p = tmp_path / "x.txt"
    p.write_bytes(b"a\nbb\nccc\ndddd\ne")  # 5 lines, no final newline
    state, ranges = scan_input(p, 2)
    assert state["lines"] == 5
    assert ranges == [(0, 2, 0), (2, 4, 5), (4, 5, 14)]
    q = tmp_path / "y.txt"
    q.write_bytes(b"a\nb\n")  # a shard boundary at the very end makes no empty shard
    assert scan_input(q, 2)[1] == [(0, 2, 0)]


def test_embed_ray_equals_single_process(ray_local, tiny_model, tmp_path):
    inp = write_corpus(tmp_path / "in.txt", 1100)
    ref = single(tmp_path, tiny_model, inp)
    out = tmp_path / "shards"
    args = ("embed", inp, "--model", tiny_model, "--ray", "-o", out, "--chunk-lines", 200)
    r = run(*args, "--shard-lines", 300)  # rounded up to 400: 3 shards
    assert r.exit_code == 0, r.output
    m = json.loads((out / "manifest.json").read_text())
    assert [s["start_line"] for s in m["shards"]] == [0, 400, 800]
    assert all(s["done"] for s in m["shards"]) and sum(s["rows"] for s in m["shards"]) == 1100
    same_rows(out, ref)
    # rerun: everything reused, nothing embedded
    r = run(*args, "--shard-lines", 300)
    assert r.exit_code == 0 and said(r, "3 finished shard(s) reused, 0 to embed")
    # a damaged shard is embedded again, the others reused
    part = out / "part-00001.parquet"
    part.write_bytes(part.read_bytes()[:-100])
    r = run(*args, "--shard-lines", 300)
    assert r.exit_code == 0 and said(r, "2 finished shard(s) reused, 1 to embed")
    same_rows(out, ref)


def test_several_inputs_number_rows_as_concatenated(ray_local, tiny_model, tmp_path):
    a = write_corpus(tmp_path / "a.txt", 250, seed=1)
    b = write_corpus(tmp_path / "b.txt", 120, seed=2)
    out = tmp_path / "ab"
    r = run(
        "embed",
        a,
        b,
        "--model",
        tiny_model,
        "--ray",
        "-o",
        out,
        "--shard-lines",
        100,
        "--chunk-lines",
        100,
    )
    assert r.exit_code == 0, r.output
    ss = open_shard_dir(out)
    assert len(ss.files) == 5 and ss.id_offsets == [0, 0, 0, 250, 250]
    ids, _, texts, _ = read_shard_dir(out)
    assert ids.tolist() == list(range(370))
    assert texts == a.read_text().splitlines() + b.read_text().splitlines()


def thirty_shards(inp: Path, model: Path, out: Path) -> list[str]:
    """`embed --ray` of a 12,000-line input in 30 shards (long enough to be killed mid-run)."""
    args = ("embed", inp, "--model", model, "-o", out, "--shard-lines", 400, "--chunk-lines", 200)
    return [str(a) for a in args] + ["--ray"]


def _workers() -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and b"ShardWorker" in (d / "cmdline").read_bytes():
                pids.append(int(d.name))
        except OSError:
            pass
    return pids


def _done(folder: Path) -> int:
    try:
        return sum(s["done"] for s in json.loads((folder / "manifest.json").read_text())["shards"])
    except (OSError, ValueError):
        return 0


def test_killed_worker_still_finishes_with_the_same_rows(ray_local, tiny_model, tmp_path):
    inp = write_corpus(tmp_path / "in.txt", 12_000)
    ref = single(tmp_path, tiny_model, inp)
    out = tmp_path / "shards"
    killed = []

    def killer():
        deadline = time.time() + 120
        while time.time() < deadline and not killed:
            if _done(out) >= 2 and _workers():
                os.kill(_workers()[0], signal.SIGKILL)
                killed.append(_done(out))
            time.sleep(0.02)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    r = run(*thirty_shards(inp, tiny_model, out))
    t.join(1)
    assert r.exit_code == 0, r.output
    assert killed and killed[0] < 30, "the worker was not killed mid-run"
    same_rows(out, ref)
    print(f"worker killed after {killed[0]} of 30 shards; 30 shards, {len(ref[0])} rows equal")


def test_killed_driver_rerun_reuses_finished_shards(ray_local, tiny_model, tmp_path):
    inp = write_corpus(tmp_path / "in.txt", 12_000)
    out = tmp_path / "shards"
    args = thirty_shards(inp, tiny_model, out)
    env = {**os.environ, "RAY_ADDRESS": ""}  # its own local instance, killed with it
    p = subprocess.Popen(
        [sys.executable, "-m", "emmax_cli", *args],
        env=env,
        start_new_session=True,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while _done(out) < 3 and p.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    finished = _done(out)
    assert 3 <= finished < 30, f"killed after {finished} of 30 shards"
    r = run(*args)
    assert r.exit_code == 0, r.output
    assert said(r, f"{finished} finished shard(s) reused, {30 - finished} to embed")
    ref = single(tmp_path, tiny_model, inp)
    same_rows(out, ref)
    print(f"driver killed after {finished} of 30 shards; rerun reused {finished}")


def test_bad_input_and_folders(ray_local, tiny_model, tmp_path):
    inp = write_corpus(tmp_path / "in.txt", 50)
    r = run("embed", inp, "--model", tiny_model, "--ray")
    assert r.exit_code == 2 and "--ray needs -o FOLDER" in r.output
    r = run("embed", "-", "--model", tiny_model, "--ray", "-o", tmp_path / "s")
    one_line_error(r, "--ray cannot read stdin")
    r = run("embed", tmp_path / "missing.txt", "--model", tiny_model, "--ray", "-o", tmp_path / "s")
    one_line_error(r, "missing.txt: no such file")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    r = run("embed", inp, "--model", tiny_model, "--ray", "-o", tmp_path / "full")
    one_line_error(r, "not an emmax shard folder", "empty or new folder")
    r = run("embed", inp, "--model", tiny_model, "--ray", "-o", tmp_path / "full", "--force")
    one_line_error(r, "not an emmax shard folder")  # --force never empties a foreign folder
    assert (tmp_path / "full" / "x").exists()
    r = run("embed", inp, "--model", tiny_model, "--ray", "-o", tmp_path / "s")
    assert r.exit_code == 0, r.output
    other = write_corpus(tmp_path / "other.txt", 60, seed=3)
    r = run("embed", other, "--model", tiny_model, "--ray", "-o", tmp_path / "s")
    one_line_error(r, "holds shards of another job", "--force")
    (tmp_path / "s" / "notes.txt").write_text("mine")
    r = run("embed", other, "--model", tiny_model, "--ray", "-o", tmp_path / "s", "--force")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "s" / "notes.txt").exists() and read_shard_dir(tmp_path / "s")[0].size == 60
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine\n\xff\xfe broken\n")
    r = run("embed", bad, "--model", tiny_model, "--ray", "-o", tmp_path / "b")
    one_line_error(r, "bad.txt line 2: cannot decode")
    r = run("embed", inp, "--model", tiny_model, "--workers", 2)
    assert r.exit_code == 2 and "--workers is for --ray" in r.output
    r = run("mine", tmp_path / "b", tmp_path / "s", "--model", tiny_model)
    one_line_error(r, "not finished")
