"""A BUCC-like mining benchmark from FLORES-200 devtest: few sentences have a partner.

    python bench/bucc_flores.py --p 0.05 0.5 --json bench/results/bucc_flores.json

Per language xxx (FLORES-200 devtest, never trained on) and share p:

* FLORES devtest is in document order (Wikinews, Wikijunior and Wikivoyage articles of a few
  consecutive sentences); it is cut into pseudo-documents of ``--doc-lines`` lines.
* Documents are drawn at random (``emmax_cli.calibration.comparable_rows``, the sampler of
  ``emmax calibrate``); each sentence of a drawn document goes either to the source
  side (xxx) or, as a same-document distractor, to the English side, until the source side has
  N sentences. A share p of the source sentences keep their English translation on the English
  side (the gold pairs); the others have none.
* The English side is filled to 2N lines with English sentences of other documents.

So a source sentence without a partner sits among its own document's other sentences, the
hardest distractors a real comparable corpus has. Mining runs with ``--src xxx --tgt eng``
(language ID on, as a user would run it). Both sides are embedded once per language
(cached in ``--cache``) and written as embedding Parquet files with their text, then mined
with ``emmax_cli.bitext.mine_files`` and the options of ``emmax mine`` (defaults unless
``--mine-opt`` says otherwise). ``--write DIR`` also writes the samples as text files for
``emmax mine`` on the command line. Prints precision, recall and F1 per language.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).parent))
from common import SHARED, print_table  # noqa: E402

FLORES = SHARED / "flores200" / "devtest"


def languages() -> list[str]:
    return sorted(p.stem for p in FLORES.glob("*.txt") if p.stem != "eng")


def embedded(lang: str, enc, cache: Path) -> tuple[list[str], np.ndarray]:
    """FLORES devtest lines of ``lang`` and their embeddings, cached in ``cache`` per model
    (shared with noisy_mine.py)."""
    texts = (FLORES / f"{lang}.txt").read_text(encoding="utf-8").splitlines()
    f = cache / f"{enc.config.checksum[:12]}.{lang}.npy"
    if f.exists():
        emb = np.load(f)
        if len(emb) == len(texts):
            return texts, emb
    print(f"embedding FLORES {lang} ({len(texts)} lines)", file=sys.stderr)
    emb = enc.encode(texts)
    cache.mkdir(parents=True, exist_ok=True)
    np.save(f, emb)
    return texts, emb


def _write_side(path: Path, rows, texts, emb, checksum: str, lang: str) -> None:
    from emmax_cli.io.parquet import EmbeddingWriter

    with EmbeddingWriter(path, emb.shape[1], meta={"model_checksum": checksum}, lang=lang) as w:
        w.write(rows, emb[rows], [texts[i] for i in rows])


def run_one(lang, p, args, enc, eng, workdir: Path, opts: dict) -> dict:
    from emmax_cli.bitext import mine_files
    from emmax_cli.calibration import comparable_rows

    texts, emb = embedded(lang, enc, args.cache)
    src, tgt, n_gold = comparable_rows(len(texts), args.n, p, args.doc_lines, args.seed)
    sp, tp = workdir / f"{lang}.{p}.src.parquet", workdir / f"eng.{lang}.{p}.tgt.parquet"
    _write_side(sp, src, texts, emb, enc.config.checksum, lang)
    _write_side(tp, tgt, eng[0], eng[1], enc.config.checksum, "eng")
    if args.write:
        args.write.mkdir(parents=True, exist_ok=True)
        stem = args.write / f"{lang}-eng.p{p}"
        Path(f"{stem}.{lang}").write_text("".join(texts[i] + "\n" for i in src), "utf-8")
        Path(f"{stem}.eng").write_text("".join(eng[0][i] + "\n" for i in tgt), "utf-8")
        Path(f"{stem}.gold").write_text(
            "".join(
                f"{r}\t{int(np.flatnonzero(tgt == s)[0])}\n"
                for r, s in enumerate(src)
                if s in set(tgt.tolist())
            ),
            "utf-8",
        )
    t0 = time.perf_counter()
    res = mine_files(sp, tp, model=enc, **{"src_lang": lang, "tgt_lang": "eng", **opts})
    secs = time.perf_counter() - t0
    s_ids = res.src.ids[res.pairs.src_idx]
    t_ids = res.tgt.ids[res.pairs.tgt_idx]
    tp_ = int((s_ids == t_ids).sum())
    pred = len(s_ids)
    prec = tp_ / pred if pred else 1.0
    rec = tp_ / n_gold if n_gold else 1.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    return {
        "lang": lang,
        "p": p,
        "gold": n_gold,
        "mined": pred,
        "correct": tp_,
        "precision": prec,
        "recall": rec,
        "f1": f1,
        "seconds": secs,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-m", "--model", default=None)
    ap.add_argument("--langs", nargs="*", default=None, help="default: all 36")
    ap.add_argument("--p", type=float, nargs="+", default=[0.05, 0.5])
    ap.add_argument("--n", type=int, default=300, help="source sentences per sample")
    ap.add_argument("--doc-lines", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/emmax-bench-cache"))
    ap.add_argument("--write", type=Path, default=None, help="also write text samples here")
    ap.add_argument(
        "--mine-opt",
        action="append",
        default=[],
        help="KEY=VALUE passed to mine_files, e.g. threshold=1.1 or min_rank=None",
    )
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import tempfile

    from emmax_cli.models.encoder import Encoder

    opts = {}
    for kv in args.mine_opt:
        k, v = kv.split("=", 1)
        try:
            opts[k] = json.loads(v)
        except json.JSONDecodeError:
            opts[k] = v
    enc = Encoder.load(args.model)
    eng = embedded("eng", enc, args.cache)
    rows, results = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for p in args.p:
            for lang in args.langs or languages():
                r = run_one(lang, p, args, enc, eng, Path(tmp), opts)
                results.append(r)
                rows.append(
                    [
                        f"{lang}-eng",
                        p,
                        r["gold"],
                        r["mined"],
                        f"{r['precision']:.3f}",
                        f"{r['recall']:.3f}",
                        f"{r['f1']:.3f}",
                    ]
                )
                print(*rows[-1], file=sys.stderr)
    for p in args.p:
        sel = [r for r in results if r["p"] == p]
        for key in ("precision", "recall", "f1"):
            vals = [r[key] for r in sel]
            rows.append([f"min {key}", p, "", "", "", "", f"{min(vals):.3f}"])
        rows.append(["mean F1", p, "", "", "", "", f"{np.mean([r['f1'] for r in sel]):.3f}"])
    notes = (
        f"model {enc.config.name}; N = {args.n} source sentences, 2N English lines, "
        f"pseudo-documents of {args.doc_lines} lines, seed {args.seed}; mine options "
        f"{opts or 'defaults'}"
    )
    print_table(
        "BUCC-like mining on FLORES-200 devtest",
        ["pair", "p", "gold", "mined", "precision", "recall", "F1"],
        rows,
        notes,
        args.json,
    )


if __name__ == "__main__":
    main()
