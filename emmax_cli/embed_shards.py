"""``emmax embed --ray``: inputs cut into line-range shards, embedded on Ray workers into a
shard folder (``shards.py``), resumable shard by shard.

The driver plans the shards (one read pass per input: fingerprint and byte offsets), keeps
``manifest.json`` up to date as shards finish, and hands shards to workers, one per GPU or
one per ``threads`` CPUs. A worker embeds its shard in the windows a single-process run uses
(shard boundaries are multiples of ``chunk_lines``) and writes it atomically. A killed
worker is restarted by Ray and its shard retried; a killed driver loses the shards in flight:
rerunning the same command finds the manifest, checks that inputs, model and options are
unchanged, and skips every finished shard whose file is intact."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .console import ProgressFactory, no_progress
from .embed import check_options
from .errors import InputError
from .index_meta import file_digest
from .io.atomic import atomic_output
from .io.parquet import EmbeddingWriter
from .io.text import ReadStats, check_text_input, read_chunks
from .models.encoder import DEFAULT_BATCH_TOKENS
from .raycluster import LOCAL, cluster_workers, init_ray, task_error
from .shards import (
    DEFAULT_SHARD_LINES,
    MANIFEST,
    plan_manifest,
    read_manifest,
    shard_ok,
    write_manifest,
)

log = logging.getLogger(__name__)


@dataclass
class ShardedResult:
    """What ``embed_sharded`` did: the folder, rows written, shards embedded and reused."""

    output: Path
    rows: int
    shards: int
    embedded: int
    reused: int
    skipped_lines: int = 0


def embed_shard(encoder: Any, input: str, shard: dict, folder: Path, opts: dict) -> dict:
    """Embed one shard (a line range of ``input``) into ``folder / shard["name"]``.

    Returns:
        The shard's manifest entry, done: rows, lines read, skipped line numbers (1-based),
        file size and BLAKE2b.
    """
    stats = ReadStats()
    meta = {**encoder.meta, "lang": opts["lang"], "source": str(input)}
    out = folder / shard["name"]
    rows = 0
    with (
        atomic_output(out) as tmp,
        EmbeddingWriter(
            tmp,
            encoder.dim,
            meta=meta,
            dtype=opts["dtype"],
            with_text=opts["with_text"],
            lang=opts["lang"],
        ) as w,
    ):
        for ids, texts in read_chunks(
            input,
            chunk_lines=opts["chunk_lines"],
            on_bad_line=opts["on_bad_line"],
            encoding=opts["encoding"],
            stats=stats,
            start_line=shard["start_line"],
            end_line=shard["end_line"],
            start_byte=shard["start_byte"],
        ):
            emb = encoder.encode(texts, batch_tokens=opts["batch_tokens"])
            w.write(ids, emb, texts if opts["with_text"] else None)
            rows += len(ids)
    return {
        **shard,
        "done": True,
        "rows": rows,
        "lines": stats.lines - shard["start_line"],
        "skipped": stats.skipped,
        "bytes": out.stat().st_size,
        "blake2b": file_digest(out),
    }


class ShardWorker:
    """A Ray actor: loads the model once, then embeds the shards it is given."""

    def __init__(self, model: str | None, device: str, precision: str, threads: int):
        import torch

        from .models.encoder import Encoder

        torch.set_num_threads(threads)
        self.encoder = Encoder.load(model, device=device, precision=precision)

    def embed(self, input: str, shard: dict, folder: str, opts: dict) -> dict:
        return embed_shard(self.encoder, input, shard, Path(folder), opts)


def _job(model: str | None, precision: str, opts: dict) -> dict:
    from .models.loading import resolve

    cfg = resolve(model, verify=False).config
    return {"model": cfg.name, "model_checksum": cfg.checksum, "precision": precision, **opts}


def _prepare(
    inputs: Sequence[str], folder: Path, job: dict, shard_lines: int, force: bool
) -> tuple[dict, int]:
    """The manifest to work on, with the finished shards of an earlier run of the same job
    marked done; and how many were reused."""
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder}: is a file", hint="--ray writes a folder: pass -o FOLDER")
    old = None
    if (folder / MANIFEST).exists():
        old = read_manifest(folder)
    elif folder.is_dir() and any(folder.iterdir()):
        raise InputError(
            f"{folder}: folder exists and is not an emmax shard folder",
            hint="pass an empty or new folder",
        )
    new = plan_manifest(inputs, shard_lines, job)
    reused = 0
    if old is not None and not force:
        if old["job"] != new["job"] or old["inputs"] != new["inputs"]:
            raise InputError(
                f"{folder}: holds shards of another job (other inputs, model or options)",
                hint="rerun with the same command to continue it, or pass --force to replace it",
            )
        by_range = {(s["input"], s["start_line"]): s for s in old["shards"]}
        for i, s in enumerate(new["shards"]):
            o = by_range.get((s["input"], s["start_line"]))
            if o is not None and o["name"] == s["name"] and shard_ok(folder, o, verify=True):
                new["shards"][i] = o
                reused += 1
    elif old is not None:  # --force: remove what an emmax run wrote, nothing else
        for p in [folder / MANIFEST, *folder.glob("part-*.parquet")]:
            p.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    write_manifest(folder, new)
    return new, reused


def embed_sharded(
    inputs: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    *,
    model: str | os.PathLike | None = None,
    lang: str | None = None,
    with_text: bool = True,
    dtype: str = "float32",
    device: str = "auto",
    precision: str = "auto",
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    chunk_lines: int = 16_384,
    on_bad_line: str = "error",
    encoding: str = "utf-8",
    shard_lines: int = DEFAULT_SHARD_LINES,
    ray_address: str | None = LOCAL,
    workers: int | None = None,
    threads: int = 1,
    force: bool = False,
    progress: ProgressFactory | None = None,
) -> ShardedResult:
    """Embed text files into a shard folder on a Ray cluster: the library function behind
    ``emmax embed --ray``. Rerunning the same call skips the shards already finished.

    Args:
        inputs: regular text files (plain or gzip; a gzip file is one shard).
        output: the folder to write (created; ``part-NNNNN.parquet`` + ``manifest.json``).
        shard_lines: lines per shard, rounded up to a multiple of ``chunk_lines``.
        ray_address: ``local`` (a local instance, or ``RAY_ADDRESS``) or a cluster address.
        workers: CPU workers of a local instance (default: its CPUs // ``threads``).
        threads: torch threads per CPU worker.
        Others: as :func:`emmax_cli.embed.embed_files`.

    Raises:
        InputError: bad inputs or options, or a folder holding another job.
        EmmaxError: Ray missing or unreachable, or a shard that fails on every retry.
    """
    if not inputs:
        raise InputError("no input files given", hint="pass text files")
    check_options(dtype, on_bad_line, chunk_lines, batch_tokens)
    if shard_lines < 1 or threads < 1:
        raise InputError("--shard-lines and --threads must be at least 1")
    inputs = [str(i) for i in inputs]
    for inp in inputs:
        if inp == "-":
            raise InputError("--ray cannot read stdin", hint="write the input to a file first")
        check_text_input(inp, encoding)
    shard_lines = -(-shard_lines // chunk_lines) * chunk_lines
    folder = Path(output)
    opts = dict(
        lang=lang,
        with_text=with_text,
        dtype=dtype,
        chunk_lines=chunk_lines,
        on_bad_line=on_bad_line,
        encoding=encoding,
    )
    model_arg = None if model is None else str(model)
    manifest, reused = _prepare(
        inputs, folder, _job(model_arg, precision, opts), shard_lines, force
    )
    opts["batch_tokens"] = batch_tokens
    todo = [i for i, s in enumerate(manifest["shards"]) if not s["done"]]
    if reused:
        log.info("%s: %d finished shard(s) reused, %d to embed", folder, reused, len(todo))
    if todo:
        local = workers * threads if workers else None
        ray = init_ray(ray_address, num_cpus=local)
        _run(
            ray,
            manifest,
            todo,
            folder,
            opts,
            (model_arg, device, precision, threads),
            progress or no_progress,
        )
    shards = manifest["shards"]
    res = ShardedResult(
        folder,
        sum(s["rows"] for s in shards),
        len(shards),
        len(todo),
        reused,
        sum(len(s.get("skipped") or ()) for s in shards),
    )
    if res.skipped_lines:
        log.warning(
            "%s: skipped %d undecodable line(s) (listed in %s)", folder, res.skipped_lines, MANIFEST
        )
    log.info("wrote %s (%d rows in %d shards)", folder, res.rows, res.shards)
    return res


def _run(ray, manifest, todo, folder, opts, worker_args, progress) -> None:
    """Hand the shards to the workers, one at a time each; record each one as it finishes."""
    threads = worker_args[3]
    n, res = cluster_workers(ray, threads)
    actor = ray.remote(max_restarts=-1, max_task_retries=3, **res)(ShardWorker)
    actors = [actor.remote(*worker_args) for _ in range(min(n, len(todo)))]
    shards = manifest["shards"]
    queue = list(todo)
    running: dict[Any, tuple[int, Any]] = {}
    total = sum((s["end_line"] or 0) - s["start_line"] for s in (shards[i] for i in todo))
    with progress("embed shards", total or None) as advance:

        def submit(a):
            i = queue.pop(0)
            s = shards[i]
            # absolute paths: a worker may run in another working folder (or machine)
            path = manifest["inputs"][s["input"]]["path"]
            ref = a.embed.remote(path, s, str(folder.resolve()), opts)
            running[ref] = (i, a)

        for a in actors:
            if queue:
                submit(a)
        while running:
            done, _ = ray.wait(list(running), num_returns=1)
            i, a = running.pop(done[0])
            try:
                entry = ray.get(done[0])
            except Exception as e:  # a RayTaskError wraps the worker's exception
                for ref in running:
                    ray.cancel(ref)
                raise task_error(
                    e,
                    f"shard {shards[i]['name']}",
                    hint="rerun the same command: finished shards are kept",
                ) from None
            shards[i] = entry
            write_manifest(folder, manifest)
            advance(entry["lines"])
            if queue:
                submit(a)
