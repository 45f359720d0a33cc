"""``emmax mine``: margin-scored parallel sentence mining, a call to ``bitext.mine_files``."""

from __future__ import annotations

import logging

import click

from .options import (
    FINITE_FLOAT,
    MODEL_HELP,
    device_option,
    force_option,
    precision_option,
    progress_factory,
    quiet_option,
    stdout,
)

log = logging.getLogger("emmax_cli")


@click.command("mine")
@click.argument("src", type=click.Path(allow_dash=True, dir_okay=False))
@click.argument("tgt", type=click.Path(allow_dash=True, dir_okay=False))
@click.option(
    "--src", "src_lang", default=None, help="Source language code (for logs and output names)."
)
@click.option("--tgt", "tgt_lang", default=None, help="Target language code.")
@click.option(
    "-m",
    "--model",
    default=None,
    help=MODEL_HELP + " It embeds text inputs; its metadata gives the default threshold.",
)
@click.option(
    "-k",
    "--k",
    "k",
    type=click.IntRange(1),
    default=4,
    show_default=True,
    help="Neighbours in the margin's neighbourhood mean (LASER/BUCC: 4); above a side's size, "
    "that side's size is used (with a warning).",
)
@click.option(
    "--margin",
    type=click.Choice(["ratio", "distance", "absolute"]),
    default="ratio",
    show_default=True,
    help="ratio: cos/avg-neighbour-cos (Artetxe & Schwenk 2019); distance: "
    "cos - avg; absolute: cos.",
)
@click.option(
    "--retrieval",
    type=click.Choice(["max", "intersect", "fwd", "bwd", "union"]),
    default="max",
    show_default=True,
    help="max: best of both directions, 1-to-1 (LASER, BUCC); intersect: both "
    "directions agree; fwd/bwd: one direction; union: both, not 1-to-1 (stopes).",
)
@click.option(
    "--threshold",
    type=FINITE_FLOAT,
    default=None,
    help="Keep pairs scoring at least this. Default: the model's calibrated threshold, from its "
    "emmax.json, set by `emmax calibrate` on labelled train pairs (emmax-small, the default: "
    "1.0352; multilingual-e5-small: 0.9999; see models/README.md). Thresholds depend on the "
    "encoder, on k and on how much of the input is parallel.",
)
@click.option("--no-threshold", is_flag=True, help="Keep every mined pair.")
@click.option("--top", type=click.IntRange(1), default=None, help="Keep only the N best pairs.")
@click.option("--no-unify", is_flag=True, help="Do not unify exact duplicate sentences before kNN.")
@click.option(
    "--with-ids", is_flag=True, help="Add src_id and tgt_id columns (0-based input lines)."
)
@click.option(
    "-o",
    "--output",
    type=click.Path(allow_dash=True, dir_okay=False),
    default="-",
    show_default=True,
    help="TSV output (`-`: stdout); files are written atomically.",
)
@device_option()
@precision_option(help="Compute precision for embedding text inputs.")
@click.option(
    "--block-size",
    type=click.IntRange(1),
    default=None,
    help="Rows per kNN block (default 16384: ~block^2*4 bytes of scores per block pair).",
)
@force_option
@quiet_option
@click.pass_context
def command(
    ctx: click.Context, src_lang, tgt_lang, threshold, no_threshold, no_unify, quiet, **opts
) -> None:
    """Mine parallel sentence pairs between SRC and TGT by margin score.

    SRC and TGT are text files (embedded on the fly), embedding Parquet files from
    `emmax embed`, or indexes from `emmax index`. Output: `score<TAB>src<TAB>tgt`
    (LASER-compatible), best first; the pair counts at common thresholds go to stderr.

    \b
    Examples:
      emmax mine --src de --tgt en de.txt en.txt > pairs.tsv
      emmax mine de.parquet en.faiss --threshold 1.06 -o pairs.tsv
      emmax mine de.txt en.txt --top 1000 --with-ids | sort -rn | head
    """
    from ..bitext import mine_files

    if threshold is not None and no_threshold:
        raise click.UsageError("--threshold and --no-threshold exclude each other")
    res = mine_files(
        threshold=float("-inf") if no_threshold else threshold,
        unify_dups=not no_unify,
        progress=progress_factory(ctx, quiet),
        stream=stdout(),
        **opts,
    )
    for side in (res.src, res.tgt):
        if side.duplicates:
            log.info("%s: %d duplicate lines unified", side.name, side.duplicates)
    log.info(
        "%s-%s: %d pairs at threshold %s (%s); pairs at or above %s",
        src_lang or res.src.name,
        tgt_lang or res.tgt.name,
        len(res.pairs.score),
        "none" if no_threshold or res.threshold is None else f"{res.threshold:g}",
        res.threshold_source,
        ", ".join(f"{t:g}: {n}" for t, n in res.counts.items()),
    )
