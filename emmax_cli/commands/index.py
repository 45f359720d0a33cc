"""``emmax index``: embedding Parquet files or a shard folder -> a FAISS index
(``index.build_index``), or more files into an existing one (``index.add_to_index``)."""

from __future__ import annotations

import logging

import click
from click.core import ParameterSource

from .options import DEVICES, force_option, progress_factory, quiet_option, ray_option

log = logging.getLogger("emmax_cli")

# Options that only shape a new index: an existing index keeps its own.
NEW_INDEX_ONLY = {
    "factory": "--type",
    "train_sample": "--train-sample",
    "nprobe": "--nprobe",
    "seed": "--seed",
    "ray_address": "--ray",
    "workers": "--workers",
}


@click.command("index")
@click.argument("embeddings", nargs=-1, required=True, type=click.Path(exists=True))
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
@click.option(
    "--workers",
    type=click.IntRange(1),
    default=None,
    help="Shard folder, IVF types: shards added at once, each into its own index before the "
    "on-disk merge (default: CPU count).",
)
@ray_option(
    "Shard folder, IVF types: add the shards as Ray tasks (the folders must be on a file "
    "system all nodes share)."
)
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
    workers,
    ray_address,
    force,
    quiet,
) -> None:
    """Build a FAISS index (inner product on L2-normalised vectors) from embedding files,
    or from one shard folder written by `emmax embed --ray`.

    Ids and source files are kept beside the index, so `emmax mine` can take the index
    as SRC or TGT. With --add, the files are added as shards to an existing index.

    A shard folder's IVF index is trained on a sample across the shards; each shard is added
    into its own index (in parallel: --workers threads, or Ray tasks with --ray), and these
    are merged on disk: the inverted lists go to X.faiss.ivfdata beside X.faiss and are
    mmapped when searched, so the index may be larger than RAM (keep the two files together).

    \b
    Examples:
      emmax index en.parquet -o en.faiss
      emmax index part1.parquet part2.parquet -o big.faiss --type IVF4096,Flat
      emmax index part3.parquet -o big.faiss --add
      emmax index big.en/ -o big.faiss --type OPQ64,IVF65536,PQ64 --workers 8
      emmax index big.en/ -o big.faiss --type IVF65536,Flat --ray auto
    """
    from pathlib import Path

    from ..index import add_to_index, build_index
    from ..io.parquet import open_embeddings
    from ..shards import read_manifest

    if add:
        given = [n for k, n in NEW_INDEX_ONLY.items() if _given(ctx, k)]
        if given:
            raise click.UsageError(
                f"{', '.join(given)} cannot be used with --add (the existing index keeps its own)"
            )
    # for the progress bar; a folder: the manifest's rows (no manifest: the one-line error)
    folder = len(embeddings) == 1 and Path(embeddings[0]).is_dir() and not add
    if folder:
        total = sum(s.get("rows") or 0 for s in read_manifest(embeddings[0])["shards"])
    else:
        total = sum(0 if Path(p).is_dir() else open_embeddings(p).num_rows for p in embeddings)
        if workers or ray_address:
            log.warning("--workers and --ray apply to a shard folder only; ignored")
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
                workers=workers,
                ray_address=ray_address,
            )
    log.info(
        "%s: %s index, %d vectors of dim %d", output, meta["factory"], meta["ntotal"], meta["dim"]
    )


def _given(ctx: click.Context, name: str) -> bool:
    """True if the option was typed on the command line (or set by an environment variable)."""
    return ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None)
