"""The examples run as written (on the tiny model, for speed); `python -m emmax_cli` works.
Help text and examples of every command: tests/test_docs.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def env():
    e = dict(os.environ)
    e["PATH"] = str(Path(sys.executable).parent) + os.pathsep + e.get("PATH", "")
    return e


def test_mine_example_script(tiny_model):
    r = subprocess.run(
        [
            "bash",
            str(REPO / "examples" / "mine_de_en.sh"),
            "--model",
            str(tiny_model),
            "--no-threshold",
        ],
        capture_output=True,
        text=True,
        env=env(),
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    rows = [ln.split("\t") for ln in r.stdout.splitlines()]
    assert rows and all(len(x) == 3 for x in rows)


def test_python_example(tiny_model):
    r = subprocess.run(
        [sys.executable, str(REPO / "examples" / "embed_and_search.py"), str(tiny_model)],
        capture_output=True,
        text=True,
        env=env(),
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.splitlines()) >= 1


def test_mine_files_example(tiny_model):
    r = subprocess.run(
        [sys.executable, str(REPO / "examples" / "mine_files.py"), str(tiny_model)],
        capture_output=True,
        text=True,
        env=env(),
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    de = (REPO / "examples" / "sentences.de.txt").read_text(encoding="utf-8").splitlines()
    rows = [ln.split("\t") for ln in r.stdout.splitlines()]
    assert rows and all(len(x) == 3 and x[1] in de for x in rows)
    assert f"{len(rows)} pairs" in r.stderr


def test_python_dash_m_and_version():
    r = subprocess.run(
        [sys.executable, "-m", "emmax_cli", "--version"], capture_output=True, text=True
    )
    assert r.returncode == 0 and "emmax" in r.stdout
