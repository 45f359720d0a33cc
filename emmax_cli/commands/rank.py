"""``emmax rank``: semantic rank of sentence pairs with a GMM head (or, with ``--cross``, the
model's cross scorer), a call to ``rank.rank_files``."""

from __future__ import annotations

import logging

import click

from .options import (
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


@click.command("rank")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(allow_dash=True, dir_okay=False))
@click.option(
    "-m",
    "--model",
    default=None,
    help=MODEL_HELP + " It needs a GMM head (gmm_head.safetensors), or with --cross a cross "
    "scorer (cross_head.safetensors + cross_head.json).",
)
@click.option(
    "--cross",
    is_flag=True,
    help="Rank with the model's cross scorer instead of the GMM head: each pair is read "
    "jointly (cross-attention in the top layers), which is slower (roughly one more encoder "
    "pass per pair, not batched per sentence) and needs a model trained with `emmax train "
    "--phase cross`. Same columns and formats; the cosine is still that of the two "
    "sentences' own embeddings, and --batch-tokens then counts both sides of a pair.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["tsv", "jsonl", "parquet"]),
    default="tsv",
    show_default=True,
    help="tsv: rank<TAB>p0..p{N-1}<TAB>cosine; jsonl: {rank, probs, cosine}; "
    "parquet: id, rank, probs, cosine (needs -o).",
)
@click.option("--header", is_flag=True, help="Start TSV output with a header line.")
@click.option(
    "-o",
    "--output",
    type=click.Path(allow_dash=True, dir_okay=False),
    default=None,
    help="Output file, written atomically (default: stdout for tsv and jsonl).",
)
@device_option()
@precision_option(help="Encoder compute precision (the GMM always runs in fp32).")
@batch_tokens_option()
@chunk_lines_option("Pairs read, embedded and written at a time; bounds memory.")
@click.option("--encoding", default="utf-8", show_default=True, help="Input text encoding.")
@force_option
@quiet_option
@click.pass_context
def command(ctx: click.Context, inputs, fmt, header, output, quiet, **opts) -> None:
    """Semantic rank of sentence pairs with the GMM head: 0 = unrelated, N-1 = translation.

    One output row per pair, in input order: the rank (argmax), the probability of every
    rank (both orders of the pair averaged) and the cosine of the two embeddings. The input
    is read and checked once before the model loads, so a bad line fails before any output.

    With --cross the probabilities come from the model's cross scorer, which reads both
    sentences of a pair together (more precise on near-misses, slower; symmetric: swapping
    the sides gives the same numbers); the output columns stay the same.

    \b
    Examples:
      emmax rank A.txt B.txt                  # line i of A paired with line i of B
      emmax rank PAIRS.tsv --header           # one `src<TAB>tgt` pair per line
      emmax rank PAIRS.tsv --format parquet -o ranks.parquet
      emmax rank A.txt B.txt --cross -m MODEL_DIR   # the cross scorer of MODEL_DIR
    """
    from ..rank import rank_files

    if len(inputs) > 2:
        raise click.UsageError("pass two line-aligned files A B, or one PAIRS.tsv")
    if fmt == "parquet" and output in (None, "-"):
        raise click.UsageError("--format parquet needs -o OUTPUT.parquet")
    if header and fmt != "tsv":
        raise click.UsageError("--header applies to --format tsv only")
    src, tgt = inputs if len(inputs) == 2 else (inputs[0], None)
    res = rank_files(
        src,
        tgt,
        output,
        fmt=fmt,
        header=header,
        progress=progress_factory(ctx, quiet),
        stream=stdout(),
        **opts,
    )
    flush_stdout()  # a full disk fails here, before the summary lines
    how = "the cross scorer of " if opts["cross"] else ""
    log.info("ranked %d pairs with %s%s (%d ranks)", res.pairs, how, res.model, res.num_ranks)
