"""The command line as a whole, on the tiny model: error handling in the group (--debug, Ctrl-C,
broken pipe, a full disk), bad input refused before the model loads, lazy imports, and the
public Python API. Subprocess tests run `python -m emmax_cli` for real signals and pipes."""

from __future__ import annotations

import errno
import gzip
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import one_line_error

from emmax_cli.cli import cli

WORDS = "the a cat dog house water tom mary book good morning hello thank yes no".split()
DEADLINE = 120  # seconds a subprocess may take to reach a state before the test gives up


def sentences(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))) + f" {i}" for i in range(n)
    ]


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(x + "\n" for x in lines), encoding="utf-8")
    return path


def run(*args, input=None):
    return CliRunner().invoke(cli, [str(a) for a in args], input=input)


def emmax(*args, **kw) -> subprocess.CompletedProcess:
    """`python -m emmax_cli ARGS` in a subprocess (text mode, output captured)."""
    kw.setdefault("timeout", 300)
    return subprocess.run(
        [sys.executable, "-m", "emmax_cli", *map(str, args)], capture_output=True, text=True, **kw
    )


def assert_one_line_error(stderr: str, *needles: str) -> None:
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), stderr
    for n in needles:
        assert n in lines[0], lines[0]


def wait_for(cond, what: str) -> None:
    """Poll ``cond()`` until true; fail (not hang) after DEADLINE seconds."""
    end = time.monotonic() + DEADLINE
    while not cond():
        if time.monotonic() > end:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.02)


@pytest.fixture(scope="module")
def ranked_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model with a GMM head warmed up on its own embeddings (plumbing only)."""
    import shutil

    from emmax_cli.models.encoder import Encoder
    from emmax_cli.models.gmm import fit_gmm_interpolation

    d = tmp_path_factory.mktemp("ranked") / "tiny-ranked"
    shutil.copytree(tiny_model_dir, d)
    enc = Encoder.load(str(d), device="cpu", precision="fp32")
    q, t = enc.encode(sentences(64, 1)), enc.encode(sentences(64, 2))
    fit_gmm_interpolation(q, t, steps=5, batch_pairs=256, seed=0).save(d)
    return d


@pytest.fixture
def no_model_load(monkeypatch):
    """Make loading an encoder fail loudly: an error seen instead comes before the model."""
    from emmax_cli.models import encoder

    def boom(*a, **kw):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(encoder.Encoder, "load", boom)
    monkeypatch.setattr(encoder.Encoder, "from_resolved", boom, raising=False)


# ---- lazy imports and the public API ----------------------------------------------------------
def test_help_imports_no_torch_transformers_or_faiss():
    code = textwrap.dedent(
        """
        import sys
        from emmax_cli.cli import cli
        from emmax_cli.commands.docs import walk
        for path, _ in walk(cli):
            try:
                cli([*path[1:], "--help"], prog_name="emmax")
            except SystemExit as e:
                assert e.code == 0, path
        heavy = sorted(m for m in ("torch", "transformers", "faiss") if m in sys.modules)
        print("HEAVY", heavy)
        """
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "HEAVY []" in r.stdout


def test_public_api_names_are_the_functions():
    code = textwrap.dedent(
        """
        import inspect
        # submodules first: importing them binds the package attributes of the same name
        import emmax_cli.mine, emmax_cli.rank, emmax_cli.train.config, emmax_cli.bitext
        from emmax_cli import (Encoder, GMMHead, embed_file, build_index, mine, rank,
                               TrainConfig, train, mine_files, rank_files, calibrate)
        import emmax_cli
        assert inspect.isfunction(mine) and mine.__module__ == "emmax_cli.mine", mine
        assert inspect.isfunction(rank) and rank.__module__ == "emmax_cli.rank", rank
        assert inspect.isfunction(train) and train.__module__ == "emmax_cli.train", train
        assert emmax_cli.train is train and emmax_cli.mine is mine
        assert inspect.isclass(TrainConfig) and inspect.isclass(Encoder)
        import emmax_cli.train.loop  # a later submodule import keeps the function
        assert emmax_cli.train is train
        from emmax_cli.train import Trainer  # the package itself is still importable
        for f in (mine_files, rank_files, calibrate, train, rank, embed_file, build_index):
            assert f.__doc__ and "Returns" in f.__doc__, f
        print("OK")
        """
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr


# ---- --debug ---------------------------------------------------------------------------------
def test_debug_shows_the_traceback_otherwise_one_line(tmp_path):
    missing = tmp_path / "missing.txt"
    plain = emmax("mine", missing, missing)
    assert plain.returncode == 1
    assert_one_line_error(plain.stderr, "missing.txt: no such file")
    debug = emmax("--debug", "mine", missing, missing)
    assert debug.returncode == 1
    assert "Traceback (most recent call last)" in debug.stderr
    assert "emmax_cli.errors.InputError: " in debug.stderr and "missing.txt" in debug.stderr


# ---- Ctrl-C ----------------------------------------------------------------------------------
def test_ctrl_c_during_rank_exits_130_and_leaves_nothing(ranked_model_dir, tmp_path):
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("".join(f"the cat {i} is good\tdog house {i}\n" for i in range(200_000)))
    out = tmp_path / "ranks.tsv"
    p = subprocess.Popen(
        [sys.executable, "-m", "emmax_cli", "rank", pairs, "-m", ranked_model_dir, "-o", out]
        + ["--chunk-lines", "200", "--device", "cpu"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        tmp = out.with_name(f".{out.name}.tmp")
        wait_for(lambda: tmp.exists() or p.poll() is not None, "the first chunk to be written")
        assert p.poll() is None, p.communicate()
        p.send_signal(signal.SIGINT)
        stdout, stderr = p.communicate(timeout=DEADLINE)
    finally:
        p.kill()
    assert p.returncode == 130, stderr
    assert stderr.strip().splitlines() == ["Interrupted."], stderr
    assert stdout == ""
    assert sorted(x.name for x in tmp_path.iterdir()) == ["pairs.tsv"]  # no output, no temp


def test_ctrl_c_while_mine_reads_a_pipe(tiny_model_dir, tmp_path):
    """SRC is a named pipe (like `<(zcat src.gz)`) that stays open: mine is still reading it
    when Ctrl-C comes."""
    fifo = tmp_path / "src.fifo"
    os.mkfifo(fifo)
    tgt = write(tmp_path / "tgt.txt", sentences(20, 1))
    out = tmp_path / "pairs.tsv"
    p = subprocess.Popen(
        [sys.executable, "-m", "emmax_cli", "mine", fifo, tgt, "-m", tiny_model_dir, "-o", out],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    fd = None
    try:

        def reader_is_there() -> bool:  # opening a FIFO without a reader fails with ENXIO
            nonlocal fd
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                return True
            except OSError as e:
                if e.errno != errno.ENXIO or p.poll() is not None:
                    raise
                return False

        wait_for(reader_is_there, "mine to open its input")
        os.write(fd, "".join(s + "\n" for s in sentences(10, 2)).encode())
        p.send_signal(signal.SIGINT)
        stdout, stderr = p.communicate(timeout=DEADLINE)
    finally:
        if fd is not None:
            os.close(fd)
        p.kill()
    assert p.returncode == 130, stderr
    assert stderr.strip().splitlines() == ["Interrupted."], stderr
    assert stdout == "" and not out.exists()
    assert sorted(x.name for x in tmp_path.iterdir()) == ["src.fifo", "tgt.txt"]


def test_mine_reads_process_substitutions(tiny_model_dir, tmp_path):
    """`<(cat file)` is a pipe: it must be read once, from its first byte."""
    src = write(tmp_path / "src.txt", sentences(30, 0))
    tgt = write(tmp_path / "tgt.txt", sentences(30, 0)[::-1])
    cmd = (
        f'"{sys.executable}" -m emmax_cli mine <(cat "{src}") <(cat "{tgt}") -m "{tiny_model_dir}"'
    )
    piped = subprocess.run(
        ["bash", "-c", cmd + " --no-threshold --no-filters"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    direct = emmax("mine", src, tgt, "-m", tiny_model_dir, "--no-threshold", "--no-filters")
    assert piped.returncode == direct.returncode == 0, piped.stderr
    assert piped.stdout == direct.stdout and len(piped.stdout.splitlines()) == 30


def test_rank_reads_process_substitutions(ranked_model_dir, tmp_path):
    """Pipes are copied once, read twice (the pre-pass, then the run), and removed."""
    a, b = write(tmp_path / "a.txt", sentences(9, 0)), write(tmp_path / "b.txt", sentences(9, 1))
    cmd = f'"{sys.executable}" -m emmax_cli rank <(cat "{a}") <(cat "{b}") -m "{ranked_model_dir}"'
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    piped = subprocess.run(
        ["bash", "-c", cmd], capture_output=True, text=True, env=env, timeout=300
    )
    direct = emmax("rank", a, b, "-m", ranked_model_dir)
    assert piped.returncode == direct.returncode == 0, piped.stderr
    assert piped.stdout == direct.stdout and len(piped.stdout.splitlines()) == 9
    assert sorted(x.name for x in tmp_path.iterdir()) == ["a.txt", "b.txt"]  # copies removed


# ---- stdout: broken pipe, full disk ------------------------------------------------------------
def test_broken_pipe_exits_0_quietly(tiny_model_dir, tmp_path):
    lines = sentences(3000, 0)  # ~100 kB of pairs: more than a pipe buffer holds
    src, tgt = write(tmp_path / "s.txt", lines), write(tmp_path / "t.txt", lines[::-1])
    p = subprocess.Popen(
        [sys.executable, "-m", "emmax_cli", "mine", src, tgt, "-m", tiny_model_dir, "--no-filters"]
        + ["--no-threshold", "--device", "cpu"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    first = p.stdout.readline()  # `| head -1`
    p.stdout.close()
    stderr = p.stderr.read().decode()
    assert p.wait(timeout=300) == 0, stderr
    assert first.count(b"\t") == 2
    assert "Traceback" not in stderr and "Error" not in stderr and "Exception" not in stderr


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("command", ["mine", "rank"])
def test_full_disk_on_stdout_is_one_line(command, ranked_model_dir, tmp_path):
    a, b = write(tmp_path / "a.txt", sentences(50, 0)), write(tmp_path / "b.txt", sentences(50, 1))
    extra = ["--no-threshold", "--no-filters"] if command == "mine" else []
    with open("/dev/full", "w") as full:
        r = subprocess.run(
            [sys.executable, "-m", "emmax_cli", command, a, b, "-m", ranked_model_dir, *extra],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=300,
        )
    assert r.returncode == 1
    assert_one_line_error(r.stderr, "cannot write to stdout: No space left on device")


# ---- bad options ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "option", [["--type", "Flat"], ["--train-sample", "100"], ["--nprobe", "8"], ["--seed", "1"]]
)
def test_index_add_refuses_options_of_a_new_index(option, tmp_path):
    emb = tmp_path / "x.parquet"
    emb.write_bytes(b"PAR1")  # never read: the usage error comes first
    r = run("index", emb, "-o", tmp_path / "x.faiss", "--add", *option)
    assert r.exit_code == 2, r.output
    assert f"{option[0]} cannot be used with --add" in r.stderr
    assert not (tmp_path / "x.faiss").exists()


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN"])
def test_threshold_must_be_finite(value, tmp_path):
    a = write(tmp_path / "a.txt", ["x"])
    r = run("mine", a, a, "--threshold", value)
    assert r.exit_code == 2 and "--threshold" in r.stderr and "not a finite number" in r.stderr
    assert r.stdout == ""


def test_k_above_the_corpus_size_says_so(tiny_model_dir, tmp_path):
    src = write(tmp_path / "s.txt", sentences(12, 0))
    tgt = write(tmp_path / "t.txt", sentences(7, 0))
    r = run("mine", src, tgt, "-m", tiny_model_dir, "-k", "10", "--no-threshold", "--no-filters")
    assert r.exit_code == 0, r.output
    err = " ".join(r.stderr.split())  # rich wraps log lines
    assert "k=10 is more than the source (12 rows) or target (7 rows)" in err
    assert err.count("k=10 is more than") == 1  # said once, not per direction
    assert len(r.stdout.splitlines()) == 7


# ---- bad input is found before the model loads, and before any output --------------------------
def test_mine_input_errors_come_before_the_model(tiny_model_dir, tmp_path, no_model_load):
    a = write(tmp_path / "a.txt", sentences(5, 0))
    empty = write(tmp_path / "empty.txt", [])
    m = ["-m", tiny_model_dir]
    one_line_error(run("mine", a, empty, *m), "empty.txt: empty input")
    one_line_error(run("mine", empty, a, *m), "empty.txt: empty input")
    r = run("mine", a, a, *m, "-o", tmp_path / "no" / "such" / "pairs.tsv")
    one_line_error(r, "output folder does not exist")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok\n" * 5 + b"\xff\xfe\n")
    one_line_error(run("mine", a, bad, *m), "bad.txt line 6")
    assert sorted(x.name for x in tmp_path.iterdir()) == ["a.txt", "bad.txt", "empty.txt"]
    assert isinstance(run("mine", a, a, *m).exception, AssertionError)  # the fixture bites


def test_rank_input_errors_come_before_the_model(ranked_model_dir, tmp_path, no_model_load):
    m = ["-m", ranked_model_dir]
    pairs = write(tmp_path / "p.tsv", [f"{s}\t{s}" for s in sentences(9, 0)] + ["no tab here"])
    r = run("rank", pairs, *m, "--chunk-lines", "2")
    one_line_error(r, "p.tsv line 10", "two tab-separated")
    assert r.stdout == ""
    a = write(tmp_path / "a.txt", sentences(6, 0))
    with gzip.open(tmp_path / "b.txt.gz", "wt") as f:  # gzip: no cheap line count
        f.write("".join(s + "\n" for s in sentences(5, 1)))
    r = run("rank", a, tmp_path / "b.txt.gz", *m, "--chunk-lines", "2")
    one_line_error(r, "a.txt has 6 lines", "b.txt.gz has 5")
    r = run("rank", pairs, *m, "-o", tmp_path / "missing" / "r.tsv")
    one_line_error(r, "output folder does not exist")
    assert isinstance(run("rank", a, a, *m).exception, AssertionError)  # the fixture bites


def test_rank_to_stdout_prints_nothing_before_a_bad_line(ranked_model_dir, tmp_path):
    """The bad line is in the last chunk: the chunks before it are not printed."""
    rows = [f"{s}\t{s}" for s in sentences(9, 0)]
    pairs = tmp_path / "p.tsv"
    pairs.write_bytes("".join(r + "\n" for r in rows).encode() + b"caf\xe9\tcafe\n")
    r = run("rank", pairs, "-m", ranked_model_dir, "--chunk-lines", "2")
    one_line_error(r, "p.tsv line 10", "cannot decode")
    assert r.stdout == ""
    r = run("rank", "-", "-m", ranked_model_dir, "--chunk-lines", "2", input=pairs.read_bytes())
    one_line_error(r, "<stdin> line 10", "cannot decode")
    assert r.stdout == ""


def test_rank_reads_stdin_once_and_names_it(ranked_model_dir, tmp_path):
    rows = [f"{s}\t{s[::-1]}" for s in sentences(7, 0)]
    pairs = write(tmp_path / "p.tsv", rows)
    from_file = run("rank", pairs, "-m", ranked_model_dir)
    from_stdin = run("rank", "-", "-m", ranked_model_dir, input=pairs.read_text())
    assert from_file.exit_code == from_stdin.exit_code == 0, from_stdin.output
    assert from_stdin.stdout == from_file.stdout and len(from_file.stdout.splitlines()) == 7
    one_line_error(run("rank", "-", "-", "-m", ranked_model_dir, input="a\n"), "stdin")
