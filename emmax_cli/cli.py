"""The ``emmax`` command line: the group, its global options, and the one place where errors
become exit codes. The commands live in ``emmax_cli/commands/`` (one module each): parse the
options, call one library function, format the result.

Results go to stdout; logs, progress and errors go to stderr. Library errors become one line
``Error: ... (hint)`` and exit code 1; usage errors exit 2; Ctrl-C exits 130; a closed pipe
(``emmax mine ... | head``) exits 0 quietly. ``--debug`` shows the traceback instead."""

from __future__ import annotations

import errno
import logging
from dataclasses import dataclass

import click

from . import __version__
from .commands import calibrate, embed, evaluate, export, index, mine, rank, score, train
from .commands.options import StdoutError, discard_stdout, flush_stdout
from .errors import EmmaxError

log = logging.getLogger("emmax_cli")


@dataclass
class State:
    """Global options, handed to every command as ``ctx.obj``."""

    debug: bool = False
    quiet: bool = False


def os_error_message(e: OSError) -> str:
    """One line for an operating-system error: the file (if known) and the reason."""
    reason = e.strerror or str(e)
    if isinstance(e, StdoutError):
        return f"cannot write to stdout: {reason}"
    if e.filename is not None:
        return f"{e.filename}: {reason}"
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO):
        return f"cannot write the output: {reason}"
    return reason


class EmmaxGroup(click.Group):
    """The one place where library errors become exit codes."""

    def invoke(self, ctx: click.Context):
        def debug() -> bool:  # known once the group's callback has run
            return ctx.obj is not None and ctx.obj.debug

        try:
            rv = super().invoke(ctx)
            flush_stdout()  # a full disk or a closed pipe is reported here, not at exit
            return rv
        except EmmaxError as e:
            if debug():
                raise
            raise click.ClickException(str(e)) from None
        except KeyboardInterrupt:
            discard_stdout()
            click.echo("Interrupted.", err=True)
            ctx.exit(130)
        except BrokenPipeError:  # `emmax mine ... | head`: the reader has all it wanted
            discard_stdout()
            ctx.exit(0)
        except MemoryError:
            if debug():
                raise
            raise click.ClickException(
                "out of memory (lower --batch-tokens, --chunk-lines or --block-size)"
            ) from None
        except OSError as e:
            if isinstance(e, StdoutError):
                discard_stdout()
            if debug():
                raise
            raise click.ClickException(os_error_message(e)) from None


@click.group(cls=EmmaxGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="emmax")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or info logs on stderr.")
@click.option("-v", "--verbose", is_flag=True, help="Debug logs on stderr.")
@click.pass_context
def cli(ctx: click.Context, debug: bool, quiet: bool, verbose: bool) -> None:
    """emmax: multilingual sentence embeddings and bitext mining (EMMA-X).

    \b
    emmax embed corpus.de.txt --lang de           sentences -> Parquet embeddings
    emmax index corpus.de.parquet -o de.faiss     FAISS index from embeddings
    emmax mine --src de --tgt en de.txt en.txt    margin-scored parallel sentence mining
    emmax rank PAIRS.tsv                          semantic rank of sentence pairs
    """
    from .console import setup_logging

    ctx.obj = State(debug=debug, quiet=quiet)
    setup_logging(verbose=verbose, quiet=quiet)


for _module in (embed, index, mine, calibrate, rank, score, evaluate, train, export):
    cli.add_command(_module.command)
