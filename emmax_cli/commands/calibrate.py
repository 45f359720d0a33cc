"""``emmax calibrate``: a model's default mining threshold from labelled parallel pairs, a
call to ``calibration.calibrate``."""

from __future__ import annotations

import logging

import click

from .options import (
    device_option,
    model_option,
    precision_option,
    progress_factory,
    quiet_option,
    stdout,
)

log = logging.getLogger("emmax_cli")


@click.command("calibrate")
@click.argument("pairs", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@model_option()
@click.option(
    "-n",
    "--per-file",
    "n_per_file",
    type=click.IntRange(10),
    default=250,
    show_default=True,
    help="Source sentences per sample (each sample also has 2N target lines).",
)
@click.option(
    "--share",
    "shares",
    type=click.FloatRange(0.01, 1.0),
    multiple=True,
    help="Share of source sentences that have a partner, one sample per file and share "
    "(repeatable). Default: 0.05, 0.2 and 0.5. Use the share of your corpus if you know it.",
)
@click.option(
    "--no-rank-filter",
    is_flag=True,
    help="Calibrate the margin alone (for `emmax mine --no-rank-filter`).",
)
@click.option(
    "-k", "--k", "k", type=click.IntRange(1), default=4, show_default=True, help="Margin k."
)
@click.option(
    "--write",
    is_flag=True,
    help="Store the threshold in the model directory's emmax.json (its new default).",
)
@device_option()
@precision_option()
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the drawn sample.")
@quiet_option
@click.pass_context
def command(ctx: click.Context, pairs, shares, no_rank_filter, quiet, **opts) -> None:
    """Choose a model's default mining threshold from labelled parallel pairs.

    PAIRS are TSV files `src<TAB>tgt` in document order (never evaluation data). From each,
    comparable-corpus samples are built as real mining meets them: N source sentences, a
    share of which have their translation among 2N target lines, the others among their own
    documents' other sentences. Each sample is mined like `emmax mine` (ratio margin, max
    retrieval, GMM rank filter); the threshold maximises the mean F1 over the samples, at
    the midpoint between two candidate scores. The margin cap is 10 % above the highest
    gold-pair margin seen. Prints `threshold P R F1 n_gold` as TSV.

    \b
    Examples:
      emmax calibrate train/deu-eng.tsv train/fra-eng.tsv -m my-model/
      emmax calibrate train/deu-eng.tsv -m my-model/ --write
    """
    from ..calibration import DEFAULT_SHARES, calibrate
    from ..io.tables import calibration_tsv

    cal = calibrate(
        list(pairs),
        shares=shares or DEFAULT_SHARES,
        min_rank=None if no_rank_filter else "auto",
        progress=progress_factory(ctx, quiet),
        **opts,
    )
    stdout().write(calibration_tsv(cal))
    if cal.written_to:
        log.info("stored threshold %.4f in %s", cal.threshold, cal.written_to)
