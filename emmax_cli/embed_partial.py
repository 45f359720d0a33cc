"""The ``.<output>.partial/`` folder of ``emmax embed``: where it lives, its ``state.json``,
what an interrupted run left that ``--resume`` may reuse, and the final merge.

The folder sits beside the *real* output (a symlink's target), so the merge is a rename on
one file system; for a pipe or device in a folder we cannot write (``/dev/null``) a private
temporary folder is used instead, and such a run cannot be resumed. ``state.json`` records
everything that decides the chunks' content: the input's path, size, mtime and BLAKE2b hash,
the model checksum, precision and the embedding options."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from .errors import InputError
from .io.atomic import atomic_output, is_stream_target, real_target, remove_path
from .io.parquet import EmbeddingWriter
from .io.text import FileScan, ReadStats, display_name, scan_file

log = logging.getLogger(__name__)

RERUN_HINT = "rerun without --resume"


def partial_dir(out: Path) -> Path | None:
    """Folder for finished chunks beside the real output; None: a private temporary folder
    (a device or pipe in a folder we cannot write, e.g. /dev/null; no resume there)."""
    real = real_target(out)
    if is_stream_target(real) and not os.access(real.parent, os.W_OK):
        return None
    return real.with_name(f".{real.name}.partial")


def input_state(inp: str, scan: FileScan | None) -> dict:
    """What ``state.json`` records about the input (a stream: its name only)."""
    if scan is None:
        return {"path": display_name(inp)}
    return {
        "path": os.path.realpath(inp),
        "size": scan.size,
        "mtime_ns": scan.mtime_ns,
        "blake2b": scan.digest,
    }


def check_resumable_input(inp: str, out: Path) -> FileScan | None:
    """Refuse to resume from an input that changed since the interrupted run.

    Size and mtime are a fast pre-check; the content hash decides (a line rewritten with the
    same length keeps the size, and ``touch -r`` or a coarse clock keeps the mtime)."""
    partial = partial_dir(out)
    sfile = partial / "state.json" if partial is not None else None
    if sfile is None or not sfile.exists():
        return None
    old = _read_state(sfile).get("input", {})
    if old.get("path") != os.path.realpath(inp):
        raise InputError(
            f"cannot resume: the interrupted run embedded {old.get('path')}, not {inp}",
            hint=RERUN_HINT,
        )
    st = os.stat(inp)
    if (old.get("size"), old.get("mtime_ns")) == (st.st_size, st.st_mtime_ns):
        scan = scan_file(inp)
        if scan.digest == old.get("blake2b"):
            return scan
    raise InputError(f"{inp} changed since the interrupted run", hint=RERUN_HINT)


def _read_state(sfile: Path) -> dict:
    try:
        return json.loads(sfile.read_text())
    except (OSError, ValueError):
        return {}  # unreadable state: nothing matches, so nothing is resumed


def count_chunks(partial: Path) -> int:
    """Finished chunks in the folder: ``00000000.parquet``, ``00000001.parquet``, ..."""
    n = 0
    while (partial / f"{n:08d}.parquet").exists():
        n += 1
    return n


def prepare_partial(partial: Path, state: dict, resume: bool) -> int:
    """Return how many finished chunks can be reused; (re)create the partial folder."""
    sfile = partial / "state.json"
    if resume and sfile.exists():
        old = _read_state(sfile)
        if old != state:
            changed = sorted(k for k in state if old.get(k) != state[k])
            if "input" in changed:
                raise InputError(
                    f"{state['input']['path']} changed since the interrupted run", hint=RERUN_HINT
                )
            raise InputError(
                f"cannot resume: {', '.join(changed)} changed since the interrupted run",
                hint=RERUN_HINT + " to start over",
            )
        n = count_chunks(partial)
        log.info("resuming after %d finished chunk(s) in %s", n, partial)
        return n
    if resume:
        log.warning("nothing to resume in %s; starting from the beginning", partial)
    elif kept := (count_chunks(partial) if partial.is_dir() else 0):
        log.warning(
            "discarding %d finished chunk(s) of an interrupted run in %s "
            "(pass --resume to continue it instead)",
            kept,
            partial,
        )
    remove_path(partial)
    partial.mkdir(parents=True)
    (partial / "state.json").write_text(json.dumps(state, sort_keys=True))
    return 0


def merge_chunks(
    partial: Path,
    n_chunks: int,
    out: Path,
    dim: int,
    meta: dict,
    dtype: str,
    with_text: bool,
    lang: str | None,
    stats: ReadStats,
) -> int:
    """Concatenate the chunk files (one row group each) into the output, atomically (a pipe
    or device output receives the file as a stream)."""
    import pyarrow.parquet as pq

    rows = 0
    meta = {**meta, "skipped_lines": len(stats.skipped)}
    with (
        atomic_output(out) as tmp,
        EmbeddingWriter(tmp, dim, meta=meta, dtype=dtype, with_text=with_text, lang=lang) as w,
    ):
        for i in range(n_chunks):
            rows += w.write_table(pq.read_table(partial / f"{i:08d}.parquet"))
    return rows
