"""``embed_file``: text files -> embedding Parquet, streaming with bounded memory.

Input is read in windows of ``chunk_lines`` lines; each window is sorted by length, batched
by a token budget, embedded and written as one row group, in input order. The output appears
atomically. Finished windows are kept in a hidden ``.<output>.partial/`` folder while the run
is under way, so an interrupted run can be continued with ``resume=True``; a completed or
restarted run removes it."""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .console import Progress, null_progress
from .errors import InputError
from .io.atomic import atomic_output, check_output
from .io.parquet import EmbeddingWriter
from .io.text import ReadStats, display_name, read_chunks
from .models.encoder import DEFAULT_BATCH_TOKENS, Encoder

log = logging.getLogger(__name__)

DEFAULT_CHUNK_LINES = 16_384


@dataclass
class EmbedResult:
    output: Path
    rows: int
    skipped: list[int] = field(default_factory=list)
    resumed_chunks: int = 0


def default_output(path: str | os.PathLike) -> Path:
    """``corpus.txt`` / ``corpus.txt.gz`` -> ``corpus.parquet`` beside the input."""
    p = Path(path)
    name = p.name[:-3] if p.name.endswith(".gz") else p.name
    stem = name.rsplit(".", 1)[0] if "." in name else name
    return p.with_name(stem + ".parquet")


def _fingerprint(path: str | os.PathLike) -> dict:
    if str(path) == "-":
        return {"path": "-"}
    st = Path(path).stat()
    return {"path": str(Path(path).resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


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
    """Embed one text file (or ``-`` for stdin) into an embedding Parquet file."""
    progress = progress or null_progress
    out = Path(output)
    if resume and str(input) == "-":
        raise InputError(
            "--resume cannot continue from stdin", hint="embed a file to be able to resume"
        )
    check_output(out, force=force)
    partial = out.with_name(f".{out.name}.partial")
    state = {
        "input": _fingerprint(input),
        "model_checksum": encoder.config.checksum,
        "precision": encoder.precision,
        "lang": lang,
        "with_text": with_text,
        "dtype": dtype,
        "chunk_lines": chunk_lines,
        "on_bad_line": on_bad_line,
        "encoding": encoding,
    }
    done = _prepare_partial(partial, state, resume)
    meta = {**encoder.meta, "lang": lang, "source": display_name(input)}
    stats = ReadStats()
    chunk_no = 0
    for ids, texts in read_chunks(
        input, chunk_lines=chunk_lines, on_bad_line=on_bad_line, encoding=encoding, stats=stats
    ):
        piece = partial / f"{chunk_no:08d}.parquet"
        if chunk_no < done:
            progress(len(ids))  # finished in the interrupted run
        else:
            emb = encoder.encode(
                texts, batch_tokens=batch_tokens, batch_size=batch_size, progress=progress
            )
            with (
                atomic_output(piece) as tmp,
                EmbeddingWriter(
                    tmp, encoder.dim, meta=meta, dtype=dtype, with_text=with_text, lang=lang
                ) as w,
            ):
                w.write(ids, emb, texts if with_text else None)
            del emb
            _release_memory()
        chunk_no += 1
    skipped = stats.skipped  # reused chunks were re-read, so this covers the whole input
    rows = _merge(partial, chunk_no, out, encoder.dim, meta, dtype, with_text, lang, skipped)
    shutil.rmtree(partial, ignore_errors=True)
    return EmbedResult(out, rows, skipped, resumed_chunks=done)


def _release_memory() -> None:
    """Hand freed heap back to the OS after a chunk. glibc keeps the fragments of the chunk's
    tokenizer and activation buffers (~0.5 GB with the default model, measured), which would
    otherwise add to the next chunk's peak."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _prepare_partial(partial: Path, state: dict, resume: bool) -> int:
    """Return how many finished chunks can be reused; (re)create the partial folder."""
    sfile = partial / "state.json"
    if resume and sfile.exists():
        old = json.loads(sfile.read_text())
        if old != state:
            changed = sorted(k for k in state if old.get(k) != state[k])
            raise InputError(
                f"cannot resume: {', '.join(changed)} changed since the interrupted run",
                hint="run again without --resume to start over",
            )
        n = 0
        while (partial / f"{n:08d}.parquet").exists():
            n += 1
        log.info("resuming after %d finished chunks", n)
        return n
    if resume:
        log.warning("nothing to resume for this output; starting from the beginning")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    sfile.write_text(json.dumps(state, sort_keys=True))
    return 0


def _merge(
    partial: Path,
    n_chunks: int,
    out: Path,
    dim: int,
    meta: dict,
    dtype: str,
    with_text: bool,
    lang: str | None,
    skipped: list[int],
) -> int:
    """Concatenate the chunk files (one row group each) into the output, atomically."""
    import pyarrow.parquet as pq

    rows = 0
    with atomic_output(out) as tmp:
        w = EmbeddingWriter(
            tmp,
            dim,
            meta={**meta, "skipped_lines": len(skipped)},
            dtype=dtype,
            with_text=with_text,
            lang=lang,
        )
        try:
            for i in range(n_chunks):
                rows += w.write_table(pq.read_table(partial / f"{i:08d}.parquet"))
        finally:
            w.close()
    return rows
