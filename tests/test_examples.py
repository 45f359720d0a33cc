"""The examples run as written (on the tiny model, for speed), and every command documents itself."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from emmax_cli.cli import cli

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


def test_python_dash_m_and_version():
    r = subprocess.run(
        [sys.executable, "-m", "emmax_cli", "--version"], capture_output=True, text=True
    )
    assert r.returncode == 0 and "emmax" in r.stdout


@pytest.mark.parametrize("name", sorted(cli.commands))
def test_every_command_has_help(name):
    r = CliRunner().invoke(cli, [name, "--help"])
    assert r.exit_code == 0 and len(r.output) > 200
    assert (cli.commands[name].help or "").strip()
