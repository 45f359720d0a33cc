"""``emmax calibrate``: a model's default mining threshold from labelled parallel pairs, a
call to ``calibration.calibrate``."""

from __future__ import annotations

import logging

import click

from .options import (
    FINITE_FLOAT,
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
    default=1000,
    show_default=True,
    help="Pairs drawn from each file.",
)
@click.option(
    "--gold-fraction",
    type=FINITE_FLOAT,
    default=0.8,
    show_default=True,
    help="Share of drawn pairs kept as gold pairs (0.05 to 1); the rest become one-sided "
    "distractors.",
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
def command(ctx: click.Context, pairs, gold_fraction, quiet, **opts) -> None:
    """Choose a model's default mining threshold from labelled parallel pairs.

    PAIRS are TSV files `src<TAB>tgt` (never evaluation data). A BUCC-style sample is
    built from them (gold pairs hidden among one-sided sentences), mined with the ratio
    margin and max retrieval, and the best-F1 cut is taken at the midpoint between two
    candidate scores (the BUCC rule). Prints `threshold P R F1 n_gold` as TSV.

    \b
    Examples:
      emmax calibrate train/deu-eng.tsv train/fra-eng.tsv -m my-model/
      emmax calibrate train/deu-eng.tsv -m my-model/ --write
    """
    from ..calibration import calibrate
    from ..io.tables import calibration_tsv

    if not 0.05 <= gold_fraction <= 1.0:
        raise click.BadParameter(f"{gold_fraction} is not in 0.05..1", param_hint="--gold-fraction")
    cal = calibrate(
        list(pairs), gold_fraction=gold_fraction, progress=progress_factory(ctx, quiet), **opts
    )
    stdout().write(calibration_tsv(cal))
    if cal.written_to:
        log.info("stored threshold %.4f in %s", cal.threshold, cal.written_to)
