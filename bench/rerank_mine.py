"""``mine --rerank`` on the noisy mining benchmark: precision at equal recall against margin alone.

    python bench/rerank_mine.py --cross-model runs/emmax-small-cross/cross \
        --json bench/results/rerank_mine.json

The noisy sides are those of bench/noisy_mine.py (FLORES-200 devtest true pairs plus copies,
wrong-language targets, boilerplate, truncated translations, near-duplicates and unrelated
lines; see its docstring for how each pair is counted). Per language:

* ``margin``: margin alone at the model's threshold (no filters, no rank filter: LASER);
* ``margin + rerank``: those pairs, kept only where the cross scorer gives the top rank a
  probability >= ``--min-prob`` (what ``emmax mine --no-filters --rerank`` does);
* ``margin @ equal recall``: margin alone at the highest threshold that still finds as many
  true pairs as the reranked output (the best margin can do at that recall);
* ``default`` and ``default + rerank``: the same with emmax's default filters and rank filter.

Precision = true pairs found / pairs output (every noise pair counts as an error).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import noisy_mine as nm  # noqa: E402
from common import print_table  # noqa: E402


def rerank(scorer, sample, src_lines, tgt_lines, min_prob: float) -> np.ndarray:
    """Which mined pairs the cross scorer keeps."""
    if not len(src_lines):
        return np.zeros(0, bool)
    probs = scorer.rank_probs(
        [sample.src_text[a] for a in src_lines], [sample.tgt_text[b] for b in tgt_lines]
    )
    return probs[:, -1] >= min_prob


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cross-model", required=True, help="model directory with cross_head.*")
    ap.add_argument("--langs", nargs="+", default=nm.DEFAULT_LANGS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--true", type=int, default=400)
    ap.add_argument("--per-kind", type=int, default=40)
    ap.add_argument("--boilerplate", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--min-prob", type=float, default=0.5)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/emmax-bench-cache"))
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    args.write, args.score = None, False

    from emmax_cli.bitext import mine_files
    from emmax_cli.models.cross_scorer import CrossScorer

    scorer = CrossScorer.load(args.cross_model, precision="fp32")
    enc = scorer.encoder
    totals: dict[str, Counter] = {}
    rows = []
    kinds_removed: dict[str, Counter] = {"margin": Counter(), "rerank": Counter()}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for lang in args.langs:
            t0 = time.perf_counter()
            sample = nm.build(lang, args, enc)
            sp, tp = work / f"{lang}.src.parquet", work / f"{lang}.tgt.parquet"
            nm.write_side(sp, sample.src_text, sample.src_emb, enc.config.checksum, lang)
            nm.write_side(tp, sample.tgt_text, sample.tgt_emb, enc.config.checksum, "eng")
            line = {}
            for mode in ("margin", "default"):
                kw = nm.mine_kwargs(mode, lang, True)
                res = mine_files(sp, tp, model=enc, **kw)
                s_l, t_l = nm.pair_lines(res, res.pairs)
                summ = nm.summarize(sample, s_l, t_l)
                keep = rerank(scorer, sample, s_l, t_l, args.min_prob)
                summ_r = nm.summarize(sample, s_l[keep], t_l[keep])
                line[mode] = (summ["true"], summ["output"])
                line[mode + "+rerank"] = (summ_r["true"], summ_r["output"])
                if mode == "margin":
                    margin_res = res
                    for k, v in summ["items"].items():
                        kinds_removed["margin"][k] += v
                    for k, v in summ_r["items"].items():
                        kinds_removed["rerank"][k] += v
            sw = nm.sweep(sample, margin_res, line["margin+rerank"][0])
            line["margin@recall"] = (sw["true"], sw["output"])
            for k, (t, o) in line.items():
                totals.setdefault(k, Counter()).update({"true": t, "output": o})
            totals.setdefault("n_true", Counter())["n"] += sample.n_true

            def p(k, line=line, n=sample.n_true):
                t, o = line[k]
                return f"{t / max(o, 1):.3f} / {t / n:.3f}"

            rows.append(
                [
                    lang,
                    p("margin"),
                    p("margin+rerank"),
                    p("margin@recall"),
                    p("default"),
                    p("default+rerank"),
                ]
            )
            print(f"{lang}: {rows[-1][1:]} ({time.perf_counter() - t0:.0f} s)", flush=True)
    n = totals["n_true"]["n"]

    def tot(k):
        t, o = totals[k]["true"], totals[k]["output"]
        return f"{t / max(o, 1):.3f} / {t / n:.3f}"

    rows.append(
        [
            "all",
            tot("margin"),
            tot("margin+rerank"),
            tot("margin@recall"),
            tot("default"),
            tot("default+rerank"),
        ]
    )
    cols = [
        "lang",
        "margin P / R",
        "margin+rerank P / R",
        "margin @ equal recall P / R",
        "default P / R",
        "default+rerank P / R",
    ]
    noise = ", ".join(
        f"{k} {kinds_removed['margin'][k]}->{kinds_removed['rerank'][k]}"
        for k in nm.KINDS
        if kinds_removed["margin"][k]
    )
    notes = (
        f"Noisy FLORES-200 sides of bench/noisy_mine.py ({args.true} true pairs, "
        f"{args.per_kind} items per noise kind per language); rerank keeps P(top rank) >= "
        f"{args.min_prob} from {args.cross_model}. Noise items output by margin alone -> after "
        f"rerank: {noise}."
    )
    print_table("mine --rerank: precision at equal recall", cols, rows, notes, args.json)


if __name__ == "__main__":
    main()
