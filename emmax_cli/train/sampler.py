"""Micro-batches for training: languages drawn with p(lang) ~ n_lang^alpha (XLM-R style),
files within a language by size, lines from each file's shuffled stream (``data.py``).

The sampler is a deterministic function of (seed, rank, number of batches drawn): resuming
replays the draws (``skip``) without encoding anything, so the data position is one integer."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError
from .config import PHASES, TrainConfig
from .data import Source, SourceStream, eval_sentence_set, find_sources, normalize_line, read_pairs


@dataclass
class Batch:
    """Sentences of one micro-batch: ``texts`` = [xx_1..xx_P ; eng_1..eng_P ; mono_1..mono_M].
    Row i < 2P has its translation at (i + P) mod 2P; mono rows have none."""

    texts: list[str]
    num_pairs: int
    langs: list[str] = field(default_factory=list)

    @property
    def num_mono(self) -> int:
        """The number of monolingual sentences (after the 2P pair rows)."""
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
    sentences; deterministic for (seed, rank).

    Args:
        parallel: parallel sources (``find_sources``).
        mono: monolingual sources.
        num_pairs: P, pairs per batch.
        num_mono: M, monolingual sentences per batch.
        alpha: language sampling exponent, p(lang) ~ lines^alpha.
        seed: the sampler's seed.
        rank: this process's rank; it reads lines i with i % world == rank.
        world: the number of processes.
        banned: normalised sentences never to emit (evaluation and dev sets).
        shuffle_buffer: per-file shuffle buffer.
        max_lines: read at most this many lines per file (0 = all).

    Raises:
        ConfigError: monolingual sentences requested without monolingual sources.
    """

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

        def make(s: Source) -> SourceStream:
            return SourceStream(s, self.rng, shuffle_buffer, max_lines, banned, rank, world)

        self.num_pairs, self.num_mono = num_pairs, num_mono
        self.par = _LangSampler(parallel, alpha, self.rng, make)
        self.mono = _LangSampler(mono, alpha, self.rng, make) if num_mono else None
        self.drawn = 0

    def next(self) -> Batch:
        """Draw the next micro-batch.

        Returns:
            ``[xx_1..xx_P ; eng_1..eng_P ; mono_1..mono_M]`` with their languages.

        Raises:
            InputError: a file has no usable lines for this rank.
        """
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
        """Replay draws (resume): the same RNG and stream state as after drawing them.

        Args:
            n: the number of batches drawn before (``drawn`` of the checkpoint).
        """
        for _ in range(n):
            self.next()

    def distinct_pairs(self) -> int:
        """The number of distinct parallel pairs drawn so far (by file and line).

        Returns:
            The count over all parallel streams of this rank.
        """
        return sum(len(s.seen) for ss, _ in self.par.by_lang for s in ss)

    def dropped(self) -> int:
        """The number of lines skipped so far because they are in the banned set.

        Returns:
            The count over all streams.
        """
        streams = [s for ss, _ in self.par.by_lang for s in ss]
        if self.mono is not None:
            streams += [s for ss, _ in self.mono.by_lang for s in ss]
        return sum(s.dropped for s in streams)


def build_sampler(
    cfg: TrainConfig, phase: str, rank: int = 0, world: int = 1
) -> tuple[BatchSampler, tuple[list[str], list[str]] | None, list[str]]:
    """The batch sampler of a phase, and the dev pairs held out of training.

    Every training source is opened (and counted) before the dev pairs are drawn. Dev pairs
    and evaluation sentences (``data.exclude``) are never trained on. In em with monolingual
    data, a batch holds 2P + M sentences with M / (2P + M) = ``data.mono_ratio``.

    Args:
        cfg: the resolved ``TrainConfig``.
        phase: ``ctl``, ``gmm`` or ``em`` (part of the sampler's seed).
        rank: this process's rank; it reads lines i with i % world == rank.
        world: the number of processes.

    Returns:
        ``(sampler, dev, dev_langs)``: the sampler, the dev pairs ``(xx, eng)`` (None without
        ``data.dev``) and the language of each dev pair.

    Raises:
        InputError: a data file is missing or has no usable lines.
        ConfigError: a malformed ``data.parallel`` entry, or monolingual sentences requested
            without ``data.mono``.
    """
    d = cfg.data
    par = find_sources(d.parallel, "tsv", d.max_lines)
    mono = find_sources(d.mono, "mono", d.max_lines) if d.mono else []
    banned = eval_sentence_set(d.exclude)
    dev, langs = None, []
    if d.dev:  # dev pairs are taken out of training: both sides join the banned set
        xx, en, langs = read_pairs(d.dev, d.dev_pairs, seed=cfg.run.seed, banned=banned)
        dev = (xx, en)
        banned |= {normalize_line(t) for t in xx + en}
    B = cfg.run.batch_pairs
    num_pairs, num_mono = B, 0
    if phase == "em" and mono and d.mono_ratio > 0:  # 2P + M sentences, M/(2P+M) = ratio
        total = 2 * B
        num_mono = int(round(total * d.mono_ratio))
        num_pairs = max(1, (total - num_mono) // 2)
    sampler = BatchSampler(
        par,
        mono,
        num_pairs,
        num_mono,
        d.alpha,
        cfg.run.seed * 1000 + PHASES.index(phase),
        rank,
        world,
        banned,
        d.shuffle_buffer,
        d.max_lines,
    )
    return sampler, dev, langs
