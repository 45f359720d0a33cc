"""xsim: multi-way similarity-search error rates (LASER ``source/xsim.py``), and the exact
nearest-neighbour retrieval (cosine or margin) shared by the Tatoeba and geometry evaluations.

For aligned sets X (language a) and Y (language b), each x_i is aligned to one y: the nearest by
cosine, or, with a margin, the best of its k nearest targets rescored by the margin. The error
is 100 * #{i : aligned(i) != i} / n (index-based), or counts i whose retrieved *text* differs from
the text of line i (text-based, forgives duplicate targets). Exact search (numpy matmul over
row blocks); no approximate index is ever used here, so figures compare with published ones."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..console import Progress, ProgressFactory, no_progress, null_progress
from ..errors import InputError

log = logging.getLogger(__name__)

MARGINS = (None, "ratio", "distance")
DEFAULT_K = 4
_BLOCK = 4096  # query rows per similarity block: memory is _BLOCK x n_tgt float32
_LANG_FILE = re.compile(r"^([a-z]{3}(?:_[A-Za-z]{4})?)\.txt$")


def normalize_margin(margin: str | None) -> str | None:
    """``None``/``"cosine"``/``"absolute"``/``"none"`` -> None (plain cosine); else the margin
    (``ratio`` or ``distance``)."""
    if margin is None or str(margin).lower() in ("none", "cosine", "absolute", ""):
        return None
    m = str(margin).lower()
    if m not in ("ratio", "distance"):
        raise InputError(f"unknown margin {margin!r}", hint="use cosine (none), ratio or distance")
    return m


# ---- exact retrieval ------------------------------------------------------------------------
def _sorted_topk(S: np.ndarray, k: int, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k values and indices of S along ``axis``, sorted by value descending."""
    n = S.shape[axis]
    if k >= n:
        idx = np.argsort(-S, axis=axis, kind="stable")
    else:
        part = np.argpartition(-S, k - 1, axis=axis)
        idx = part[:, :k] if axis == 1 else part[:k]
        vals = np.take_along_axis(S, idx, axis=axis)
        order = np.argsort(-vals, axis=axis, kind="stable")
        idx = np.take_along_axis(idx, order, axis=axis)
    return np.take_along_axis(S, idx, axis=axis), idx


def knn_both(X: np.ndarray, Y: np.ndarray, k: int, block: int = _BLOCK):
    """Exact k-NN by inner product in both directions from one pass over X @ Y.T.

    Returns ``(fwd_sims (n,k), fwd_idx (n,k), bwd_sims (m,k'), bwd_idx (m,k'))`` with k clipped to
    the other side's size, each row sorted by similarity descending."""
    n, m = len(X), len(Y)
    kr, kc = min(k, m), min(k, n)
    fwd_s = np.empty((n, kr), dtype=np.float32)
    fwd_i = np.empty((n, kr), dtype=np.int64)
    col_s = np.full((kc, m), -np.inf, dtype=np.float32)
    col_i = np.zeros((kc, m), dtype=np.int64)
    for b0 in range(0, n, block):
        S = X[b0 : b0 + block] @ Y.T  # (b, m)
        fwd_s[b0 : b0 + len(S)], fwd_i[b0 : b0 + len(S)] = _sorted_topk(S, kr, axis=1)
        vb, ib = _sorted_topk(S, min(kc, len(S)), axis=0)
        allv = np.concatenate([col_s, vb], axis=0)
        alli = np.concatenate([col_i, ib + b0], axis=0)
        col_s, sel = _sorted_topk(allv, kc, axis=0)
        col_i = np.take_along_axis(alli, sel, axis=0)
    return fwd_s, fwd_i, col_s.T.copy(), col_i.T.copy()


def nearest_both(
    X: np.ndarray, Y: np.ndarray, block: int = _BLOCK
) -> tuple[np.ndarray, np.ndarray]:
    """Exact nearest neighbour by cosine, X->Y and Y->X (ties go to the lowest index)."""
    n, m = len(X), len(Y)
    fwd = np.empty(n, dtype=np.int64)
    best = np.full(m, -np.inf, dtype=np.float32)
    bwd = np.zeros(m, dtype=np.int64)
    for b0 in range(0, n, block):
        S = X[b0 : b0 + block] @ Y.T
        fwd[b0 : b0 + len(S)] = S.argmax(axis=1)
        a = S.argmax(axis=0)
        v = S[a, np.arange(m)]
        better = v > best  # strict: an earlier block keeps a tie
        best[better] = v[better]
        bwd[better] = a[better] + b0
    return fwd, bwd


def _margin_pick(cand_s, cand_i, own_mean, other_mean, margin: str) -> np.ndarray:
    avg = (own_mean[:, None] + other_mean[cand_i]) / 2.0
    score = cand_s / avg if margin == "ratio" else cand_s - avg
    return cand_i[np.arange(len(cand_i)), score.argmax(axis=1)]


def retrieve_both(
    X: np.ndarray, Y: np.ndarray, margin: str | None = None, k: int = DEFAULT_K, block: int = _BLOCK
) -> tuple[np.ndarray, np.ndarray]:
    """Index of the retrieved target for every row of X in Y, and of Y in X.

    ``margin=None``: plain cosine nearest neighbour. ``"ratio"``/``"distance"``: LASER xsim, the
    k nearest candidates by cosine rescored with margin(x, y) = cos / avg or cos - avg, where
    avg = (mean cos of x to its k-NN + mean cos of y to its k-NN) / 2 (Artetxe & Schwenk 2019)."""
    margin = normalize_margin(margin)
    X = np.ascontiguousarray(X, dtype=np.float32)
    Y = np.ascontiguousarray(Y, dtype=np.float32)
    if margin is None:
        return nearest_both(X, Y, block)
    fs, fi, bs, bi = knn_both(X, Y, k, block)
    fmean, bmean = fs.mean(axis=1), bs.mean(axis=1)
    return _margin_pick(fs, fi, fmean, bmean, margin), _margin_pick(bs, bi, bmean, fmean, margin)


def errors(
    pred: np.ndarray, src_texts: Sequence[str] | None = None, tgt_texts: Sequence[str] | None = None
) -> tuple[int, int]:
    """(index-based errors, text-based errors) of ``pred`` against the identity alignment."""
    gold = np.arange(len(pred))
    err_idx = int((pred != gold).sum())
    if tgt_texts is None:
        return err_idx, err_idx
    t = np.asarray(tgt_texts, dtype=object)
    err_txt = int((t[pred] != t[gold]).sum())
    return err_idx, err_txt


# ---- multi-way folders ----------------------------------------------------------------------
def multiway_files(
    data_dir: str | os.PathLike, langs: Sequence[str] | None = None
) -> dict[str, Path]:
    """``{lang: path}`` for the ``<xxx>.txt`` files of a line-aligned multi-way folder
    (``ud_pud/``, ``flores200/devtest/``); ``sent_ids.txt`` and other names are ignored."""
    d = Path(data_dir)
    if not d.is_dir():
        raise InputError(
            f"{d}: not a directory", hint="pass a folder of line-aligned <lang>.txt files"
        )
    found = {
        m.group(1): p
        for p in sorted(d.iterdir())
        if (m := _LANG_FILE.match(p.name)) and p.is_file()
    }
    if not found:
        raise InputError(f"{d}: no <lang>.txt files", hint="expected e.g. eng.txt, deu.txt, ...")
    if langs:
        missing = [x for x in langs if x not in found]
        if missing:
            raise InputError(
                f"{d}: no file for {', '.join(missing)}", hint=f"available: {', '.join(found)}"
            )
        found = {x: found[x] for x in langs}
    return found


def read_multiway(files: dict[str, Path], n: int | None = None) -> dict[str, list[str]]:
    """Read every file; all must have the same number of lines (first ``n`` kept if given)."""
    from ..io.text import read_lines

    texts = {lang: read_lines(p) for lang, p in files.items()}
    sizes = {len(t) for t in texts.values()}
    if len(sizes) != 1:
        detail = ", ".join(f"{k}={len(v)}" for k, v in texts.items())
        raise InputError(
            f"multi-way files are not line-aligned ({detail})",
            hint="every <lang>.txt must have the same number of lines",
        )
    if n is not None:
        texts = {k: v[:n] for k, v in texts.items()}
    return texts


def embed_multiway(
    encoder, texts: dict[str, list[str]], progress: Progress | None = None, batch_tokens: int = 8192
) -> dict[str, np.ndarray]:
    """Embed every language's sentences: ``{lang: (n, dim) float32}``."""
    progress = progress or null_progress
    return {
        lang: encoder.encode(t, batch_tokens=batch_tokens, progress=progress)
        for lang, t in texts.items()
    }


@dataclass
class XsimResult:
    """Error rates (%) of every language (row, source) against every other (column, target)."""

    langs: list[str]
    n: int
    margin: str | None
    k: int
    matrix: list[list[float | None]]  # index-based; diagonal None
    matrix_text: list[list[float | None]]  # text-based
    average: float  # mean of the off-diagonal index-based errors
    average_text: float
    per_lang: dict[str, dict[str, float]] = field(default_factory=dict)  # as source / as target
    model: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with the metric's definition."""
        d = asdict(self)
        d["metric"] = "xsim error rate, % (100 * wrong alignments / n), exact search"
        d["margin"] = self.margin or "cosine"
        return d


def xsim_from_embeddings(
    embs: dict[str, np.ndarray],
    texts: dict[str, list[str]] | None = None,
    margin: str | None = "ratio",
    k: int = DEFAULT_K,
) -> XsimResult:
    """All-pairs xsim over precomputed, line-aligned embeddings."""
    margin = normalize_margin(margin)
    langs = list(embs)
    if len(langs) < 2:
        raise InputError("xsim needs at least two languages", hint="pass more <lang>.txt files")
    n = len(embs[langs[0]])
    L = len(langs)
    M: list[list[float | None]] = [[None] * L for _ in range(L)]
    MT: list[list[float | None]] = [[None] * L for _ in range(L)]
    for a in range(L):
        for b in range(a + 1, L):
            la, lb = langs[a], langs[b]
            pab, pba = retrieve_both(embs[la], embs[lb], margin=margin, k=k)
            ta = texts.get(la) if texts else None
            tb = texts.get(lb) if texts else None
            e_ab, et_ab = errors(pab, ta, tb)
            e_ba, et_ba = errors(pba, tb, ta)
            M[a][b], MT[a][b] = 100.0 * e_ab / n, 100.0 * et_ab / n
            M[b][a], MT[b][a] = 100.0 * e_ba / n, 100.0 * et_ba / n
    off = [M[a][b] for a in range(L) for b in range(L) if a != b]
    offt = [MT[a][b] for a in range(L) for b in range(L) if a != b]
    per = {}
    for a, la in enumerate(langs):
        row = [M[a][b] for b in range(L) if b != a]
        col = [M[b][a] for b in range(L) if b != a]
        per[la] = {"as_source": float(np.mean(row)), "as_target": float(np.mean(col))}
    return XsimResult(
        langs=langs,
        n=n,
        margin=margin,
        k=k,
        matrix=M,
        matrix_text=MT,
        average=float(np.mean(off)),
        average_text=float(np.mean(offt)),
        per_lang=per,
    )


def eval_xsim(
    model: Any,
    data_dir: str | os.PathLike,
    langs: Sequence[str] | str | None = None,
    margin: str | None = "ratio",
    k: int = DEFAULT_K,
    n: int | None = None,
    progress: ProgressFactory | None = None,
    batch_tokens: int = 8192,
    *,
    device: str = "auto",
    precision: str = "fp32",
) -> XsimResult:
    """xsim error matrix over a multi-way folder, every language against every other: the
    library function behind ``emmax eval xsim``. Files are read and checked first.

    Default margin ``ratio`` with k = 4, index-based, as LASER's ``source/xsim.py``.

    Args:
        model: a built-in name, a model directory, None (the default model) or an Encoder.
        data_dir: a folder of line-aligned ``<lang>.txt`` files.
        langs: languages (list or comma string); None: every ``<lang>.txt``.
        margin: ``ratio``, ``distance``, or None for plain cosine.
        k: the margin's neighbourhood size.
        n: keep only the first n lines of each file.
        progress: a factory ``progress(description, total)`` (see ``console.progress_bar``).
        batch_tokens: padded tokens per encoder batch.
        device, precision: where and how to embed.

    Returns:
        An :class:`XsimResult`.

    Raises:
        InputError: a missing folder, language or file, or files that are not line-aligned.
        ModelLoadError: the model cannot be loaded.
    """
    from ..bitext import load_encoder

    if isinstance(langs, str):
        langs = [x.strip() for x in langs.split(",") if x.strip()]
    files = multiway_files(data_dir, langs or None)
    texts = read_multiway(files, n)
    encoder = load_encoder(model, device, precision)
    with progress_of(progress, "xsim", texts) as adv:
        embs = embed_multiway(encoder, texts, adv, batch_tokens)
    res = xsim_from_embeddings(embs, texts, margin=margin, k=k)
    res.model = dict(encoder.meta)
    return res


def progress_of(progress: ProgressFactory | None, description: str, texts: dict[str, list[str]]):
    """The progress context of embedding every text of a multi-way set."""
    return (progress or no_progress)(description, sum(len(t) for t in texts.values()))
