"""``emmax mine``: margin-scored parallel sentence mining, a call to ``bitext.mine_files``."""

from __future__ import annotations

import logging

import click

from .options import (
    FINITE_FLOAT,
    MODEL_HELP,
    changed,
    device_option,
    flush_stdout,
    force_option,
    precision_option,
    progress_factory,
    quiet_option,
    ray_option,
    stdout,
)

log = logging.getLogger("emmax_cli")


@click.command("mine")
@click.argument("src", type=click.Path(allow_dash=True))
@click.argument("tgt", type=click.Path(allow_dash=True))
@click.option(
    "--src",
    "src_lang",
    default=None,
    help="Source language (ISO 639-1/3 or FLORES code: de, deu, deu_Latn): pairs whose source "
    "is identified as another language are dropped (--no-lang-filter: off).",
)
@click.option("--tgt", "tgt_lang", default=None, help="Target language, likewise.")
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
    "emmax.json. emmax-small (the default): 1.0352, calibrated on train pairs of 10 languages "
    "where 80 % of the sentences have a partner, a threshold for dense corpora; "
    "multilingual-e5-small: 0.9999. Margins depend on the corpus (size, share of parallel "
    "sentences, topic): for a sparse comparable corpus, calibrate on a sample of it with "
    "`emmax calibrate --share P` (docs/mining.md).",
)
@click.option(
    "--no-threshold", is_flag=True, help="No margin threshold (the other filters still run)."
)
@click.option(
    "--min-rank",
    type=click.IntRange(0),
    default=None,
    help="Keep a pair only if the model's GMM head gives it at least this semantic rank "
    "(0 unrelated ... N-1 translation). Default: the top rank, where the model has a head.",
)
@click.option("--no-rank-filter", is_flag=True, help="Do not filter by the GMM rank.")
@click.option(
    "--margin-cap",
    type=FINITE_FLOAT,
    default=None,
    help="Drop pairs with a margin above this (copies, boilerplate; stopes: 1.25 for LASER). "
    "Default: the model's calibrated cap, if any.",
)
@click.option("--no-margin-cap", is_flag=True, help="No margin cap.")
@click.option(
    "--no-copy-filter", is_flag=True, help="Keep pairs whose target (nearly) equals the source."
)
@click.option(
    "--max-length-ratio",
    type=click.FloatRange(0),
    default=2.0,
    show_default=True,
    help="Drop pairs whose source/target ratio of subword tokens is more than this many times "
    "off the median ratio of the kept pairs (which adapts to the language pair); only when "
    "the longer side has 10+ tokens; 0: off.",
)
@click.option("--no-lang-filter", is_flag=True, help="No language identification.")
@click.option(
    "--max-repeats",
    type=click.IntRange(0),
    default=2,
    show_default=True,
    help="Drop pairs with a side that occurs more than this many times in its input "
    "(boilerplate); 0: off.",
)
@click.option(
    "--no-dedup",
    is_flag=True,
    help="Keep pairs whose source or target repeats a better pair's after normalisation "
    "(case, punctuation, digits, whitespace).",
)
@click.option(
    "--no-filters",
    is_flag=True,
    help="Margin threshold only, as LASER: no rank filter and none of the filters above.",
)
@click.option(
    "--rerank",
    is_flag=True,
    help="After the filters, read every kept pair jointly with the model's cross scorer "
    "(cross-attention; needs a model trained with `emmax train --phase cross`) and keep it "
    "only if its probability of the top rank (translation) is at least --rerank-min-prob. "
    "Slower than mining itself on large outputs; runs before --top (scoring stops once --top "
    "pairs passed). jsonl/parquet get cross_rank and cross_prob; the TSV is unchanged.",
)
@click.option(
    "--rerank-min-prob",
    type=click.FloatRange(0, 1),
    default=0.5,
    show_default=True,
    help="--rerank: the least probability of the top rank a pair needs; 0 keeps every pair "
    "(scores only).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["tsv", "jsonl", "parquet"]),
    default="tsv",
    show_default=True,
    help="tsv: score<TAB>src<TAB>tgt (LASER); jsonl/parquet: score, cosine, rank, rank_prob, "
    "probs, (with --rerank) cross_rank, cross_prob, ids, languages, texts, keep, reason "
    "(parquet needs -o).",
)
@click.option(
    "--with-dropped",
    is_flag=True,
    help="jsonl/parquet: also write the dropped candidates, each with the reason (threshold, "
    "rank, margin_cap, repeated, copy, duplicate, length, src_lang, tgt_lang, cross_rank).",
)
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
@ray_option(
    "Run the k-NN searches as Ray tasks over query shards; same pairs as without. Finished "
    "shards are kept in --work-dir, so rerunning continues."
)
@click.option(
    "--query-rows",
    type=click.IntRange(1),
    default=65_536,
    show_default=True,
    help="--ray: query rows per task.",
)
@click.option(
    "--work-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="--ray: folder for per-shard k-NN results (shared storage on a multi-machine "
    "cluster). Default: .OUTPUT.work beside -o, or .emmax-mine-work here; removed on success.",
)
@force_option
@quiet_option
@click.pass_context
def command(
    ctx: click.Context,
    src_lang,
    tgt_lang,
    threshold,
    no_threshold,
    no_unify,
    quiet,
    min_rank,
    no_rank_filter,
    no_filters,
    **opts,
) -> None:
    """Mine parallel sentence pairs between SRC and TGT by margin score.

    SRC and TGT are text files (embedded on the fly), embedding Parquet files from
    `emmax embed`, shard folders from `emmax embed --ray`, or indexes from `emmax index`.
    Output: `score<TAB>src<TAB>tgt`
    (LASER-compatible), best first; the pair counts at common thresholds go to stderr.

    With --rerank, every pair that passed the filters is read jointly by the model's cross
    scorer and dropped unless its probability of being a translation (the top rank) reaches
    --rerank-min-prob; stderr counts those drops as `cross_rank`.

    \b
    Examples:
      emmax mine --src de --tgt en de.txt en.txt > pairs.tsv
      emmax mine de.parquet en.faiss --threshold 1.06 -o pairs.tsv
      emmax mine de.txt en.txt --top 1000 --with-ids | sort -rn | head
      emmax mine de.shards/ en.faiss -o pairs.tsv --ray        # k-NN on a Ray cluster
      emmax mine de.txt en.txt -m MODEL_DIR --rerank --format jsonl -o pairs.jsonl
    """
    from ..bitext import mine_files

    if threshold is not None and no_threshold:
        raise click.UsageError("--threshold and --no-threshold exclude each other")
    if min_rank is not None and (no_rank_filter or no_filters):
        raise click.UsageError("--min-rank excludes --no-rank-filter and --no-filters")
    if opts["fmt"] != "tsv" and opts["with_ids"]:
        raise click.UsageError("--with-ids is for --format tsv (jsonl/parquet always have ids)")
    if opts["with_dropped"] and opts["fmt"] == "tsv":
        raise click.UsageError("--with-dropped needs --format jsonl or parquet")
    if opts["fmt"] == "parquet" and opts["output"] in (None, "-"):
        raise click.UsageError("--format parquet needs -o PAIRS.parquet")
    filters = _filters(opts, no_filters)
    if opts["ray_address"] is None and changed(ctx, "work_dir", "query_rows"):
        raise click.UsageError("--work-dir and --query-rows are for --ray")
    if not opts["rerank"] and changed(ctx, "rerank_min_prob"):
        raise click.UsageError("--rerank-min-prob is for --rerank")
    res = mine_files(
        threshold=float("-inf") if no_threshold else threshold,
        unify_dups=not no_unify,
        progress=progress_factory(ctx, quiet),
        stream=stdout(),
        src_lang=src_lang,
        tgt_lang=tgt_lang,
        min_rank=None
        if no_rank_filter or no_filters
        else ("auto" if min_rank is None else min_rank),
        filters=filters,
        **opts,
    )
    flush_stdout()  # a full disk fails here, before the summary lines
    for side in (res.src, res.tgt):
        if side.duplicates:
            log.info("%s: %d duplicate lines unified", side.name, side.duplicates)
    dropped = {k: v for k, v in res.dropped.items() if v}
    log.info(
        "%s-%s: %d of %d candidate pairs kept; threshold %s (%s); pairs at or above %s",
        src_lang or res.src.name,
        tgt_lang or res.tgt.name,
        len(res.pairs.score),
        len(res.candidates.score),
        "none" if no_threshold or res.threshold is None else f"{res.threshold:g}",
        res.threshold_source,
        ", ".join(f"{t:g}: {n}" for t, n in res.counts.items()),
    )
    log.info(
        "removed by: %s",
        ", ".join(f"{k} {v}" for k, v in dropped.items()) if dropped else "nothing",
    )


_FILTER_OPTS = (
    "margin_cap",
    "no_margin_cap",
    "no_copy_filter",
    "max_length_ratio",
    "no_lang_filter",
    "max_repeats",
    "no_dedup",
)


def _filters(opts: dict, no_filters: bool) -> dict | None:
    """The filter settings of the options (popped from ``opts``) as overrides of the model's
    defaults; None with --no-filters."""
    o = {k: opts.pop(k) for k in _FILTER_OPTS}
    if no_filters:
        return None
    if o["margin_cap"] is not None and o["no_margin_cap"]:
        raise click.UsageError("--margin-cap and --no-margin-cap exclude each other")
    f: dict = {
        "max_length_ratio": o["max_length_ratio"] or None,
        "max_repeats": o["max_repeats"] or None,
        "dedup": not o["no_dedup"],
    }
    if o["margin_cap"] is not None or o["no_margin_cap"]:
        f["margin_cap"] = o["margin_cap"]
    if o["no_copy_filter"]:
        f["copy_ratio"] = None
    if o["no_lang_filter"]:
        f["src_lang"] = f["tgt_lang"] = None
    return f
