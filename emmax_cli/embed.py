"""``emmax embed``: text files -> embedding Parquet, streaming with bounded memory.

:func:`embed_files` is the library function behind the command: it plans the outputs, runs
every cheap check before the model is loaded, then embeds one file after the other with
:func:`embed_file`. Input is read in windows of ``chunk_lines`` lines; each window is sorted
by length, batched by a token budget, embedded and written as one row group, in input order.

Finished windows are kept in a hidden ``.<output>.partial/`` folder beside the (real) output
while the run is under way, and merged into the output atomically at the end. After Ctrl-C the
folder is kept and ``resume=True`` continues from it (if the input's content is unchanged);
after any other error it is removed."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from .console import Progress, ProgressFactory, null_progress
from .embed_partial import (
    RERUN_HINT,
    check_resumable_input,
    count_chunks,
    input_state,
    merge_chunks,
    partial_dir,
    prepare_partial,
)
from .errors import InputError
from .io.atomic import atomic_output, check_output, remove_path
from .io.parquet import EmbeddingWriter
from .io.text import (
    BAD_LINE_POLICIES,
    FileScan,
    ReadStats,
    check_text_input,
    display_name,
    is_regular_file,
    read_chunks,
    scan_file,
    splits_on_newline_byte,
)
from .models.encoder import DEFAULT_BATCH_TOKENS, Encoder

log = logging.getLogger(__name__)

DEFAULT_CHUNK_LINES = 16_384


@dataclass
class EmbedResult:
    """One embedded input: where it went, rows written, 1-based line numbers skipped."""

    output: Path
    rows: int
    skipped: list[int] = field(default_factory=list)
    resumed_chunks: int = 0
    input: str = ""
    dim: int = 0
    truncated: int = 0


def default_output(path: str | os.PathLike) -> Path:
    """``corpus.txt`` / ``corpus.txt.gz`` -> ``corpus.parquet`` beside the input."""
    p = Path(path)
    name = p.name[:-3] if p.name.endswith(".gz") else p.name
    stem = name.rsplit(".", 1)[0] if "." in name else name
    return p.with_name(stem + ".parquet")


def plan_outputs(
    inputs: Sequence[str | os.PathLike], output: str | os.PathLike | None = None
) -> list[tuple[str, Path]]:
    """Pair each input with its output file, as ``emmax embed`` does.

    Without ``output`` each file is written beside its input (``corpus.parquet``); stdin
    (``-``) needs ``output``. With an existing folder as ``output`` the files go into it
    (stdin as ``stdin.parquet``); several inputs need such a folder.

    Raises:
        InputError: no inputs, stdin without an output, several inputs without a folder, or
            two inputs that would be written to the same output.
    """
    if not inputs:
        raise InputError("no input files given", hint="pass text files, or - for stdin")
    inputs = [str(i) for i in inputs]
    to_dir = output is not None and Path(output).is_dir()
    if len(inputs) > 1 and output is not None and not to_dir:
        raise InputError(
            f"{output}: with several inputs, -o must be an existing folder",
            hint="create the folder first, or embed one file at a time",
        )
    jobs: list[tuple[str, Path]] = []
    for inp in inputs:
        if inp == "-" and output is None:
            raise InputError("reading stdin needs an output file", hint="pass -o OUTPUT.parquet")
        if to_dir:
            name = "stdin.parquet" if inp == "-" else default_output(inp).name
            jobs.append((inp, Path(output) / name))  # type: ignore[arg-type]
        else:
            jobs.append((inp, Path(output) if output is not None else default_output(inp)))
    seen: dict[str, str] = {}
    for inp, out in jobs:
        key = os.path.realpath(out)
        if key in seen:
            raise InputError(
                f"{seen[key]} and {inp} would both be written to {out}",
                hint="embed them into different folders, or rename one of them",
            )
        seen[key] = inp
    return jobs


def _check_job(
    inp: str, out: Path, inputs: Sequence[str], *, force: bool, resume: bool, encoding: str
) -> None:
    """Cheap checks on one (input, output) pair, before any model is loaded."""
    check_text_input(inp, encoding)
    for other in inputs:
        if other != "-" and out.exists() and os.path.samefile(other, out):
            raise InputError(
                f"{out} is the input file {other}; embedding would overwrite it",
                hint="choose another output",
            )
    check_output(out, force=force)
    if resume:
        if not is_regular_file(inp):
            raise InputError(
                f"--resume cannot continue from {display_name(inp)}",
                hint="embed a regular file to be able to resume",
            )
        if partial_dir(out) is None:
            raise InputError(f"{out}: cannot resume into this output", hint=RERUN_HINT)


def embed_files(
    inputs: Sequence[str | os.PathLike],
    output: str | os.PathLike | None = None,
    *,
    model: str | os.PathLike | None = None,
    lang: str | None = None,
    with_text: bool = True,
    dtype: str = "float32",
    device: str = "auto",
    precision: str = "auto",
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    chunk_lines: int = DEFAULT_CHUNK_LINES,
    on_bad_line: str = "error",
    encoding: str = "utf-8",
    resume: bool = False,
    force: bool = False,
    progress: ProgressFactory | None = None,
) -> list[EmbedResult]:
    """Embed text files (one sentence per line; ``-`` for stdin; gzip read transparently)
    into embedding Parquet files: the library function behind ``emmax embed``.

    Every check that needs no model runs first (inputs readable, outputs free or ``force``,
    no output overwriting an input or another output, an unchanged input for ``resume``),
    then the model is loaded once and the files are embedded in order.

    Args:
        inputs: text files, or ``-`` for stdin.
        output: output file (one input), an existing folder, or None (beside each input).
        model: model directory or built-in name (default: emmax-small).
        lang: language code stored in a ``lang`` column.
        with_text: store the sentences in a ``text`` column.
        dtype: ``float32`` or ``float16`` embedding storage.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        precision: model precision (``auto``, ``fp32``, ``bf16``, ``fp16``).
        batch_tokens: padded tokens per batch (activation memory grows with it).
        chunk_lines: lines per window, written as one row group.
        on_bad_line: undecodable lines: ``error``, ``skip`` or ``replace``.
        encoding: input encoding (UTF-16/32 are decoded as a stream).
        resume: continue an interrupted run of the same command.
        force: replace existing outputs.
        progress: ``progress(description, total)`` -> context manager yielding
            ``advance(n)``; None for no progress.

    Returns:
        One :class:`EmbedResult` per input, in order.

    Raises:
        InputError: bad inputs, outputs or options (one line, with a hint).
        ModelLoadError: the model cannot be loaded.
    """
    check_options(dtype, on_bad_line, chunk_lines, batch_tokens)
    inputs = [str(i) for i in inputs]
    jobs = plan_outputs(inputs, output)
    for inp, out in jobs:
        _check_job(inp, out, inputs, force=force, resume=resume, encoding=encoding)
    scans = [_scan_input(inp, out, resume, count=progress is not None) for inp, out in jobs]
    enc = Encoder.load(model, device=device, precision=precision)
    results = []
    for (inp, out), scan in zip(jobs, scans, strict=True):
        total = scan.lines if scan is not None and splits_on_newline_byte(encoding) else None
        bar = progress(f"embed {display_name(inp)}", total) if progress else None
        with bar if bar is not None else nullcontext(null_progress) as advance:
            res = _embed_one(
                inp,
                out,
                enc,
                scan=scan,
                lang=lang,
                with_text=with_text,
                dtype=dtype,
                chunk_lines=chunk_lines,
                batch_tokens=batch_tokens,
                batch_size=None,
                on_bad_line=on_bad_line,
                encoding=encoding,
                resume=resume,
                progress=advance,
            )
        results.append(res)
    return results


def _scan_input(inp: str, out: Path, resume: bool, count: bool) -> FileScan | None:
    """The input's fingerprint (checked against the interrupted run's with ``resume``); None
    for stdin, pipes and devices, which cannot be resumed."""
    scan = check_resumable_input(inp, out) if resume else None
    if scan is None and is_regular_file(inp):
        scan = scan_file(inp, count=count)
    return scan


def check_options(dtype: str, on_bad_line: str, chunk_lines: int, batch_tokens: int) -> None:
    """The embedding options every run checks before it reads or loads anything."""
    if dtype not in ("float32", "float16"):
        raise InputError(f"unknown embedding dtype {dtype!r}", hint="use float32 or float16")
    if on_bad_line not in BAD_LINE_POLICIES:
        raise InputError(
            f"unknown --on-bad-line {on_bad_line!r}", hint="use error, skip or replace"
        )
    if chunk_lines < 1 or batch_tokens < 1:
        raise InputError("--chunk-lines and --batch-tokens must be at least 1")


def embed_file(
    input: str | os.PathLike,
    output: str | os.PathLike,
    encoder: Encoder,
    lang: str | None = None,
    with_text: bool = True,
    dtype: str = "float32",
    chunk_lines: int = DEFAULT_CHUNK_LINES,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    batch_size: int | None = None,
    on_bad_line: str = "error",
    encoding: str = "utf-8",
    resume: bool = False,
    force: bool = False,
    progress: Progress | None = None,
) -> EmbedResult:
    """Embed one text file (or ``-`` for stdin) with a loaded encoder.

    Args and checks as in :func:`embed_files`, except ``output`` (a file) and ``progress``
    (called with the number of sentences done); ``batch_size`` overrides ``batch_tokens``.

    Returns:
        The :class:`EmbedResult`.

    Raises:
        InputError: bad input, output or options.
    """
    check_options(dtype, on_bad_line, chunk_lines, batch_tokens)
    inp, out = str(input), Path(output)
    _check_job(inp, out, [inp], force=force, resume=resume, encoding=encoding)
    scan = _scan_input(inp, out, resume, count=False)
    return _embed_one(
        inp,
        out,
        encoder,
        scan=scan,
        lang=lang,
        with_text=with_text,
        dtype=dtype,
        chunk_lines=chunk_lines,
        batch_tokens=batch_tokens,
        batch_size=batch_size,
        on_bad_line=on_bad_line,
        encoding=encoding,
        resume=resume,
        progress=progress or null_progress,
    )


def _embed_one(
    inp: str,
    out: Path,
    encoder: Encoder,
    *,
    scan: FileScan | None,
    lang: str | None,
    with_text: bool,
    dtype: str,
    chunk_lines: int,
    batch_tokens: int,
    batch_size: int | None,
    on_bad_line: str,
    encoding: str,
    resume: bool,
    progress: Progress,
) -> EmbedResult:
    partial = partial_dir(out)
    resumable = partial is not None
    if partial is None:
        partial = Path(tempfile.mkdtemp(prefix="emmax-embed-"))
    state = {
        "input": input_state(inp, scan),
        "model_checksum": encoder.config.checksum,
        "precision": encoder.precision,
        "lang": lang,
        "with_text": with_text,
        "dtype": dtype,
        "chunk_lines": chunk_lines,
        "on_bad_line": on_bad_line,
        "encoding": encoding,
    }
    done = prepare_partial(partial, state, resume and resumable)
    meta = {**encoder.meta, "lang": lang, "source": display_name(inp)}
    truncated_before = getattr(encoder, "n_truncated", 0)
    stats = ReadStats()
    try:
        chunk_no = 0
        for ids, texts in read_chunks(
            inp, chunk_lines=chunk_lines, on_bad_line=on_bad_line, encoding=encoding, stats=stats
        ):
            if chunk_no < done:
                progress(len(ids))  # finished in the interrupted run
            else:
                emb = encoder.encode(
                    texts, batch_tokens=batch_tokens, batch_size=batch_size, progress=progress
                )
                with (
                    atomic_output(partial / f"{chunk_no:08d}.parquet") as tmp,
                    EmbeddingWriter(
                        tmp, encoder.dim, meta=meta, dtype=dtype, with_text=with_text, lang=lang
                    ) as w,
                ):
                    w.write(ids, emb, texts if with_text else None)
                del emb
                _release_memory()
            chunk_no += 1
        if chunk_no < done:
            raise InputError(
                f"{display_name(inp)} changed since the interrupted run", hint=RERUN_HINT
            )
        # reused chunks were re-read, so the skipped lines cover the whole input
        rows = merge_chunks(
            partial, chunk_no, out, encoder.dim, meta, dtype, with_text, lang, stats
        )
    except KeyboardInterrupt:
        kept = count_chunks(partial)
        if resumable and kept:
            log.warning(
                "interrupted: %d finished chunk(s) kept in %s; "
                "rerun the same command with --resume to continue",
                kept,
                partial,
            )
        else:
            remove_path(partial)
        raise
    except BaseException:
        remove_path(partial)
        raise
    remove_path(partial)
    res = EmbedResult(
        out,
        rows,
        stats.skipped,
        resumed_chunks=done,
        input=inp,
        dim=encoder.dim,
        truncated=getattr(encoder, "n_truncated", 0) - truncated_before,
    )
    _report(res, encoder.config.max_length)
    return res


def _report(res: EmbedResult, max_length: int) -> None:
    name = display_name(res.input)
    if res.skipped:
        shown = ", ".join(map(str, res.skipped[:20])) + (" ..." if len(res.skipped) > 20 else "")
        log.warning("%s: skipped %d undecodable line(s): %s", name, len(res.skipped), shown)
    if res.truncated:
        log.warning(
            "%s: %d line(s) longer than %d tokens were truncated", name, res.truncated, max_length
        )
    log.info("wrote %s (%d rows, dim %d)", res.output, res.rows, res.dim)


def _release_memory() -> None:
    """Hand freed heap back to the OS after a chunk. glibc keeps the fragments of the chunk's
    tokenizer and activation buffers (~0.5 GB with the default model, measured), which would
    otherwise add to the next chunk's peak."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
