"""docs/cli.md is generated from --help and must match it (llm's cog check); every command has
help text and an example (sqlite-utils' docs test)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from emmax_cli.cli import cli
from emmax_cli.commands.docs import help_text, render, walk

REPO = Path(__file__).resolve().parents[1]
COMMANDS = [path for path, _ in walk(cli)]


def test_cli_md_matches_help():
    assert (REPO / "docs" / "cli.md").read_text(encoding="utf-8") == render(), (
        "docs/cli.md is out of date: python -m emmax_cli.commands.docs > docs/cli.md"
    )


@pytest.mark.parametrize("path", COMMANDS[1:], ids=[" ".join(p[1:]) for p in COMMANDS[1:]])
def test_every_command_has_help_and_an_example(path):
    cmd = cli
    for name in path[1:]:
        cmd = cmd.commands[name]
    assert (cmd.help or "").strip(), f"{' '.join(path)} has no help text"
    text = help_text(cli, path)
    examples = text.split("Examples:", 1)
    assert len(examples) == 2, f"{' '.join(path)}: no Examples: section in --help"
    # an example calls this very command
    assert any(ln.strip().startswith(" ".join(path)) for ln in examples[1].splitlines()), text
    opts = [p for p in cmd.params if p.param_type_name == "option"]
    undocumented = [p.opts[-1] for p in opts if not (p.help or "").strip()]
    assert not undocumented, f"{' '.join(path)}: options without help: {undocumented}"


@pytest.mark.parametrize("path", COMMANDS, ids=[" ".join(p) for p in COMMANDS])
def test_help_runs(path):
    r = CliRunner().invoke(cli, [*path[1:], "--help"], prog_name="emmax", catch_exceptions=False)
    assert r.exit_code == 0 and r.stdout.startswith(f"Usage: {' '.join(path)}")
