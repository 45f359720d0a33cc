"""Hard pair benchmark from FLORES-200 devtest (never trained on): is a pair a translation?

    python bench/hard_pairs.py --cross-model runs/emmax-small-cross/cross \
        --json bench/results/hard_pairs.json

Per language xxx (36 x eng), ``--per-lang`` FLORES lines i are drawn for each kind of pair:

* ``true``: (xxx_i, eng_i), a translation: the right answer is the top rank;
* ``nearest``: (xxx_i, eng_j), j != i the English line nearest to eng_i by the encoder's cosine
  among all 1012 devtest lines (same documents, same topics);
* ``number``, ``name``, ``negation``, ``truncation``: (xxx_i, perturb(eng_i)) with one number
  changed, one capitalised name replaced by another of the devtest, the polarity flipped at the
  first auxiliary, or the sentence cut to 30-75 % of its words (``emmax_cli/perturb.py``);
  lines drawn among those where the perturbation applies.

For all but ``true`` the right answer is "not the top rank". Two deciders: the GMM head on the
cosine embeddings (``argmax`` of its symmetric posterior, what ``emmax rank`` prints), and the
cross scorer (``argmax`` of ``CrossScorer.rank_probs``). The table gives accuracy per kind
(mean over languages and the minimum language), the gain, and the cross scorer's throughput.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, print_table  # noqa: E402

KINDS = ("true", "nearest", "number", "name", "negation", "truncation")


def read_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def build(langs: list[str], per_lang: int, enc, seed: int = 0) -> list[dict]:
    """The pairs: dicts with lang, kind, src, tgt."""
    from emmax_cli import perturb

    root = SHARED / "flores200" / "devtest"
    eng = read_lines(root / "eng.txt")
    e = enc.encode(eng)
    sim = e @ e.T
    np.fill_diagonal(sim, -np.inf)
    nearest = sim.argmax(1)
    names = perturb.name_pool(eng)
    pairs = []
    for lang in langs:
        src = read_lines(root / f"{lang}.txt")
        rng = np.random.default_rng([seed, sum(map(ord, lang))])
        for kind in KINDS:
            if kind in ("true", "nearest"):
                rows = rng.choice(len(eng), per_lang, replace=False)
                for i in rows:
                    tgt = eng[i] if kind == "true" else eng[nearest[i]]
                    pairs.append({"lang": lang, "kind": kind, "src": src[i], "tgt": tgt})
                continue
            got = 0
            for i in rng.permutation(len(eng)):
                t = perturb.perturb(kind, eng[i], rng, names)
                if t is None or t == eng[i]:
                    continue
                pairs.append({"lang": lang, "kind": kind, "src": src[i], "tgt": t})
                got += 1
                if got == per_lang:
                    break
    return pairs


def gmm_top(enc, pairs: list[dict]) -> np.ndarray:
    import torch

    from emmax_cli.rank import load_head_for

    head = load_head_for(enc)
    texts = sorted({p["src"] for p in pairs} | {p["tgt"] for p in pairs})
    where = {t: i for i, t in enumerate(texts)}
    emb = torch.from_numpy(enc.encode(texts))
    a = emb[[where[p["src"]] for p in pairs]]
    b = emb[[where[p["tgt"]] for p in pairs]]
    with torch.no_grad():
        probs = head.rank_probs_pairs(a, b, symmetric=True)
    return (probs.argmax(1) == head.num_ranks - 1).numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="emmax-small", help="encoder + GMM head (baseline)")
    ap.add_argument("--cross-model", default=None, help="model directory with cross_head.*")
    ap.add_argument("--per-lang", type=int, default=50, help="pairs per kind and language")
    ap.add_argument("--langs", nargs="*", default=None, help="default: all 36 FLORES languages")
    ap.add_argument("--json", default=None, help="write the result table here")
    ap.add_argument("--pairs-out", default=None, help="write the pairs and decisions (JSONL)")
    args = ap.parse_args()

    from emmax_cli.models.cross_scorer import CrossScorer
    from emmax_cli.models.encoder import Encoder

    root = SHARED / "flores200" / "devtest"
    langs = args.langs or sorted(p.stem for p in root.glob("*.txt") if p.stem != "eng")
    enc = Encoder.load(args.model, precision="fp32")
    t = time.time()
    pairs = build(langs, args.per_lang, enc)
    print(f"{len(pairs)} pairs over {len(langs)} languages ({time.time() - t:.0f} s)", flush=True)
    gmm = gmm_top(enc, pairs)
    cross, rate, size = None, None, None
    if args.cross_model:
        scorer = CrossScorer.load(args.cross_model, precision="fp32")
        size = sum(f.stat().st_size for f in Path(args.cross_model).glob("cross_head.*"))
        done = [0]
        t = time.time()

        def progress(n: int) -> None:
            done[0] += n
            if done[0] // 2000 != (done[0] - n) // 2000:
                el = time.time() - t
                print(
                    f"  cross: {done[0]}/{len(pairs)} pairs, {done[0] / el:.1f} pairs/s", flush=True
                )

        probs = scorer.rank_probs(
            [p["src"] for p in pairs], [p["tgt"] for p in pairs], progress=progress
        )
        rate = len(pairs) / (time.time() - t)
        cross = probs.argmax(1) == scorer.num_ranks - 1
    kinds = np.array([p["kind"] for p in pairs])
    lang_of = np.array([p["lang"] for p in pairs])

    def acc(top: np.ndarray, kind: str, lang: str | None = None) -> float:
        m = kinds == kind
        if lang:
            m &= lang_of == lang
        right = top[m] if kind == "true" else ~top[m]
        return float(right.mean() * 100) if m.any() else float("nan")

    rows, per_lang = [], {}
    for kind in KINDS:
        g = [acc(gmm, kind, lang) for lang in langs]
        row = [kind, int((kinds == kind).sum()), f"{np.nanmean(g):.1f}", f"{np.nanmin(g):.1f}"]
        if cross is not None:
            c = [acc(cross, kind, lang) for lang in langs]
            row += [
                f"{np.nanmean(c):.1f}",
                f"{np.nanmin(c):.1f}",
                f"{np.nanmean(c) - np.nanmean(g):+.1f}",
            ]
            per_lang[kind] = {
                lang: [round(x, 1), round(y, 1)] for lang, x, y in zip(langs, g, c, strict=True)
            }
        rows.append(row)
    cols = ["kind", "pairs", "GMM acc %", "GMM min lang"]
    if cross is not None:
        cols += ["cross acc %", "cross min lang", "gain (points)"]
    notes = (
        f"FLORES-200 devtest, {len(langs)} languages x eng, {args.per_lang} pairs per kind and "
        "language; accuracy of the top-rank decision (true: top rank; others: not top), mean "
        f"over languages. Baseline: GMM head of {args.model} on cosine embeddings."
    )
    if cross is not None:
        notes += (
            f" Cross scorer: {args.cross_model}, {size / 1e6:.1f} MB on disk, "
            f"{rate:.1f} pairs/s on this machine while scoring the benchmark."
        )
    print_table("Hard pairs: GMM head vs cross scorer", cols, rows, notes, args.json)
    if args.json and per_lang:
        d = json.loads(Path(args.json).read_text())
        d["per_language"] = per_lang
        d["cross_pairs_per_s"] = rate
        d["cross_bytes"] = size
        Path(args.json).write_text(json.dumps(d, indent=1, ensure_ascii=False))
    if args.pairs_out:
        with open(args.pairs_out, "w", encoding="utf-8") as f:
            for i, p in enumerate(pairs):
                rec = dict(p, gmm_top=bool(gmm[i]))
                if cross is not None:
                    rec["cross_top"] = bool(cross[i])
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
