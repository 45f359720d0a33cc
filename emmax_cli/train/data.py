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

The sampler is a deterministic function of (seed, rank, number of batches drawn): resuming
replays the draws (``skip``) without encoding anything, so the data position is one integer."""

from __future__ import annotations

import glob
import logging
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConfigError, InputError

log = logging.getLogger(__name__)

_WS = re.compile(r"\s+")


def normalize_line(s: str) -> str:
    return _WS.sub(" ", s).strip().lower()


def eval_sentence_set(dirs: Sequence[str | os.PathLike]) -> set[str]:
    """Normalised lines of every file under ``dirs`` (evaluation sets). Missing folders are
    skipped with a warning (the filter then protects only what exists)."""
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
    """One training file (or aligned file pair) of one language."""

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
    """Expand config entries (globs, or ``{src, tgt, lang}`` tables) into sources."""
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


class _Stream:
    """Endless shuffled stream of one source (this rank's shard, eval lines removed)."""

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
        self.buf: list[tuple[str, ...]] = []
        self.it = self._lines()
        self.dropped = 0

    def _lines(self) -> Iterator[tuple[str, ...]]:
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
                yield fields
            if n == 0:
                raise InputError(
                    f"{self.src.paths[0]}: no usable lines for rank {self.rank}",
                    hint="remove the file or give it more lines",
                )

    def next(self) -> tuple[str, ...]:
        while len(self.buf) < self.size:
            self.buf.append(next(self.it))
        j = int(self.rng.integers(len(self.buf)))
        item, self.buf[j] = self.buf[j], next(self.it)
        return item


@dataclass
class Batch:
    """Sentences of one micro-batch: ``texts`` = [xx_1..xx_P ; eng_1..eng_P ; mono_1..mono_M].
    Row i < 2P has its translation at (i + P) mod 2P; mono rows have none."""

    texts: list[str]
    num_pairs: int
    langs: list[str] = field(default_factory=list)

    @property
    def num_mono(self) -> int:
        return len(self.texts) - 2 * self.num_pairs


class _LangSampler:
    def __init__(self, sources: list[Source], alpha: float, rng: np.random.Generator, make_stream):
        self.langs = sorted({s.lang for s in sources})
        sizes = np.array(
            [sum(s.lines for s in sources if s.lang == lang) for lang in self.langs], float
        )
        p = sizes**alpha
        self.p = p / p.sum()
        self.rng = rng
        self.by_lang = []
        for lang in self.langs:
            group = [s for s in sources if s.lang == lang]
            w = np.array([s.lines for s in group], float)
            self.by_lang.append(([make_stream(s) for s in group], w / w.sum()))

    def draw(self, n: int) -> list[tuple[str, tuple[str, ...]]]:
        out = []
        for li in self.rng.choice(len(self.langs), size=n, p=self.p):
            streams, w = self.by_lang[li]
            s = streams[int(self.rng.choice(len(streams), p=w))] if len(streams) > 1 else streams[0]
            out.append((self.langs[li], s.next()))
        return out


class BatchSampler:
    """Endless micro-batches of ``num_pairs`` parallel pairs plus ``num_mono`` monolingual
    sentences; deterministic for (seed, rank)."""

    def __init__(
        self,
        parallel: list[Source],
        mono: list[Source],
        num_pairs: int,
        num_mono: int,
        alpha: float = 0.3,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        banned: set[str] | None = None,
        shuffle_buffer: int = 2048,
        max_lines: int = 0,
    ):
        if num_mono and not mono:
            raise ConfigError(
                "monolingual sentences requested but data.mono is empty",
                hint="list mono files or set data.mono_ratio = 0",
            )
        self.rng = np.random.default_rng([seed, rank, 7919])
        banned = banned or set()

        def make(s: Source) -> _Stream:
            return _Stream(s, self.rng, shuffle_buffer, max_lines, banned, rank, world)

        self.num_pairs, self.num_mono = num_pairs, num_mono
        self.par = _LangSampler(parallel, alpha, self.rng, make)
        self.mono = _LangSampler(mono, alpha, self.rng, make) if num_mono else None
        self.drawn = 0

    def next(self) -> Batch:
        pairs = self.par.draw(self.num_pairs)
        texts = [f[0] for _, f in pairs] + [f[1] for _, f in pairs]
        langs = [lang for lang, _ in pairs] + ["eng"] * len(pairs)
        if self.mono is not None:
            mono = self.mono.draw(self.num_mono)
            texts += [f[0] for _, f in mono]
            langs += [lang for lang, _ in mono]
        self.drawn += 1
        return Batch(texts, self.num_pairs, langs)

    def skip(self, n: int) -> None:
        """Replay ``n`` draws (resume): same RNG and stream state as after drawing them."""
        for _ in range(n):
            self.next()

    def dropped(self) -> int:
        streams = [s for ss, _ in self.par.by_lang for s in ss]
        if self.mono is not None:
            streams += [s for ss, _ in self.mono.by_lang for s in ss]
        return sum(s.dropped for s in streams)


def read_pairs(
    paths: Sequence[str | os.PathLike], n: int, seed: int = 0, banned: set[str] | None = None
) -> tuple[list[str], list[str], list[str]]:
    """Up to ``n`` pairs spread evenly over TSV ``paths`` (globs allowed): (xx, eng, langs).
    Used for the dev set and the GMM warm-up sample."""
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
