"""``emmax index``: embedding Parquet files -> a FAISS index (``index.build_index``), or more
shards into an existing one (``index.add_to_index``)."""

from __future__ import annotations

import logging

import click
from click.core import ParameterSource

from .options import DEVICES, force_option, progress_factory, quiet_option

log = logging.getLogger("emmax_cli")

# Options that only shape a new index: an existing index keeps its own.
NEW_INDEX_ONLY = {
    "factory": "--type",
    "train_sample": "--train-sample",
    "nprobe": "--nprobe",
    "seed": "--seed",
}


@click.command("index")
@click.argument("embeddings", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False),
    help="Index file to write (X.faiss; sidecars X.faiss.json and X.faiss.ids.npy).",
)
@click.option(
    "--type",
    "factory",
    default="auto",
    show_default=True,
    help="FAISS factory string (e.g. Flat, IVF4096,Flat, OPQ64,IVF8192,PQ64), or auto: exact "
    "Flat up to 100k vectors, then OPQ-IVF-PQ sized like the NLLB/stopes mining pipeline.",
)
@click.option(
    "--add",
    is_flag=True,
    help="Add the embedding files as new shards to an existing index (which keeps its type, "
    "training and nprobe: --type, --train-sample, --nprobe and --seed are refused).",
)
@click.option(
    "--train-sample",
    type=click.IntRange(1),
    default=None,
    help="Vectors sampled to train IVF/PQ indexes (default: sized from the number of lists).",
)
@click.option(
    "--nprobe",
    type=click.IntRange(1),
    default=128,
    show_default=True,
    help="IVF lists visited at search time (stored in the index metadata).",
)
@click.option(
    "--device",
    type=DEVICES,
    default="auto",
    show_default=True,
    help="Train/populate on a GPU when faiss-gpu is installed; always written as a CPU index.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the training sample.")
@force_option
@quiet_option
@click.pass_context
def command(
    ctx: click.Context,
    embeddings,
    output,
    factory,
    add,
    train_sample,
    nprobe,
    device,
    seed,
    force,
    quiet,
) -> None:
    """Build a FAISS index (inner product on L2-normalised vectors) from embedding files.

    Ids and source files are kept beside the index, so `emmax mine` can take the index
    as SRC or TGT. With --add, the files are added as shards to an existing index.

    \b
    Examples:
      emmax index en.parquet -o en.faiss
      emmax index part1.parquet part2.parquet -o big.faiss --type IVF4096,Flat
      emmax index part3.parquet -o big.faiss --add
    """
    from ..index import add_to_index, build_index
    from ..io.parquet import open_embeddings

    if add:
        given = [n for k, n in NEW_INDEX_ONLY.items() if _given(ctx, k)]
        if given:
            raise click.UsageError(
                f"{', '.join(given)} cannot be used with --add (the existing index keeps its own)"
            )
    total = sum(open_embeddings(p).num_rows for p in embeddings)  # for the progress bar
    with progress_factory(ctx, quiet)("index", total) as adv:
        if add:
            meta = add_to_index(output, embeddings, device=device, progress=adv)
        else:
            meta = build_index(
                embeddings,
                output,
                factory,
                train_sample=train_sample,
                nprobe=nprobe,
                device=device,
                seed=seed,
                progress=adv,
                force=force,
            )
    log.info(
        "%s: %s index, %d vectors of dim %d", output, meta["factory"], meta["ntotal"], meta["dim"]
    )


def _given(ctx: click.Context, name: str) -> bool:
    """True if the option was typed on the command line (or set by an environment variable)."""
    return ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None)
