"""``emmax score``: score an aligned bitext line by line and give each pair a keep/drop
verdict, a call to ``score.score_files``."""

from __future__ import annotations

import logging

import click

from .options import (
    FINITE_FLOAT,
    MODEL_HELP,
    batch_tokens_option,
    chunk_lines_option,
    device_option,
    flush_stdout,
    force_option,
    precision_option,
    progress_factory,
    quiet_option,
    stdout,
)

log = logging.getLogger("emmax_cli")


@click.command("score")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(allow_dash=True, dir_okay=False))
@click.option("--src", "src_lang", default=None, help="Source language code: language ID of SRC.")
@click.option("--tgt", "tgt_lang", default=None, help="Target language code: language ID of TGT.")
@click.option(
    "-m", "--model", default=None, help=MODEL_HELP + " Without a GMM head, no rank columns."
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["tsv", "jsonl", "parquet"]),
    default="tsv",
    show_default=True,
    help="tsv: a header line, then the columns; jsonl: the columns plus id and probs (every "
    "rank); parquet: the same (needs -o).",
)
@click.option(
    "--keep-only", is_flag=True, help="Write only the kept pairs, as `src<TAB>tgt`, no scores."
)
@click.option(
    "-o",
    "--output",
    type=click.Path(allow_dash=True, dir_okay=False),
    default=None,
    help="Output file, written atomically (default: stdout for tsv and jsonl).",
)
@click.option(
    "-k",
    "--k",
    "k",
    type=click.IntRange(1),
    default=4,
    show_default=True,
    help="Neighbours per side in the margin's neighbourhood mean (LASER/BUCC: 4).",
)
@click.option(
    "--no-margin",
    is_flag=True,
    help="No margin column: one streaming pass, no temporary embeddings on disk.",
)
@click.option(
    "--min-rank",
    type=click.IntRange(0),
    default=None,
    help="Drop pairs whose GMM rank is below R (default: the top rank, N-1; 0: off).",
)
@click.option(
    "--threshold",
    type=FINITE_FLOAT,
    default=None,
    help="Drop pairs whose margin is below X (default: none; mining thresholds do not "
    "transfer to aligned files, where the neighbourhood is the file itself).",
)
@click.option(
    "--margin-cap",
    type=FINITE_FLOAT,
    default=None,
    help="Drop pairs whose margin is above X (default: off).",
)
@click.option("--no-copy-filter", is_flag=True, help="Keep pairs whose target copies the source.")
@click.option(
    "--max-length-ratio",
    type=click.FloatRange(0),
    default=None,
    help="Drop pairs whose source/target ratio of subword tokens is more than X times off the "
    "median ratio of the kept pairs of their chunk (adapts to the language pair), when the "
    "longer side has at least 10 tokens (default: 2.0; 0: off).",
)
@click.option("--no-lang-filter", is_flag=True, help="Report language ID but drop no pair for it.")
@click.option("--no-dedup", is_flag=True, help="Keep pairs whose normalised side repeats.")
@click.option(
    "--no-filters",
    is_flag=True,
    help="Switch off every filter not given explicitly (rank, copy, length, language, "
    "duplicates); pairs with an empty side are still dropped.",
)
@device_option("Compute device (encoder and k-NN).")
@precision_option(help="Encoder compute precision (the GMM always runs in fp32).")
@batch_tokens_option()
@chunk_lines_option("Pairs read, embedded and written at a time; bounds memory.")
@click.option(
    "--block-size",
    type=click.IntRange(1),
    default=131072,
    show_default=True,
    help="Rows per k-NN block of the margin (memory: block x dim x 4 bytes per block).",
)
@click.option(
    "--tmp-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Folder for the temporary embeddings of the margin, 2 x pairs x dim x 4 bytes "
    "(default: $TMPDIR); removed at the end.",
)
@click.option("--encoding", default="utf-8", show_default=True, help="Input text encoding.")
@force_option
@quiet_option
@click.pass_context
def command(
    ctx: click.Context,
    inputs,
    fmt,
    output,
    no_margin,
    min_rank,
    margin_cap,
    no_copy_filter,
    max_length_ratio,
    no_lang_filter,
    no_dedup,
    no_filters,
    quiet,
    **opts,
) -> None:
    """Score an aligned bitext pair by pair, with the signals of mining, and decide which
    pairs to keep.

    Input: two line-aligned files SRC TGT, or one PAIRS.tsv (`src<TAB>tgt`). One output row
    per pair, in input order, with the columns `cosine margin rank p_top src_lang_ok
    tgt_lang_ok length_ratio keep reason` (columns that are not computed are left out):

    \b
      cosine        cosine of the two embeddings
      margin        ratio margin: cosine / mean of each side's k nearest cosines among
                    the other side of the same file (Artetxe & Schwenk 2019)
      rank, p_top   GMM rank (0 = unrelated ... N-1 = translation), P(top rank)
      *_lang_ok     language ID of each side (with --src / --tgt)
      length_ratio  longer side over shorter, in tokens of the model's tokenizer
      keep, reason  verdict (1/0) and the first reason that dropped the pair

    Reasons, in the order they are checked: empty (a side is empty or blank: always
    dropped), threshold, rank, margin_cap, copy, length, src_lang, tgt_lang, duplicate (a
    normalised side already seen in an earlier kept pair; the first stays). The counts go
    to stderr. The input is checked once before the model loads, so bad input fails
    before any output.

    \b
    Examples:
      emmax score de.txt en.txt --src de --tgt en > scores.tsv
      emmax score PAIRS.tsv --keep-only -o clean.tsv
      emmax score PAIRS.tsv --no-margin --format parquet -o scores.parquet
    """
    from ..filters import FilterConfig
    from ..score import score_files

    if len(inputs) > 2:
        raise click.UsageError("pass two line-aligned files SRC TGT, or one PAIRS.tsv")
    if fmt == "parquet" and output in (None, "-"):
        raise click.UsageError("--format parquet needs -o OUTPUT.parquet")
    if opts["keep_only"] and fmt != "tsv":
        raise click.UsageError("--keep-only writes `src<TAB>tgt` lines; drop --format")
    if no_margin and (opts["threshold"] is not None or margin_cap is not None):
        raise click.UsageError("--threshold and --margin-cap need the margin; drop --no-margin")
    base = FilterConfig()
    if max_length_ratio is None:
        max_length_ratio = None if no_filters else base.max_length_ratio
    elif 0 < max_length_ratio < 1:
        raise click.BadParameter("must be at least 1 (0: off)", param_hint="--max-length-ratio")
    filters = FilterConfig(
        margin_cap=margin_cap,
        copy_ratio=None if no_copy_filter or no_filters else base.copy_ratio,
        max_length_ratio=max_length_ratio or None,
        min_length_tokens=base.min_length_tokens,
        max_repeats=None,
        dedup=not (no_dedup or no_filters),
    )
    src, tgt = inputs if len(inputs) == 2 else (inputs[0], None)
    res = score_files(
        src,
        tgt,
        output,
        fmt=fmt,
        margin=not no_margin,
        min_rank=0 if min_rank is None and no_filters else min_rank,
        filters=filters,
        lang_filter=not (no_lang_filter or no_filters),
        progress=progress_factory(ctx, quiet),
        stream=stdout(),
        **opts,
    )
    drops = ", ".join(f"{r} {n}" for r, n in res.dropped.items() if n) or "none"
    flush_stdout()  # a full disk fails here, before the summary lines
    log.info("kept %d of %d pairs; dropped: %s (model %s)", res.kept, res.pairs, drops, res.model)
