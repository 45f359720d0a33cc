"""Geometric analysis of the embedding space on a multi-way set (FLORES-200 devtest, UD PUD):
invariance, canonical form, isotropy. Formulas and sources: ``docs/eval.md``.

Notation: L languages, n meanings (line numbers), N = L*n unit vectors v (row-normalised),
S = Σ v, S_l = Σ over language l, s_i = Σ over the L renderings of meaning i.

* invariance: mean cosine of translations (same meaning, different languages) vs mean cosine
  of random cross-lingual pairs (different meaning, different language); and the xsim error.
* canonical form: accuracy of a linear language-ID probe on held-out meanings (lower = more
  language-neutral; chance = 1/L), and the Calinski-Harabasz index of the embeddings grouped
  by meaning (higher = clusters by meaning) and by language (lower = better).
* isotropy: Mu & Viswanath (2018) partition-function ratio min_u Z(u) / max_u Z(u), with
  Z(u) = Σ_v exp(uᵀv) over ±eigenvectors u of VᵀV (also: of the covariance; 1 = isotropic),
  and the mean cosine of random pairs of different meanings (0 for an isotropic space)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..console import ProgressFactory
from ..errors import InputError
from .xsim import (
    embed_multiway,
    multiway_files,
    progress_of,
    read_multiway,
    xsim_from_embeddings,
)

log = logging.getLogger(__name__)


# ---- pure metrics on arrays -----------------------------------------------------------------
def _unit(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)


def invariance_cosines(E: np.ndarray) -> dict[str, float]:
    """E: (L, n, d) aligned embeddings. Mean cosines, computed in closed form from sums:
    ``translation`` (same meaning, different language), ``random_crosslingual`` (different
    meaning, different language), ``random_monolingual`` (different meaning, same language)."""
    L, n, _ = E.shape
    V = _unit(E.reshape(L * n, -1)).reshape(E.shape)
    N = L * n
    self_sum = float((V * V).sum())  # = N for unit vectors
    all_sum = float(np.square(V.sum(axis=(0, 1))).sum())
    lang_sum = float(np.square(V.sum(axis=1)).sum())  # Σ_l ||S_l||²
    mean_sum = float(np.square(V.sum(axis=0)).sum())  # Σ_i ||s_i||²
    out = {}
    out["translation"] = (mean_sum - self_sum) / (n * L * (L - 1)) if L > 1 else float("nan")
    out["random_monolingual"] = (lang_sum - self_sum) / (L * n * (n - 1)) if n > 1 else float("nan")
    cnt = N * N - L * n * n - n * L * L + N
    out["random_crosslingual"] = (
        (all_sum - lang_sum - mean_sum + self_sum) / cnt if cnt > 0 else float("nan")
    )
    cnt_diff = N * N - n * L * L  # pairs of different meaning (any language)
    out["random_any"] = (all_sum - mean_sum) / cnt_diff if cnt_diff > 0 else float("nan")
    return out


def calinski_harabasz(X: np.ndarray, labels: np.ndarray) -> float:
    """CH = [tr(B) / (k - 1)] / [tr(W) / (N - k)] (Calinski & Harabasz 1974)."""
    X = np.asarray(X, dtype=np.float64)
    labels = np.asarray(labels)
    uniq, inv = np.unique(labels, return_inverse=True)
    k, N = len(uniq), len(X)
    if k < 2 or k >= N:
        raise InputError(
            f"Calinski-Harabasz needs 2 <= clusters < points (got {k} clusters, {N} points)"
        )
    mu = X.mean(axis=0)
    counts = np.bincount(inv, minlength=k).astype(np.float64)
    sums = np.zeros((k, X.shape[1]))
    np.add.at(sums, inv, X)
    cent = sums / counts[:, None]
    between = float((counts * np.square(cent - mu).sum(axis=1)).sum())
    within = float(np.square(X - cent[inv]).sum())
    if within == 0:
        return float("inf")
    return (between / (k - 1)) / (within / (N - k))


def partition_ratio(X: np.ndarray, basis: str = "second_moment") -> float:
    """Mu & Viswanath (2018) isotropy: min_u Z(u) / max_u Z(u), Z(u) = Σ_i exp(uᵀx_i), u over
    the eigenvectors (both signs: an eigenvector's sign is arbitrary) of XᵀX
    (``basis="second_moment"``, as in the paper: the common mean direction is one of them) or of
    the covariance of the mean-centred X (``basis="covariance"``). Computed in log space."""
    X = np.asarray(X, dtype=np.float64)
    if basis == "second_moment":
        C = X.T @ X
    elif basis == "covariance":
        C = np.cov(X, rowvar=False)
    else:
        raise InputError(f"unknown basis {basis!r}", hint="use second_moment or covariance")
    _, U = np.linalg.eigh(C)
    P = X @ U  # (N, d) projections
    logz = np.concatenate([_logsumexp(P), _logsumexp(-P)])
    return float(np.exp(logz.min() - logz.max()))


def _logsumexp(P: np.ndarray) -> np.ndarray:
    m = P.max(axis=0)
    return m + np.log(np.exp(P - m).sum(axis=0))


def language_probe(
    X: np.ndarray,
    lang_labels: np.ndarray,
    meaning: np.ndarray,
    test_frac: float = 0.3,
    seed: int = 0,
    l2: float = 1e-3,
    max_iter: int = 200,
) -> dict[str, float]:
    """Multinomial logistic regression predicting the language from an embedding.

    Train and test sets are split by meaning (test meanings are unseen in training), features
    are standardised with the training statistics, L-BFGS on the L2-regularised cross-entropy.
    Returns test accuracy, train accuracy and chance (1 / languages)."""
    import torch

    X = np.asarray(X, dtype=np.float32)
    _, y = np.unique(lang_labels, return_inverse=True)
    n_classes = int(y.max()) + 1
    ids = np.unique(meaning)
    rng = np.random.default_rng(seed)
    test_ids = rng.permutation(ids)[: max(1, round(len(ids) * test_frac))]
    test = np.isin(meaning, test_ids)
    if test.all() or not test.any():
        raise InputError(
            "language probe needs at least two meanings", hint="use more sentences (--n)"
        )
    mu, sd = X[~test].mean(0), X[~test].std(0) + 1e-6
    Xt = torch.from_numpy((X - mu) / sd)
    yt = torch.from_numpy(y.astype(np.int64))
    tr, te = torch.from_numpy(~test), torch.from_numpy(test)
    g = torch.Generator().manual_seed(seed)
    W = (torch.randn(X.shape[1], n_classes, generator=g) * 0.01).requires_grad_()
    b = torch.zeros(n_classes, requires_grad=True)
    opt = torch.optim.LBFGS([W, b], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(Xt[tr] @ W + b, yt[tr]) + l2 * (W * W).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        pred = (Xt @ W + b).argmax(1)
        acc_te = float((pred[te] == yt[te]).float().mean())
        acc_tr = float((pred[tr] == yt[tr]).float().mean())
    return {
        "test_accuracy": acc_te,
        "train_accuracy": acc_tr,
        "chance": 1.0 / n_classes,
        "n_train": int((~test).sum()),
        "n_test": int(test.sum()),
    }


def pca_2d(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First two principal components (numpy SVD of the centred data) and their variance share."""
    X = np.asarray(X, dtype=np.float64)
    Xc = X - X.mean(axis=0)
    _, s, Vt = np.linalg.svd(Xc, full_matrices=False)
    var = s**2 / max(float((s**2).sum()), 1e-300)
    return (Xc @ Vt[:2].T).astype(np.float32), var[:2]


# ---- evaluation -----------------------------------------------------------------------------
@dataclass
class GeometryResult:
    """Invariance, canonical-form and isotropy metrics, 2-D PCA points and the model."""

    langs: list[str]
    n: int  # meanings (lines) per language
    invariance: dict[str, float]
    canonical: dict[str, Any]
    isotropy: dict[str, float]
    model: dict[str, Any] = field(default_factory=dict)
    # for plots (not serialised): 2-D PCA of all N points, with their language and meaning
    points: np.ndarray | None = field(default=None, repr=False)
    point_lang: list[str] | None = field(default=None, repr=False)
    point_meaning: np.ndarray | None = field(default=None, repr=False)
    pca_variance: list[float] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready metrics (without the PCA points)."""
        return {
            "task": "geometry",
            "langs": self.langs,
            "n": self.n,
            "model": self.model,
            "invariance": self.invariance,
            "canonical_form": self.canonical,
            "isotropy": self.isotropy,
            "pca_variance": self.pca_variance,
            "definitions": "docs/eval.md",
        }


def geometry_from_embeddings(
    E: np.ndarray, langs: Sequence[str], seed: int = 0, xsim_margin: str | None = "ratio"
) -> GeometryResult:
    """All metrics from aligned embeddings E (L, n, d)."""
    L, n, d = E.shape
    if L < 2 or n < 3:
        raise InputError(f"geometry needs >= 2 languages and >= 3 sentences (got {L} x {n})")
    X = _unit(E.reshape(L * n, d))
    lang_lab = np.repeat(np.arange(L), n)
    meaning = np.tile(np.arange(n), L)
    inv = invariance_cosines(E)
    xs = xsim_from_embeddings({lg: E[i] for i, lg in enumerate(langs)}, None, margin=xsim_margin)
    invariance = {
        "translation_cosine": inv["translation"],
        "random_crosslingual_cosine": inv["random_crosslingual"],
        "gap": inv["translation"] - inv["random_crosslingual"],
        "random_monolingual_cosine": inv["random_monolingual"],
        "xsim_error": xs.average,
        "xsim_margin": xs.margin or "cosine",
    }
    canonical = {
        "lang_probe": language_probe(X, lang_lab, meaning, seed=seed),
        "ch_by_meaning": calinski_harabasz(X, meaning),
        "ch_by_language": calinski_harabasz(X, lang_lab),
    }
    isotropy = {
        "partition_ratio": partition_ratio(X),
        "partition_ratio_cov": partition_ratio(X, basis="covariance"),
        "random_pair_cosine": inv["random_any"],
    }
    pts, var = pca_2d(X)
    return GeometryResult(
        langs=list(langs),
        n=n,
        invariance=invariance,
        canonical=canonical,
        isotropy=isotropy,
        points=pts,
        point_lang=[langs[i] for i in lang_lab],
        point_meaning=meaning,
        pca_variance=[float(v) for v in var],
    )


def eval_geometry(
    model: Any,
    data_dir: str | os.PathLike,
    langs: Sequence[str] | str | None = None,
    n: int | None = 200,
    seed: int = 0,
    progress: ProgressFactory | None = None,
    batch_tokens: int = 8192,
    *,
    device: str = "auto",
    precision: str = "fp32",
) -> GeometryResult:
    """Invariance, canonical form and isotropy on the first ``n`` lines of a multi-way folder
    (``flores200/devtest``, ``ud_pud``): the library function behind ``emmax eval geometry``.

    Args:
        model: a built-in name, a model directory, None (the default model) or an Encoder.
        data_dir: a folder of line-aligned ``<lang>.txt`` files.
        langs: languages (list or comma string); None: every ``<lang>.txt``.
        n: sentences (first lines) per language.
        seed: seed of the language probe's train/test split.
        progress: a factory ``progress(description, total)`` (see ``console.progress_bar``).
        batch_tokens: padded tokens per encoder batch.
        device, precision: where and how to embed.

    Returns:
        A :class:`GeometryResult`.

    Raises:
        InputError: a missing folder, language or file, misaligned files, or fewer than two
            languages or three sentences.
        ModelLoadError: the model cannot be loaded.
    """
    from ..bitext import load_encoder

    if isinstance(langs, str):
        langs = [x.strip() for x in langs.split(",") if x.strip()]
    files = multiway_files(data_dir, langs or None)
    texts = read_multiway(files, n)
    encoder = load_encoder(model, device, precision)
    with progress_of(progress, "geometry", texts) as adv:
        embs = embed_multiway(encoder, texts, adv, batch_tokens)
    E = np.stack([embs[lg] for lg in files])
    res = geometry_from_embeddings(E, list(files), seed=seed)
    res.model = dict(encoder.meta)
    return res
