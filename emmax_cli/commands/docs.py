"""Render ``docs/cli.md`` from every command's ``--help``; ``tests/test_docs.py`` checks that the
file matches (the cog check of simonw/llm).

    python -m emmax_cli.commands.docs > docs/cli.md
"""

from __future__ import annotations

from collections.abc import Iterator

import click

WIDTH = 100  # help is wrapped at this width, whatever the terminal

HEADER = """# emmax command reference

Generated from `--help` by `python -m emmax_cli.commands.docs > docs/cli.md`;
`tests/test_docs.py` fails when this file and the code disagree.
"""


def walk(
    cmd: click.Command, path: tuple[str, ...] = ("emmax",)
) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    """Every command under ``cmd`` (itself first), depth first, subcommands in name order."""
    yield path, cmd
    if isinstance(cmd, click.Group):
        for name in sorted(cmd.commands):
            yield from walk(cmd.commands[name], (*path, name))


def help_text(root: click.Command, path: tuple[str, ...]) -> str:
    """The ``--help`` output of the command at ``path`` (e.g. ``("emmax", "eval", "bucc")``),
    wrapped at ``WIDTH`` columns."""
    ctx = None
    cmd = root
    for i, name in enumerate(path):
        if i:
            cmd = cmd.commands[name]  # type: ignore[attr-defined]
        settings = {"terminal_width": WIDTH, "max_content_width": WIDTH, **cmd.context_settings}
        ctx = click.Context(cmd, info_name=name, parent=ctx, **settings)
    return cmd.get_help(ctx)


def render(root: click.Command | None = None) -> str:
    """The Markdown of ``docs/cli.md``: one section per command, its help in a code block."""
    if root is None:
        from ..cli import cli as root
    parts = [HEADER]
    for path, _ in walk(root):
        parts.append(f"\n## {' '.join(path)}\n\n```\n{help_text(root, path).rstrip()}\n```\n")
    return "".join(parts)


if __name__ == "__main__":
    click.echo(render(), nl=False)
