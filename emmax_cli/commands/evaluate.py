"""``emmax eval``: Tatoeba, BUCC 2018, xsim and geometry; each subcommand calls one
``emmax_cli.eval`` function and prints an ``io.tables`` table (or ``--json``)."""

from __future__ import annotations

import logging

import click

from .options import (
    compose,
    encoder_options,
    progress_factory,
    quiet_option,
    stdout,
)

log = logging.getLogger("emmax_cli")

# fp32 by default, so that figures reproduce the published ones
eval_options = compose(
    encoder_options("fp32", "Encoder precision; fp32 reproduces the published figures."),
    quiet_option,
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


def _langs(langs: str | None) -> list[str] | None:
    return [x.strip() for x in langs.split(",") if x.strip()] if langs else None


def _show(res, table, as_json: bool) -> None:
    """The result as JSON or as its table, on stdout."""
    from ..io.tables import format_json

    stdout().write(format_json(res.to_dict()) if as_json else table(res))


@click.group("eval")
def command() -> None:
    """Evaluate a model: Tatoeba, BUCC 2018, xsim, geometry (definitions: docs/eval.md).

    \b
    Examples:
      emmax eval tatoeba ../shared/data/tatoeba/v1 --langs xtreme
      emmax eval bucc --sample-dir bucc/sample --test-dir bucc/training
      emmax eval xsim ../shared/data/flores200/devtest
      emmax eval geometry ../shared/data/flores200/devtest --langs eng,deu,fra --plot geo.png
    """


@command.command("tatoeba")
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--langs",
    default="xtreme",
    show_default=True,
    help="xtreme (the 36 XTREME languages), all, or a comma list of ISO 639-3 codes.",
)
@click.option(
    "--margin",
    type=click.Choice(["cosine", "ratio"]),
    default="cosine",
    show_default=True,
    help="Retrieval score: plain cosine (LASER/XTREME) or the k=4 ratio margin.",
)
@json_option
@click.option(
    "--plot",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write a per-language bar chart (PNG; needs the plot extra).",
)
@eval_options
@click.pass_context
def tatoeba(ctx: click.Context, data_dir, langs, margin, as_json, plot, model, quiet, **opts):
    """Tatoeba similarity search accuracy, xx->eng and eng->xx, per language and averaged.

    DATA_DIR holds tatoeba.<xxx>-eng.<xxx> and tatoeba.<xxx>-eng.eng (LASER data/tatoeba/v1).

    \b
    Examples:
      emmax eval tatoeba ../shared/data/tatoeba/v1 --langs xtreme
      emmax eval tatoeba ../shared/data/tatoeba/v1 --langs deu,fra --json
    """
    from ..eval.tatoeba import eval_tatoeba
    from ..io.tables import tatoeba_table

    progress = progress_factory(ctx, quiet)
    res = eval_tatoeba(model, data_dir, langs, margin=margin, progress=progress, **opts)
    if plot:
        from ..eval.plots import plot_tatoeba

        log.info("wrote %s", plot_tatoeba(res, plot))
    _show(res, tatoeba_table, as_json)


@command.command("bucc")
@click.option(
    "--sample-dir",
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="Folder with the split used to tune the threshold (BUCC 'sample', with .gold).",
)
@click.option(
    "--test-dir",
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="Folder with the split to score (BUCC 'training' in the XTREME convention).",
)
@click.option("--pairs", default=None, help="Comma list, e.g. de-en,fr-en (default: all found).")
@click.option(
    "-k", "k", type=click.IntRange(1), default=4, show_default=True, help="Margin neighbourhood."
)
@json_option
@eval_options
@click.pass_context
def bucc(ctx: click.Context, sample_dir, test_dir, pairs, k, as_json, model, quiet, **opts):
    """BUCC 2018 bitext mining: precision, recall, F1 and the threshold per language pair.

    Files are xx-en.<split>.{xx,en} (ID<TAB>sentence) and xx-en.<split>.gold; mining uses the
    ratio margin (k=4), max retrieval and unified duplicates; the threshold is the best-F1
    midpoint on the sample split, applied to the test split.

    \b
    Examples:
      emmax eval bucc --sample-dir bucc/sample --test-dir bucc/training --pairs de-en,fr-en
    """
    from ..eval.bucc import eval_bucc
    from ..io.tables import bucc_table

    progress = progress_factory(ctx, quiet)
    res = eval_bucc(model, sample_dir, test_dir, pairs, k=k, progress=progress, **opts)
    _show(res, bucc_table, as_json)


@command.command("xsim")
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--langs", default=None, help="Comma list of languages (default: every <lang>.txt).")
@click.option(
    "--margin",
    type=click.Choice(["ratio", "cosine"]),
    default="ratio",
    show_default=True,
    help="ratio: LASER xsim (k=4 candidates rescored by the ratio margin); cosine: plain NN.",
)
@click.option("-n", "n", type=click.IntRange(1), default=None, help="Use only the first N lines.")
@json_option
@eval_options
@click.pass_context
def xsim(ctx: click.Context, data_dir, langs, margin, n, as_json, model, quiet, **opts):
    """xsim error rates (%) of every language against every other on a multi-way folder
    (line-aligned <lang>.txt files: flores200/devtest, ud_pud). Rows: source, columns: target.

    \b
    Examples:
      emmax eval xsim ../shared/data/ud_pud
      emmax eval xsim ../shared/data/flores200/devtest --langs eng,deu,fra -n 500
    """
    from ..eval.xsim import eval_xsim
    from ..io.tables import xsim_table

    progress = progress_factory(ctx, quiet)
    res = eval_xsim(model, data_dir, _langs(langs), margin, n=n, progress=progress, **opts)
    _show(res, xsim_table, as_json)


@command.command("geometry")
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--langs", default=None, help="Comma list of languages (default: every <lang>.txt).")
@click.option(
    "-n",
    "n",
    type=click.IntRange(3),
    default=200,
    show_default=True,
    help="Sentences (first N lines) per language.",
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed of the probe's train/test split."
)
@json_option
@click.option(
    "--plot",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write a 2-D PCA plot coloured by language and by meaning (PNG).",
)
@eval_options
@click.pass_context
def geometry(ctx: click.Context, data_dir, langs, n, seed, as_json, plot, model, quiet, **opts):
    """Invariance, canonical form and isotropy of the space on a multi-way folder.

    \b
    Examples:
      emmax eval geometry ../shared/data/flores200/devtest --langs eng,deu,fra --plot geo.png
    """
    from ..eval.geometry import eval_geometry
    from ..io.tables import geometry_table

    progress = progress_factory(ctx, quiet)
    res = eval_geometry(model, data_dir, _langs(langs), n, seed, progress=progress, **opts)
    if plot:
        from ..eval.plots import plot_geometry

        log.info("wrote %s", plot_geometry(res, plot))
    _show(res, geometry_table, as_json)
