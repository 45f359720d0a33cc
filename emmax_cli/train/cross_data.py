"""Training pairs of the cross phase (``cross.py``): for each parallel pair of a step, the
translation (top rank), a hard negative (the encoder's nearest non-translation in the batch),
a near-miss (a number, a name, the polarity changed, a clause dropped: ``perturb.py``), a text
interpolation (the start of the translation, the end of another sentence; labelled by its share
like the GMM warm-up, §4.1) and, for a quarter of the rows, an unrelated sentence (rank 0).

A step's pairs depend only on ``(seed, step)``, so a resumed run sees the same data."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from .. import perturb
from ..errors import InputError
from .data import _read, eval_sentence_set, find_sources, normalize_line

log = logging.getLogger(__name__)

# rank of each kind of pair, for N = 4 (scaled for other N by ``label_for``)
NEAR_MISS = ("number", "name", "negation")


def label_for(kind: str, share: float, num_ranks: int) -> int:
    """The rank a training pair is labelled with.

    translation -> N-1; number/name/negation near-misses -> N-2; a truncation or interpolation
    keeping a share s of the translation -> floor(s N), at most N-2; a hard negative -> 1 (0 for
    N = 2); unrelated -> 0.
    """
    top = num_ranks - 1
    if kind == "translation":
        return top
    if kind in NEAR_MISS:
        return max(0, top - 1)
    if kind in ("truncation", "splice"):
        return int(min(max(0, top - 1), np.floor(share * num_ranks)))
    if kind == "hard":
        return min(1, max(0, top - 1))
    return 0


@dataclass
class PairPool:
    """The parallel pairs of the cross phase, per file, and a pool of names for substitutions."""

    files: list[str]
    src: list[list[str]]
    tgt: list[list[str]]
    weights: np.ndarray  # file sampling probabilities
    names: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        return sum(len(s) for s in self.src)


def load_pool(cfg, tokenizer_len, max_pairs: int, alpha: float, held=frozenset()) -> PairPool:
    """Read up to ``max_pairs`` pairs of every ``data.parallel`` file, without evaluation-set
    sentences, identical sides, or sides over ``cross.max_length`` tokens.

    Args:
        cfg: the ``TrainConfig``.
        tokenizer_len: maps a list of texts to their token counts.
        max_pairs: pairs kept per file.
        alpha: file sampling exponent, p ~ n^alpha.
        held: normalised sentences held out (the dev pairs).

    Raises:
        InputError: no usable pair.
    """
    banned = eval_sentence_set(cfg.data.exclude) | set(held)
    files, srcs, tgts = [], [], []
    for source in find_sources(cfg.data.parallel, "tsv"):
        rows = []
        for _, fields in _read(source, 0):
            if len(fields) != 2 or not all(f.strip() for f in fields) or fields[0] == fields[1]:
                continue
            if normalize_line(fields[0]) in banned or normalize_line(fields[1]) in banned:
                continue
            rows.append(fields)
            if len(rows) >= 2 * max_pairs:
                break
        if not rows:
            continue
        rng = np.random.default_rng(len(files))
        rows = [rows[i] for i in rng.permutation(len(rows))[: max_pairs + max_pairs // 4 + 16]]
        xs, ys = [r[0] for r in rows], [r[1] for r in rows]
        la, lb = tokenizer_len(xs), tokenizer_len(ys)
        ok = (la <= cfg.cross.max_length) & (lb <= cfg.cross.max_length)
        keep = np.flatnonzero(ok)[:max_pairs]
        if len(keep) < 8:
            continue
        files.append(str(source.paths[0]))
        srcs.append([xs[i] for i in keep])
        tgts.append([ys[i] for i in keep])
    if not files:
        raise InputError("no usable parallel pairs for the cross phase", hint="check data.parallel")
    n = np.array([len(s) for s in srcs], dtype=np.float64)
    w = n**alpha
    names = perturb.name_pool(t for ts in tgts for t in ts[:2000])
    return PairPool(files, srcs, tgts, w / w.sum(), names)


@dataclass
class StepBatch:
    """One step's sentences and pairs. ``texts`` are unique sentences; pair p reads
    ``(texts[a[p]], texts[b[p]])`` with label ``labels[p]`` and kind ``kinds[p]``;
    ``hard_rows`` are the rows (0..B-1, into texts) whose hard negative the trainer picks."""

    texts: list[str]
    a: list[int]
    b: list[int]
    labels: list[int]
    kinds: list[str]
    batch: int  # B: texts[:B] are sources, texts[B:2B] their translations


def make_batch(pool: PairPool, seed: int, step: int, batch: int, num_ranks: int) -> StepBatch:
    """The pairs of one step (hard negatives are added by the trainer, which has embeddings).

    Args:
        pool: the pairs.
        seed: run seed.
        step: the step number (with the seed, fixes everything drawn here).
        batch: B parallel pairs, all from one file.
        num_ranks: N.
    """
    rng = np.random.default_rng([seed, step, 7])
    f = int(rng.choice(len(pool.files), p=pool.weights))
    src, tgt = pool.src[f], pool.tgt[f]
    rows = rng.choice(len(src), size=min(batch, len(src)), replace=False)
    B = len(rows)
    texts = [src[i] for i in rows] + [tgt[i] for i in rows]
    a, b, labels, kinds = [], [], [], []

    def add(i: int, text_or_idx, kind: str, share: float = 1.0) -> None:
        if isinstance(text_or_idx, str):
            texts.append(text_or_idx)
            j = len(texts) - 1
        else:
            j = text_or_idx
        a.append(i)
        b.append(j)
        labels.append(label_for(kind, share, num_ranks))
        kinds.append(kind)

    for i in range(B):
        add(i, B + i, "translation")
        t = texts[B + i]
        order = rng.permutation(len(perturb.KINDS))
        for k in order:  # one near-miss of the first kind that applies
            kind = perturb.KINDS[k]
            if kind == "truncation":
                r = perturb.truncate(t, rng)
                if r is not None:
                    add(i, r[0], kind, r[1])
                    break
                continue
            out = perturb.perturb(kind, t, rng, pool.names)
            if out is not None:
                if kind == "number" and rng.random() < 0.25:  # the change on the source side
                    s2 = perturb.change_number(texts[i], rng)
                    if s2 is not None:
                        texts.append(s2)
                        add(B + i, len(texts) - 1, kind)
                        break
                add(i, out, kind)
                break
        other = texts[B + int((i + 1 + rng.integers(B - 1)) % B)] if B > 1 else t
        share = float(rng.uniform(0.25, 0.9))
        add(i, perturb.splice(t, other, share), "splice", share)
        if rng.random() < 0.25 and B > 1:
            j = int((i + 1 + rng.integers(B - 1)) % B)
            add(i, B + j, "unrelated")
    return StepBatch(texts, a, b, labels, kinds, B)
