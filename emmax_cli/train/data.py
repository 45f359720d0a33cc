"""Training data: parallel and monolingual text read as streams, sampled across languages.

* Parallel: ``<xxx>-eng.tsv`` files (``xxx sentence<TAB>English sentence``) or line-aligned
  pairs of files (``{src = "a.de", tgt = "a.en", lang = "deu"}``), any number of languages.
* Monolingual: ``<xxx>.txt``, one sentence per line.
* Languages are drawn with p(lang) ~ n_lang^alpha (XLM-R style), files within a language by size.
* Each file is streamed with a small shuffle buffer and restarts at its end (epochs).
* Evaluation sentences are never trained on: every line of the ``exclude`` folders is
  normalised (lowercase, whitespace collapsed) into a set, and any training pair or sentence
  with a side in that set is dropped while streaming.
* Under torchrun, rank r of w reads lines i with i % w == r.

Batches are drawn by ``sampler.BatchSampler``."""

from __future__ import annotations

import glob
import logging
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError, InputError

log = logging.getLogger(__name__)

_WS = re.compile(r"\s+")


def normalize_line(s: str) -> str:
    """The form in which sentences are compared with the evaluation sets.

    Args:
        s: a sentence.

    Returns:
        ``s`` lowercased, whitespace runs collapsed to one space, stripped.
    """
    return _WS.sub(" ", s).strip().lower()


def eval_sentence_set(dirs: Sequence[str | os.PathLike]) -> set[str]:
    """The normalised lines (and tab-separated fields) of every file under ``dirs``.

    Missing folders are skipped with a warning (the filter then protects only what exists).

    Args:
        dirs: evaluation-set folders or files (``data.exclude``); ``.md`` files are skipped.

    Returns:
        The set of ``normalize_line`` forms never to train on.
    """
    out: set[str] = set()
    for d in dirs:
        p = Path(d)
        if not p.exists():
            log.warning("eval folder %s not found: its sentences cannot be filtered out", p)
            continue
        files = (
            [p]
            if p.is_file()
            else sorted(f for f in p.rglob("*") if f.is_file() and f.suffix != ".md")
        )
        for f in files:
            with open(f, encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    for part in line.rstrip("\n").split("\t"):
                        if part.strip():
                            out.add(normalize_line(part))
    return out


@dataclass
class Source:
    """One training file (or aligned file pair) of one language.

    Attributes:
        lang: the language code (from the file name, or the table's ``lang``).
        paths: ``(tsv,)``, ``(src, tgt)`` or ``(mono,)``.
        kind: ``tsv``, ``pair`` or ``mono``.
        lines: lines counted (up to ``max_lines``); the sampling weight.
    """

    lang: str
    paths: tuple[Path, ...]  # (tsv,) | (src, tgt) | (mono,)
    kind: str  # "tsv" | "pair" | "mono"
    lines: int = 0


def _lang_of(path: Path, kind: str) -> str:
    stem = path.name.split(".")[0]
    if kind == "tsv":
        return stem.split("-")[0]
    return stem


def _expand(pattern: str) -> list[Path]:
    hits = sorted(glob.glob(os.path.expanduser(pattern)))
    if not hits:
        raise InputError(
            f"{pattern}: no training files match", hint="check data.parallel / data.mono"
        )
    return [Path(h) for h in hits if Path(h).is_file()]


def _count(path: Path, limit: int) -> int:
    n = 0
    with open(path, "rb") as f:
        for n, _ in enumerate(f, 1):
            if limit and n >= limit:
                break
    return n


def find_sources(entries: Sequence, kind: str, max_lines: int = 0) -> list[Source]:
    """Expand config entries into sources; empty files are left out.

    Args:
        entries: globs, or ``{src, tgt, lang}`` tables of line-aligned files.
        kind: ``tsv`` (parallel TSVs) or ``mono`` for the glob entries.
        max_lines: count at most this many lines per file (0 = all).

    Returns:
        The sources with their line counts.

    Raises:
        ConfigError: a malformed table.
        InputError: a glob that matches nothing, or a missing file.
    """
    out = []
    for e in entries:
        if isinstance(e, dict):
            unknown = set(e) - {"src", "tgt", "lang"}
            if unknown or not {"src", "tgt"} <= set(e):
                raise ConfigError(f"parallel entry {e!r}: use {{src, tgt, lang}}")
            src, tgt = Path(e["src"]), Path(e["tgt"])
            for p in (src, tgt):
                if not p.is_file():
                    raise InputError(f"{p}: no such file", hint="check data.parallel")
            out.append(Source(e.get("lang") or _lang_of(src, "mono"), (src, tgt), "pair"))
        else:
            for p in _expand(str(e)):
                out.append(Source(_lang_of(p, kind), (p,), kind))
    for s in out:
        s.lines = _count(s.paths[0], max_lines)
    return [s for s in out if s.lines > 0]


def _read(src: Source, max_lines: int) -> Iterator[tuple[int, tuple[str, ...]]]:
    """(line number, fields) of one pass over a source; pairs are (xx, eng)."""
    if src.kind == "pair":
        with open(src.paths[0], encoding="utf-8") as a, open(src.paths[1], encoding="utf-8") as b:
            for i, (x, y) in enumerate(zip(a, b, strict=False)):
                if max_lines and i >= max_lines:
                    return
                yield i, (x.rstrip("\n"), y.rstrip("\n"))
        return
    with open(src.paths[0], encoding="utf-8") as f:
        for i, line in enumerate(f):
            if max_lines and i >= max_lines:
                return
            line = line.rstrip("\n")
            yield i, tuple(line.split("\t")[:2]) if src.kind == "tsv" else (line,)


class SourceStream:
    """Endless shuffled stream of one source: this rank's shard, banned lines removed, the
    file restarted at its end.

    Args:
        src: the source.
        rng: the sampler's generator (shared by all streams, so the draws are one sequence).
        buffer: shuffle buffer size.
        max_lines: read at most this many lines of the file (0 = all).
        banned: normalised sentences to drop.
        rank: this process's rank; it reads lines i with i % world == rank.
        world: the number of processes.
    """

    def __init__(
        self,
        src: Source,
        rng: np.random.Generator,
        buffer: int,
        max_lines: int,
        banned: set[str],
        rank: int,
        world: int,
    ):
        self.src, self.rng, self.size = src, rng, max(1, buffer)
        self.max_lines, self.banned, self.rank, self.world = max_lines, banned, rank, world
        self.buf: list[tuple[int, tuple[str, ...]]] = []
        self.it = self._lines()
        self.dropped = 0
        self.seen: set[int] = set()  # line numbers drawn so far (distinct lines seen)

    def _lines(self) -> Iterator[tuple[int, tuple[str, ...]]]:
        want = 2 if self.src.kind in ("tsv", "pair") else 1
        while True:
            n = 0
            for i, fields in _read(self.src, self.max_lines):
                if i % self.world != self.rank:
                    continue
                if len(fields) != want or not all(f.strip() for f in fields):
                    continue
                if any(normalize_line(f) in self.banned for f in fields):
                    self.dropped += 1
                    continue
                n += 1
                yield i, fields
            if n == 0:
                raise InputError(
                    f"{self.src.paths[0]}: no usable lines for rank {self.rank}",
                    hint="remove the file or give it more lines",
                )

    def next(self) -> tuple[str, ...]:
        """Draw the next line.

        Returns:
            Its fields: ``(xx, eng)`` for parallel sources, ``(sentence,)`` for monolingual.

        Raises:
            InputError: the file has no usable line for this rank.
        """
        while len(self.buf) < self.size:
            self.buf.append(next(self.it))
        j = int(self.rng.integers(len(self.buf)))
        (line, item), self.buf[j] = self.buf[j], next(self.it)
        self.seen.add(line)
        return item


def read_pairs(
    paths: Sequence[str | os.PathLike], n: int, seed: int = 0, banned: set[str] | None = None
) -> tuple[list[str], list[str], list[str]]:
    """Up to ``n`` pairs spread evenly over TSV files (the dev set).

    Args:
        paths: TSV files or globs.
        n: the number of pairs wanted.
        seed: which pairs are drawn.
        banned: normalised sentences to skip (evaluation sets).

    Returns:
        ``(xx, eng, langs)``: parallel lists.

    Raises:
        InputError: a glob matches no file.
    """
    files = [p for pat in paths for p in _expand(str(pat))]
    rng = np.random.default_rng(seed)
    per = max(1, -(-n // max(1, len(files))))
    xx, en, langs = [], [], []
    for f in files:
        rows = []
        for _, fields in _read(Source(_lang_of(f, "tsv"), (f,), "tsv"), 0):
            if len(fields) == 2 and all(x.strip() for x in fields):
                if banned and any(normalize_line(x) in banned for x in fields):
                    continue
                rows.append(fields)
        for i in sorted(rng.permutation(len(rows))[:per]):
            xx.append(rows[i][0])
            en.append(rows[i][1])
            langs.append(_lang_of(f, "tsv"))
    if len(xx) > n:
        keep = np.sort(rng.permutation(len(xx))[:n])
        xx, en, langs = [xx[i] for i in keep], [en[i] for i in keep], [langs[i] for i in keep]
    return xx, en, langs
