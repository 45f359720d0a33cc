"""``emmax embed``: text -> embedding Parquet, a thin call to ``embed.embed_files``."""

from __future__ import annotations

import click

from .options import (
    batch_tokens_option,
    changed,
    chunk_lines_option,
    compose,
    device_option,
    force_option,
    model_option,
    precision_option,
    progress_factory,
    quiet_option,
    ray_option,
)


@click.command("embed")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(allow_dash=True, dir_okay=False))
@click.option(
    "-o",
    "--output",
    type=click.Path(allow_dash=False),
    help="Output Parquet file (one input) or folder (several inputs). "
    "Default: beside each input, corpus.txt -> corpus.parquet.",
)
@model_option()
@click.option("--lang", default=None, help="Language code stored in the `lang` column (e.g. de).")
@click.option("--no-text", is_flag=True, help="Do not store the sentences in the `text` column.")
@click.option(
    "--dtype",
    type=click.Choice(["float32", "float16"]),
    default="float32",
    show_default=True,
    help="Stored embedding type; float16 halves the file.",
)
@compose(device_option(), precision_option(), batch_tokens_option())
@chunk_lines_option("Lines read, length-sorted and written per row group; bounds memory.")
@click.option(
    "--on-bad-line",
    type=click.Choice(["error", "skip", "replace"]),
    default="error",
    show_default=True,
    help="A line that cannot be decoded: stop, skip it (listed on stderr), "
    "or replace bad bytes with U+FFFD.",
)
@click.option("--encoding", default="utf-8", show_default=True, help="Input text encoding.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run of the same command.")
@ray_option(
    "Embed on a Ray cluster into the folder -o: inputs are cut into line-range shards, one "
    "worker per GPU or per --threads CPUs; the folder gets part-NNNNN.parquet files and "
    "manifest.json. Rerunning the same command skips finished shards."
)
@click.option(
    "--shard-lines",
    type=click.IntRange(1),
    default=262_144,
    show_default=True,
    help="--ray: input lines per shard (rounded up to a multiple of --chunk-lines); a "
    "killed worker or driver loses at most the shards in flight.",
)
@click.option(
    "--workers",
    type=click.IntRange(1),
    default=None,
    help="--ray on a local instance: CPU workers (default: CPUs / --threads).",
)
@click.option(
    "--threads",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="--ray: torch threads per CPU worker.",
)
@force_option
@quiet_option
@click.pass_context
def command(
    ctx: click.Context,
    inputs,
    output,
    no_text,
    quiet,
    ray_address,
    shard_lines,
    workers,
    threads,
    **opts,
) -> None:
    """Embed sentences (one per line; `-` for stdin; .gz read transparently) into Parquet.

    Every input line yields one row: `id` (0-based line number), `text`, `lang` and
    `embedding` (fixed-size list of float32/float16, L2-normalised). The file appears
    atomically; an interrupted run leaves no output and can be continued with --resume.

    \b
    Examples:
      emmax embed corpus.de.txt --lang de                 # -> corpus.de.parquet
      emmax embed a.txt b.txt.gz -o embeddings/           # several inputs -> a folder
      cat sentences.txt | emmax embed - -o out.parquet
      emmax embed big.en.txt --lang en -o big.en/ --ray   # shards on a local Ray instance
    """
    from ..embed import embed_files

    if ray_address is not None:
        from ..embed_shards import embed_sharded

        if output is None:
            raise click.UsageError("--ray needs -o FOLDER (the shard folder to write)")
        if opts.pop("resume"):
            raise click.UsageError(
                "--ray resumes by itself: rerun the same command without --resume"
            )
        embed_sharded(
            list(inputs),
            output,
            with_text=not no_text,
            shard_lines=shard_lines,
            ray_address=ray_address,
            workers=workers,
            threads=threads,
            progress=progress_factory(ctx, quiet),
            **opts,
        )
        return
    ray_only = changed(ctx, "shard_lines", "workers", "threads")
    if ray_only:
        raise click.UsageError(f"{ray_only[0]} is for --ray")

    embed_files(
        list(inputs),
        output,
        with_text=not no_text,
        progress=progress_factory(ctx, quiet),
        **opts,
    )
