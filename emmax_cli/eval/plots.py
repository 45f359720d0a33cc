"""Plots for ``emmax eval`` (matplotlib: the optional ``plot`` extra, imported lazily).

* :func:`plot_tatoeba`: per-language accuracy bars, xx->eng and eng->xx, sorted by their mean.
* :func:`plot_geometry`: 2-D PCA of multi-way sentences, coloured by language (left) and by
  meaning (right)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EmmaxError


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise EmmaxError("plotting needs matplotlib", hint="pip install 'emmax[plot]'") from None
    return plt


def _save(fig, path: str | os.PathLike) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp")
    fig.savefig(tmp, dpi=110, bbox_inches="tight", format=p.suffix.lstrip(".") or "png")
    os.replace(tmp, p)
    return p


def plot_tatoeba(result: Any, path: str | os.PathLike, title: str | None = None) -> Path:
    """Bar chart of a :class:`~emmax_cli.eval.tatoeba.TatoebaResult` (or its ``to_dict()``)."""
    plt = _pyplot()
    d = result.to_dict() if hasattr(result, "to_dict") else result
    rows = sorted(d["languages"].values(), key=lambda r: -(r["xx2eng"] + r["eng2xx"]))
    langs = [r["lang"] for r in rows]
    a = np.array([r["xx2eng"] for r in rows]) * 100
    b = np.array([r["eng2xx"] for r in rows]) * 100
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.32 * len(rows) + 1.5), 4.2))
    w = 0.4
    ax.bar(x - w / 2, a, w, label="xx→eng", color="#3b75af")
    ax.bar(x + w / 2, b, w, label="eng→xx", color="#ef8636")
    for key, style in (("xtreme36", "--"), ("all", ":")):
        av = d.get("averages", {}).get(key)
        if av and (key == "xtreme36" or "xtreme36" not in d["averages"] or av["n_langs"] != 36):
            ax.axhline(
                av["mean"] * 100,
                color="0.3",
                ls=style,
                lw=1,
                label=f"{'XTREME-36' if key == 'xtreme36' else 'all ' + str(av['n_langs'])} "
                f"mean {av['mean'] * 100:.1f}",
            )
    ax.set_xticks(x, langs, rotation=90, fontsize=8)
    ax.set_xlim(-0.7, len(rows) - 0.3)
    ax.set_ylim(0, 100)
    ax.set_ylabel("accuracy (%)")
    ret = d.get("retrieval", "cosine")
    model = d.get("model", {}).get("model", "")
    ax.set_title(title or f"Tatoeba accuracy, {model} ({ret})", loc="left")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), fontsize=8, ncol=3, frameon=False)
    fig.tight_layout()
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def plot_geometry(
    result: Any, path: str | os.PathLike, title: str | None = None, n_highlight: int = 12
) -> Path:
    """Two panels of the 2-D PCA of a :class:`~emmax_cli.eval.geometry.GeometryResult`:
    points coloured by language, and the same points with ``n_highlight`` meanings in colour
    (each meaning's renderings joined to their centroid; the other meanings grey)."""
    plt = _pyplot()
    if getattr(result, "points", None) is None:
        raise EmmaxError(
            "this geometry result holds no projected points",
            hint="pass the result of eval_geometry(), not its JSON",
        )
    P = np.asarray(result.points)
    langs = list(result.langs)
    lab = np.array(result.point_lang)
    mean_id = np.asarray(result.point_meaning)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5.8))
    cmap = plt.get_cmap("tab10" if len(langs) <= 10 else "tab20")
    for i, lg in enumerate(langs):
        m = lab == lg
        ax1.scatter(
            P[m, 0], P[m, 1], s=9, alpha=0.75, color=cmap(i % cmap.N), label=lg, linewidths=0
        )
    ax1.set_title("coloured by language")
    ax1.legend(
        fontsize=8, markerscale=2, loc="best", ncol=2 if len(langs) > 8 else 1, framealpha=0.85
    )

    ax2.scatter(P[:, 0], P[:, 1], s=6, color="0.82", linewidths=0, label="other meanings")
    ids = np.unique(mean_id)
    pick = ids[np.linspace(0, len(ids) - 1, min(n_highlight, len(ids))).astype(int)]
    cm2 = plt.get_cmap("tab20")
    for j, sid in enumerate(pick):
        m = mean_id == sid
        c = P[m].mean(axis=0)
        col = cm2(j % cm2.N)
        for p in P[m]:
            ax2.plot([c[0], p[0]], [c[1], p[1]], color=col, lw=0.6, alpha=0.7)
        ax2.scatter(P[m, 0], P[m, 1], s=16, color=col, linewidths=0)
        ax2.annotate(f"#{int(sid)}", c, fontsize=7, color="0.15")
    ax2.set_title(
        f"coloured by meaning ({len(pick)} of {len(ids)} sentences; lines join translations)"
    )
    var = result.pca_variance or [float("nan")] * 2
    for ax in (ax1, ax2):
        ax.set_xlabel(f"PC1 ({var[0] * 100:.1f}% var)")
        ax.set_ylabel(f"PC2 ({var[1] * 100:.1f}% var)")
        ax.grid(alpha=0.2)
    model = (result.model or {}).get("model", "")
    fig.suptitle(title or f"PCA of {len(langs)} languages x {result.n} sentences, {model}")
    fig.tight_layout()
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)
