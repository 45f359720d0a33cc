"""The evaluation behind the emmax-small model card (run from the repository root).

    python models/emmax-small/evaluate.py tatoeba RUN/ctl --out ctl-tatoeba.json
    python models/emmax-small/evaluate.py gmm RUN/em --dev RUN/dev.tsv --out em-gmm.json

tatoeba: XTREME-36 Tatoeba, xx->eng and eng->xx, exact cosine nearest neighbour, fp32
(emmax_cli.eval.tatoeba.eval_tatoeba), compared per language with
../shared/docs/base-tatoeba.json (the base, same protocol).

gmm: the GMM head on held-out parallel pairs (pairs held out of the training files, <out>/dev.tsv,
and FLORES-200 devtest xx-eng, an evaluation set never trained on): share of true translations
given the top rank, share of random pairs given rank 0, and the mean expected rank of partial
pairs whose English side has a growing share of its words replaced by words of other sentences
(or dropped), which should fall monotonically."""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
FRACTIONS = (0.0, 0.25, 0.5, 0.75, 1.0)
FLORES_LANGS = ("deu", "fra", "rus", "cmn", "hin", "swh", "kat", "jav", "tur", "ara")


def tatoeba(model: str, out: str | None) -> dict:
    from emmax_cli.eval.tatoeba import eval_tatoeba
    from emmax_cli.models.encoder import Encoder

    enc = Encoder.load(model, device="cpu", precision="fp32")
    res = eval_tatoeba(enc, SHARED / "data" / "tatoeba" / "v1", "xtreme")
    base = json.loads((SHARED / "docs" / "base-tatoeba.json").read_text())
    rows = {}
    for r in res.languages:
        b = base[r.lang]
        rows[r.lang] = {
            "xx2eng": r.xx2eng,
            "eng2xx": r.eng2xx,
            "base_xx2eng": b["xx2eng"],
            "base_eng2xx": b["eng2xx"],
            "d_xx2eng": r.xx2eng - b["xx2eng"],
            "d_eng2xx": r.eng2xx - b["eng2xx"],
        }
    mean = {k: float(np.mean([v[k] for v in rows.values()])) for k in next(iter(rows.values()))}
    worst = min(rows, key=lambda lang: rows[lang]["d_xx2eng"])
    summary = {
        "model": model,
        "languages": len(rows),
        "mean": mean,
        "worst_xx2eng": [worst, rows[worst]["d_xx2eng"]],
        "per_language": rows,
    }
    print(
        f"{model}: xx->eng {100 * mean['xx2eng']:.2f} (base {100 * mean['base_xx2eng']:.2f}, "
        f"{100 * mean['d_xx2eng']:+.2f}), eng->xx {100 * mean['eng2xx']:.2f} "
        f"(base {100 * mean['base_eng2xx']:.2f}, {100 * mean['d_eng2xx']:+.2f}); worst xx->eng "
        f"{worst} {100 * rows[worst]['d_xx2eng']:+.2f}"
    )
    if out:
        Path(out).write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def _perturb(text: str, frac: float, pool: list[str], rng: random.Random, mode: str) -> str:
    words = text.split()
    k = round(frac * len(words))
    idx = set(rng.sample(range(len(words)), k))
    if mode == "drop":
        kept = [w for i, w in enumerate(words) if i not in idx]
        return " ".join(kept) if kept else rng.choice(pool).split()[0]
    return " ".join(
        rng.choice(rng.choice(pool).split()) if i in idx else w for i, w in enumerate(words)
    )


def gmm(model: str, dev: str | None, out: str | None, n_flores: int = 100) -> dict:
    import torch

    from emmax_cli.models.encoder import Encoder
    from emmax_cli.models.gmm import GMMHead

    enc = Encoder.load(model, device="cpu", precision="fp32")
    head = GMMHead.from_dir(model, dim=enc.dim)
    N = head.num_ranks
    sets: dict[str, tuple[list[str], list[str]]] = {}
    if dev:
        rows = [line.split("\t") for line in Path(dev).read_text(encoding="utf-8").splitlines()]
        sets["held-out train pairs"] = ([r[0] for r in rows], [r[1] for r in rows])
    fl = SHARED / "data" / "flores200" / "devtest"
    eng = (fl / "eng.txt").read_text(encoding="utf-8").splitlines()
    xx, en = [], []
    for lang in FLORES_LANGS:
        lines = (fl / f"{lang}.txt").read_text(encoding="utf-8").splitlines()
        xx += lines[:n_flores]
        en += eng[:n_flores]
    sets["FLORES-200 devtest xx-eng"] = (xx, en)
    report = {"model": model, "num_ranks": N, "rank_means": head.rank_means.tolist(), "sets": {}}
    for name, (a_txt, b_txt) in sets.items():
        rng = random.Random(0)
        a = torch.from_numpy(enc.encode(a_txt))
        b = torch.from_numpy(enc.encode(b_txt))
        with torch.no_grad():
            p_true = head.rank_probs_pairs(a, b)
            perm = torch.tensor(rng.sample(range(len(b_txt)), len(b_txt)))
            same = perm == torch.arange(len(b_txt))
            perm[same] = (perm[same] + 1) % len(b_txt)
            p_rand = head.rank_probs_pairs(a, b[perm])
        r = {
            "pairs": len(a_txt),
            "true_top_rank": float((p_true.argmax(1) == N - 1).float().mean()),
            "random_rank0": float((p_rand.argmax(1) == 0).float().mean()),
            "true_rank_hist": torch.bincount(p_true.argmax(1), minlength=N).tolist(),
            "random_rank_hist": torch.bincount(p_rand.argmax(1), minlength=N).tolist(),
            "partial": {},
        }
        for mode in ("replace", "drop"):
            curve = []
            for f in FRACTIONS:
                pert = [_perturb(t, f, b_txt, rng, mode) for t in b_txt]
                pb = torch.from_numpy(enc.encode(pert))
                with torch.no_grad():
                    pp = head.rank_probs_pairs(a, pb)
                curve.append(
                    {
                        "fraction": f,
                        "mean_expected_rank": float(GMMHead.expected_rank(pp).mean()),
                        "mean_argmax_rank": float(pp.argmax(1).float().mean()),
                        "mean_cosine": float(torch.nn.functional.cosine_similarity(a, pb).mean()),
                    }
                )
            er = [c["mean_expected_rank"] for c in curve]
            r["partial"][mode] = {
                "curve": curve,
                "monotonic": all(x > y for x, y in zip(er, er[1:], strict=False)),
            }
        report["sets"][name] = r
        print(
            f"{name}: top rank for true pairs {100 * r['true_top_rank']:.1f}%, "
            f"rank 0 for random pairs "
            f"{100 * r['random_rank0']:.1f}%, expected rank replace "
            + " ".join(f"{c['mean_expected_rank']:.2f}" for c in r["partial"]["replace"]["curve"])
            + f" (monotonic: {r['partial']['replace']['monotonic']}), drop "
            + " ".join(f"{c['mean_expected_rank']:.2f}" for c in r["partial"]["drop"]["curve"])
            + f" (monotonic: {r['partial']['drop']['monotonic']})"
        )
    if out:
        Path(out).write_text(json.dumps(report, indent=1) + "\n")
    return report


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("what", choices=["tatoeba", "gmm"])
    ap.add_argument("model")
    ap.add_argument(
        "--dev", default=None, help="held-out pairs TSV (xx, eng[, lang]), e.g. RUN/dev.tsv"
    )
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    sys.path.insert(0, str(REPO))
    if a.what == "tatoeba":
        tatoeba(a.model, a.out)
    else:
        gmm(a.model, a.dev, a.out)


if __name__ == "__main__":
    main()
