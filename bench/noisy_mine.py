"""Noisy mining benchmark from FLORES-200 devtest: how much injected noise the default
``emmax mine`` filters remove, and how many true pairs they cost.

    python bench/noisy_mine.py --json bench/results/noisy_mine.json

Per language pair xxx-eng (``--langs``, default deu fra rus cmn swh tam), a source file (xxx)
and a target file (English) are built from FLORES-200 devtest (line i of every language is a
translation of line i); each side is shuffled on its own, so the alignment is unknown:

* ``true``: ``--true`` FLORES lines on both sides (the pairs a miner should find);
* ``copy``: a source sentence whose target side holds the same sentence verbatim
  (untranslated);
* ``wrong_lang``: a source sentence whose target side is its translation in a third language
  (``THIRD``), not English;
* ``boilerplate``: short web boilerplate pairs ("Alle Rechte vorbehalten." / "All rights
  reserved.", ...), each repeated ``--repeats`` times at random positions on both sides; for
  languages without hand-written boilerplate, the shortest FLORES lines are used instead;
* ``truncated``: a source sentence whose only target is its English translation cut to its
  first 40-60 % of words;
* ``near_duplicate``: a true pair repeated with only digits, punctuation and case changed on
  both sides (a number changed, the final punctuation removed, the first letter lower-cased);
* ``unrelated``: source and target sentences of different FLORES lines, with no counterpart.

FLORES lines are embedded once per language (cached in ``--cache``, shared with
bench/bucc_flores.py); the other texts (truncations, boilerplate, near-duplicates) with
``Encoder.encode``. Both sides are written as embedding Parquet files with their text and
mined three times with ``emmax_cli.bitext.mine_files``: margin alone (no filters, no rank
filter, the model's default threshold: LASER), margin + ``min_rank`` only, and the default
``emmax mine`` (filters + ``min_rank`` + language ID of both sides).

Counting. A noise item is *output* when a kept pair involves its source line (copy,
wrong_lang, truncated, unrelated source lines), its target line (unrelated target lines), a
line of either side (boilerplate), or when its true pair's group (original and modified lines)
has a second kept pair besides the true one (near_duplicate). A true pair is *found* when a
kept pair joins its source (original or near-duplicate) to its target (original or
near-duplicate); precision = found true pairs / all kept pairs (noise counts as errors).

Tables: noise removed per kind (before = margin alone, after = default), with the filter that
removed each pair; precision of margin + min_rank (and of the default) against margin alone
at a threshold swept to the same recall; per language the share removed; and (unless
``--no-score``) ``emmax score`` on the same pairs written as one aligned ``src<TAB>tgt`` file
per language (``score_files``, defaults): recall and precision of its drop verdict per kind.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import re
import sys
import tempfile
import time
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).parent))
from bucc_flores import embedded  # noqa: E402  (one FLORES embedding cache)
from common import SHARED, print_table  # noqa: E402

FLORES = SHARED / "flores200" / "devtest"
DEFAULT_LANGS = ["deu", "fra", "rus", "cmn", "swh", "tam"]
KINDS = ["copy", "wrong_lang", "boilerplate", "truncated", "near_duplicate", "unrelated"]
# the third language of the wrong_lang targets (a FLORES language other than xxx and eng)
THIRD = {"deu": "fra", "fra": "deu", "rus": "bul", "cmn": "jpn", "swh": "fra", "tam": "hin"}

# short web boilerplate, line b of each list a translation of line b of "eng"
BOILERPLATE = {
    "eng": ["All rights reserved.", "Click here", "Back to top", "Read more",
            "Share this article", "Privacy policy", "Terms of use", "Sign in"],
    "deu": ["Alle Rechte vorbehalten.", "Hier klicken", "Zurück zum Seitenanfang",
            "Weiterlesen", "Diesen Artikel teilen", "Datenschutzerklärung",
            "Nutzungsbedingungen", "Anmelden"],
    "fra": ["Tous droits réservés.", "Cliquez ici", "Retour en haut de la page",
            "Lire la suite", "Partager cet article", "Politique de confidentialité",
            "Conditions d'utilisation", "Se connecter"],
    "rus": ["Все права защищены.", "Нажмите здесь", "Наверх", "Читать далее",
            "Поделиться статьёй", "Политика конфиденциальности", "Условия использования",
            "Войти"],
    "cmn": ["版权所有。", "点击这里", "返回顶部", "阅读更多", "分享这篇文章", "隐私政策",
            "使用条款", "登录"],
    "swh": ["Haki zote zimehifadhiwa.", "Bofya hapa", "Rudi juu", "Soma zaidi",
            "Shiriki makala hii", "Sera ya faragha", "Masharti ya matumizi", "Ingia"],
    "tam": ["அனைத்து உரிமைகளும் பாதுகாக்கப்பட்டவை.", "இங்கே கிளிக் செய்யவும்",
            "மேலே செல்ல", "மேலும் படிக்க", "இந்தக் கட்டுரையைப் பகிரவும்",
            "தனியுரிமைக் கொள்கை", "பயன்பாட்டு விதிமுறைகள்", "உள்நுழைக"],
}  # fmt: skip
GROUP_KINDS = ("true", "near_duplicate")  # lines of a true pair's group
_FINAL_PUNCT = ".!?。！？;:…»\"'”’)"


# ---- construction ---------------------------------------------------------------------------
@dataclass
class Sample:
    """One noisy pair of sides: per line, its text, its embedding and its label
    ``(kind, item)`` (item: the FLORES line for true/near_duplicate/copy/wrong_lang/truncated/
    unrelated, the boilerplate number for boilerplate)."""

    lang: str
    third: str
    src_text: list[str] = field(default_factory=list)
    src_emb: list[np.ndarray] = field(default_factory=list)
    src_label: list[tuple[str, int]] = field(default_factory=list)
    tgt_text: list[str] = field(default_factory=list)
    tgt_emb: list[np.ndarray] = field(default_factory=list)
    tgt_label: list[tuple[str, int]] = field(default_factory=list)
    items: dict[str, int] = field(default_factory=dict)  # noise items per kind
    n_true: int = 0

    def add(self, side: str, text: str, emb: np.ndarray, kind: str, item: int) -> None:
        getattr(self, f"{side}_text").append(text)
        getattr(self, f"{side}_emb").append(emb)
        getattr(self, f"{side}_label").append((kind, int(item)))

    def shuffled(self, rng: np.random.Generator) -> Sample:
        out = Sample(self.lang, self.third, items=dict(self.items), n_true=self.n_true)
        for side in ("src", "tgt"):
            order = rng.permutation(len(getattr(self, f"{side}_text")))
            for name in ("text", "emb", "label"):
                vals = getattr(self, f"{side}_{name}")
                setattr(out, f"{side}_{name}", [vals[i] for i in order])
        return out


def flores_lines(lang: str) -> list[str]:
    return (FLORES / f"{lang}.txt").read_text(encoding="utf-8").splitlines()


def third_language(lang: str) -> str:
    if lang in THIRD:
        return THIRD[lang]
    return next(x for x in ("fra", "deu", "spa", "rus") if x != lang)


def truncate(text: str, frac: float) -> str:
    """The first ``frac`` of the words of ``text`` (at least one, at most all but one)."""
    words = text.split()
    keep = min(max(1, round(frac * len(words))), max(1, len(words) - 1))
    return " ".join(words[:keep])


def perturb(text: str) -> str:
    """``text`` with only digits, punctuation and case changed: the last digit of the first
    number incremented, the final punctuation removed (or a period added), the first letter
    lower-cased. Equal to ``text`` after ``filters.normalize``."""
    t = text
    m = re.search(r"\d+", t)
    if m:
        d = m.end() - 1
        t = t[:d] + str((int(t[d]) + 1) % 10) + t[d + 1 :]
    stripped = t.rstrip()
    if stripped and stripped[-1] in _FINAL_PUNCT:
        t = stripped.rstrip(_FINAL_PUNCT)
    else:
        t = stripped + "."
    for i, ch in enumerate(t):
        if ch.isalpha():
            if ch.lower() != ch and len(ch.lower()) == 1:  # not "İ" -> "i̇"
                t = t[:i] + ch.lower() + t[i + 1 :]
            break
    return t


def build(lang: str, args, enc) -> Sample:
    """The noisy sample of ``lang``-eng, shuffled; see the module docstring."""
    rng = np.random.default_rng([args.seed, zlib.crc32(lang.encode())])
    third = third_language(lang)
    x_txt, x_emb = embedded(lang, enc, args.cache)
    e_txt, e_emb = embedded("eng", enc, args.cache)
    t_txt, t_emb = embedded(third, enc, args.cache)
    n_lines = len(e_txt)
    assert len(x_txt) == len(t_txt) == n_lines, "FLORES files of different lengths"
    s = Sample(lang, third)

    # boilerplate: hand-written where available, else the shortest FLORES lines
    if lang in BOILERPLATE:
        bp_idx = np.array([], np.int64)
        bp = list(zip(BOILERPLATE[lang], BOILERPLATE["eng"], strict=True))[: args.boilerplate]
        bp_x = enc.encode([a for a, _ in bp])
        bp_e = enc.encode([b for _, b in bp])
    else:
        bp_idx = np.argsort([len(t) for t in e_txt], kind="stable")[: args.boilerplate]
        bp = [(x_txt[i], e_txt[i]) for i in bp_idx]
        bp_x, bp_e = x_emb[bp_idx], e_emb[bp_idx]

    free = rng.permutation(np.setdiff1d(np.arange(n_lines), bp_idx))
    n = args.per_kind
    sizes = {
        "true": args.true,
        "copy": n,
        "wrong_lang": n,
        "truncated": n,
        "unrelated_src": n,
        "unrelated_tgt": n,
    }
    if sum(sizes.values()) > len(free):
        raise SystemExit(f"{lang}: {sum(sizes.values())} lines needed, {len(free)} available")
    parts, at = {}, 0
    for name, size in sizes.items():
        parts[name] = free[at : at + size]
        at += size

    for i in parts["true"]:
        s.add("src", x_txt[i], x_emb[i], "true", i)
        s.add("tgt", e_txt[i], e_emb[i], "true", i)
    s.n_true = len(parts["true"])

    # near-duplicates of n true pairs: both sides perturbed
    nd = rng.choice(parts["true"], size=n, replace=False)
    nd_x = [perturb(x_txt[i]) for i in nd]
    nd_e = [perturb(e_txt[i]) for i in nd]
    for a, b, i in zip(nd_x, nd_e, nd, strict=True):
        assert a != x_txt[i] and b != e_txt[i]
    for text, emb, i in zip(nd_x, enc.encode(nd_x), nd, strict=True):
        s.add("src", text, emb, "near_duplicate", i)
    for text, emb, i in zip(nd_e, enc.encode(nd_e), nd, strict=True):
        s.add("tgt", text, emb, "near_duplicate", i)

    for i in parts["copy"]:
        s.add("src", x_txt[i], x_emb[i], "copy", i)
        s.add("tgt", x_txt[i], x_emb[i], "copy", i)
    for i in parts["wrong_lang"]:
        s.add("src", x_txt[i], x_emb[i], "wrong_lang", i)
        s.add("tgt", t_txt[i], t_emb[i], "wrong_lang", i)
    cut = [
        truncate(e_txt[i], f)
        for i, f in zip(parts["truncated"], rng.uniform(0.4, 0.6, n), strict=True)
    ]
    for i, text, emb in zip(parts["truncated"], cut, enc.encode(cut), strict=True):
        s.add("src", x_txt[i], x_emb[i], "truncated", i)
        s.add("tgt", text, emb, "truncated", i)
    for i in parts["unrelated_src"]:
        s.add("src", x_txt[i], x_emb[i], "unrelated", i)
    for i in parts["unrelated_tgt"]:
        s.add("tgt", e_txt[i], e_emb[i], "unrelated", i)
    for b, (a, e) in enumerate(bp):
        for _ in range(args.repeats):
            s.add("src", a, bp_x[b], "boilerplate", b)
            s.add("tgt", e, bp_e[b], "boilerplate", b)

    s.items = {
        "copy": n,
        "wrong_lang": n,
        "truncated": n,
        "near_duplicate": n,
        "unrelated": 2 * n,
        "boilerplate": len(bp),
    }
    return s.shuffled(rng)


def write_side(path: Path, texts, embs, checksum: str, lang: str) -> None:
    from emmax_cli.io.parquet import EmbeddingWriter

    emb = np.stack(embs).astype(np.float32)
    with EmbeddingWriter(path, emb.shape[1], meta={"model_checksum": checksum}, lang=lang) as w:
        w.write(np.arange(len(texts), dtype=np.int64), emb, list(texts))


# ---- scoring --------------------------------------------------------------------------------
def roles(sample: Sample, src_lines, tgt_lines) -> list[tuple[str, list]]:
    """The role of each pair (given best first, as input line numbers): ``("true", [i])``
    for the first pair joining the two sides of true pair i, ``(kind, items)`` for a pair
    that outputs noise items of that kind, ``("wrong", [])`` for any other pair (e.g. a
    misaligned true sentence)."""
    out, seen_group = [], set()
    for a, b in zip(src_lines, tgt_lines, strict=True):
        (sk, si), (tk, ti) = sample.src_label[a], sample.tgt_label[b]
        if sk in ("copy", "wrong_lang", "truncated", "boilerplate", "unrelated"):
            items = [(sk, si)]
            if tk == "unrelated" and sk == "unrelated":
                items.append(("unrelated", ~ti))  # target items are told apart by ~
            if tk == "boilerplate" and sk != "boilerplate":
                out.append(("boilerplate", [("boilerplate", ti)]))
                continue
            out.append((sk, items))
        elif tk in ("boilerplate", "unrelated"):
            out.append((tk, [(tk, ti if tk == "boilerplate" else ~ti)]))
        elif sk in GROUP_KINDS and tk in GROUP_KINDS and si == ti:
            if si in seen_group:
                out.append(("near_duplicate", [("near_duplicate", si)]))
            else:
                seen_group.add(si)
                out.append(("true", [si]))
        else:
            out.append(("wrong", []))
    return out


def summarize(sample: Sample, src_lines, tgt_lines) -> dict:
    """Items output per kind, true pairs found, pairs output and roles of the given pairs."""
    rs = roles(sample, src_lines, tgt_lines)
    items: dict[str, set] = defaultdict(set)
    for kind, its in rs:
        items[kind].update(its)
    n_true = sum(1 for k, _ in rs if k == "true")
    return {
        "roles": rs,
        "items": {k: len(items[k]) for k in KINDS},
        "true": n_true,
        "output": len(rs),
    }


def pair_lines(res, pairs) -> tuple[np.ndarray, np.ndarray]:
    """Input line numbers of the pairs' two sides."""
    return res.src.ids[pairs.src_idx], res.tgt.ids[pairs.tgt_idx]


def reason_names(res) -> list[str]:
    """The candidates' reason names (``kept`` for kept pairs), whatever the result calls
    them (``res.judged.reason`` or ``res.candidates.reason``)."""
    from emmax_cli.filters import REASONS

    reason = None
    for owner in (getattr(res, "judged", None), getattr(res, "candidates", None)):
        if owner is not None and getattr(owner, "reason", None) is not None:
            reason = np.asarray(owner.reason)
            break
    if reason is None:
        return ["?"] * len(res.candidates.src_idx)
    return ["kept" if r < 0 else REASONS[r] for r in reason.tolist()]


def mine_kwargs(mode: str, lang: str, langid: bool) -> dict:
    """mine_files options of a mode, adapted to its signature: ``margin`` (no filters, no
    rank: LASER), ``rank`` (margin + min_rank at the model's top rank), ``default``."""
    from emmax_cli.bitext import mine_files

    params = inspect.signature(mine_files).parameters
    kw: dict = {}
    if mode in ("margin", "rank"):
        if "no_filters" in params:
            kw["no_filters"] = True
        elif "filters" in params:
            kw["filters"] = None
    if mode == "margin" and "min_rank" in params:
        kw["min_rank"] = None
    if mode == "default" and langid and "src_lang" in params:
        kw["src_lang"], kw["tgt_lang"] = lang, "eng"
    return kw


def sweep(sample: Sample, res, target_true: int) -> dict:
    """Margin alone (every candidate scoring at least a threshold, no filters) at the highest
    threshold that still finds ``target_true`` true pairs; pairs tied at it are kept."""
    cand = res.candidates
    score = np.asarray(cand.score, np.float64)
    order = np.argsort(-score, kind="stable")
    s_l, t_l = res.src.ids[cand.src_idx[order]], res.tgt.ids[cand.tgt_idx[order]]
    cum = np.cumsum([k == "true" for k, _ in roles(sample, s_l, t_l)])
    if not len(order):
        return {"threshold": None, "output": 0, "true": 0}
    hit = np.flatnonzero(cum >= target_true)
    thr = score[order][hit[0] if len(hit) else len(order) - 1]
    p = int((score >= thr).sum())
    return {"threshold": float(thr), "output": p, "true": int(cum[p - 1])}


def aligned(sample: Sample, rng: np.random.Generator) -> list[tuple[int, int, str]]:
    """The sample as aligned pairs ``(src line, tgt line, kind)``, shuffled: each true and
    noise pair (each boilerplate occurrence; unrelated source k with unrelated target k),
    a near-duplicate always after its true pair (``emmax score`` keeps the first)."""
    by: dict[tuple, tuple[list, list]] = defaultdict(lambda: ([], []))
    for side, labels in enumerate((sample.src_label, sample.tgt_label)):
        for j, label in enumerate(labels):
            by[label][side].append(j)
    un = [by.pop(lab) for lab in [lab for lab in by if lab[0] == "unrelated"]]
    pairs = [(a, b, k) for (k, _), (s, t) in by.items() for a, b in zip(s, t, strict=True)]
    un_s, un_t = ([j for x in un for j in x[side]] for side in (0, 1))
    pairs += [(a, b, "unrelated") for a, b in zip(un_s, un_t, strict=True)]
    pairs = [pairs[i] for i in rng.permutation(len(pairs))]
    pos = {sample.src_label[a]: i for i, (a, _, _) in enumerate(pairs)}
    for item in {i for k, i in sample.src_label if k == "near_duplicate"}:
        d, o = pos[("near_duplicate", item)], pos[("true", item)]
        if d < o:
            pairs[d], pairs[o] = pairs[o], pairs[d]
    return pairs


def score_lang(sample: Sample, args, enc, workdir: Path, langid: bool) -> dict:
    """``emmax score`` (``score_files``, defaults) on the aligned sample: pairs and dropped
    pairs per kind, with the reasons."""
    from emmax_cli.score import score_files

    pairs = aligned(sample, np.random.default_rng([args.seed, zlib.crc32(sample.lang.encode()), 1]))
    tsv, out = workdir / f"{sample.lang}.pairs.tsv", workdir / f"{sample.lang}.score.jsonl"
    cl = str.maketrans("\t\r\n", "   ")
    lines = (
        f"{sample.src_text[a].translate(cl)}\t{sample.tgt_text[b].translate(cl)}\n"
        for a, b, _ in pairs
    )
    tsv.write_text("".join(lines), "utf-8")
    g = (sample.lang, "eng") if langid else (None, None)
    t0 = time.perf_counter()
    summ = score_files(tsv, model=enc, src_lang=g[0], tgt_lang=g[1], fmt="jsonl", output=out)
    secs = round(time.perf_counter() - t0, 1)
    n, why = Counter(k for _, _, k in pairs), defaultdict(Counter)
    for row in map(json.loads, out.read_text("utf-8").splitlines()):
        if not row["keep"]:
            why[pairs[row["id"]][2]][row["reason"]] += 1
    kinds = {
        k: {"n": n[k], "dropped": why[k].total(), "reasons": dict(why[k].most_common())}
        for k in ["true", *KINDS]
    }
    out = {"pairs": summ.pairs, "kept": summ.kept, "min_rank": summ.min_rank, "seconds": secs}
    return out | {"kinds": kinds}


def run_lang(lang: str, args, enc, workdir: Path, langid: bool) -> dict:
    from emmax_cli.bitext import mine_files

    t0 = time.perf_counter()
    sample = build(lang, args, enc)
    sp, tp = workdir / f"{lang}.src.parquet", workdir / f"{lang}.eng.tgt.parquet"
    write_side(sp, sample.src_text, sample.src_emb, enc.config.checksum, lang)
    write_side(tp, sample.tgt_text, sample.tgt_emb, enc.config.checksum, "eng")
    if args.write:
        args.write.mkdir(parents=True, exist_ok=True)
        stem = args.write / f"{lang}-eng"
        Path(f"{stem}.{lang}").write_text("".join(t + "\n" for t in sample.src_text), "utf-8")
        Path(f"{stem}.eng").write_text("".join(t + "\n" for t in sample.tgt_text), "utf-8")
        labels = {"src": sample.src_label, "tgt": sample.tgt_label}
        Path(f"{stem}.labels.json").write_text(json.dumps(labels), "utf-8")
    build_s = time.perf_counter() - t0
    out = {
        "lang": lang,
        "third": sample.third,
        "n_src": len(sample.src_text),
        "n_tgt": len(sample.tgt_text),
        "n_true": sample.n_true,
        "items": sample.items,
        "build_seconds": round(build_s, 1),
    }
    results = {}
    for mode in ("margin", "rank", "default"):
        kw = mine_kwargs(mode, lang, langid)
        t0 = time.perf_counter()
        res = mine_files(sp, tp, model=enc, **kw)
        secs = time.perf_counter() - t0
        s_l, t_l = pair_lines(res, res.pairs)
        summ = summarize(sample, s_l, t_l)
        summ["seconds"] = round(secs, 2)
        summ["threshold"] = res.threshold
        summ["kwargs"] = {k: v for k, v in kw.items()}
        if res.candidates is not None:
            c_s, c_t = pair_lines(res, res.candidates)
            summ["reason_of"] = dict(
                zip(zip(c_s.tolist(), c_t.tolist(), strict=True), reason_names(res), strict=True)
            )
        summ["lines"] = (s_l.tolist(), t_l.tolist())
        summ["min_rank"] = getattr(getattr(res, "judged", None), "min_rank", None)
        results[mode] = (summ, res)
    before, _ = results["margin"]
    after, res_after = results["default"]
    # which filter removed the pairs margin alone output, per role
    removed_by: dict[str, Counter] = defaultdict(Counter)
    reason_of = after.get("reason_of", {})
    examples: dict[str, list] = defaultdict(list)
    for (kind, _), a, b in zip(before["roles"], *before["lines"], strict=True):
        r = reason_of.get((a, b), "not mined")
        removed_by[kind][r] += 1
        if r == "kept" and kind not in ("true",) and len(examples[kind]) < 3:
            examples[kind].append([sample.src_text[a], sample.tgt_text[b]])
    lost = []
    found_after = {its[0] for k, its in after["roles"] if k == "true"}
    for (kind, its), a, b in zip(before["roles"], *before["lines"], strict=True):
        if kind == "true" and its[0] not in found_after and len(lost) < 3:
            lost.append([sample.src_text[a], sample.tgt_text[b], reason_of.get((a, b))])
    out["removed_by"] = {k: dict(v) for k, v in removed_by.items()}
    out["surviving_examples"] = dict(examples)
    out["lost_true_examples"] = lost
    rank_summ, _ = results["rank"]
    out["sweep_rank"] = sweep(sample, results["margin"][1], rank_summ["true"])
    out["sweep_default"] = sweep(sample, results["margin"][1], after["true"])
    for mode, (summ, _) in results.items():
        out[mode] = {
            k: summ[k]
            for k in ("items", "true", "output", "seconds", "threshold", "kwargs", "min_rank")
        }
    out["dropped"] = dict(getattr(res_after, "dropped", {}) or {})
    if args.score:
        out["score"] = score_lang(sample, args, enc, workdir, langid)
    return out


# ---- report ---------------------------------------------------------------------------------
def _share(a: float, b: float) -> float:
    """``a / b`` in per cent, rounded as printed."""
    return round(100 * a / b, 1)


def pct(a: float, b: float) -> str:
    return f"{_share(a, b):.1f}" if b else "-"


def prec(true: int, output: int) -> str:
    return f"{true / output:.3f}" if output else "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-m", "--model", default=None, help="default: the default model")
    ap.add_argument("--langs", nargs="+", default=DEFAULT_LANGS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--true", type=int, default=400, help="true pairs per language")
    ap.add_argument("--per-kind", type=int, default=40, help="noise items per kind")
    ap.add_argument("--boilerplate", type=int, default=8, help="boilerplate pairs")
    ap.add_argument("--repeats", type=int, default=8, help="copies of each boilerplate line")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/emmax-bench-cache"))
    ap.add_argument("--write", type=Path, default=None, help="also write the text sides here")
    ap.add_argument("--no-langid", action="store_true", help="do not pass src_lang/tgt_lang")
    ap.add_argument(
        "--json", default=None, help="main table; *_rank.json, *_langs.json, noisy_score.json too"
    )
    ap.add_argument("--details", default=None, help="per-language details as JSON")
    ap.add_argument("--no-score", dest="score", action="store_false", help="skip emmax score")
    args = ap.parse_args()

    from emmax_cli.models.encoder import Encoder

    langid = not args.no_langid and importlib.util.find_spec("emmax_cli.langid") is not None
    if not langid and not args.no_langid:
        print("emmax_cli.langid is missing: language ID is off", file=sys.stderr)
    enc = Encoder.load(args.model)
    per_lang = []
    with tempfile.TemporaryDirectory() as tmp:
        for lang in args.langs:
            r = run_lang(lang, args, enc, Path(tmp), langid)
            per_lang.append(r)
            print(
                lang,
                "before",
                r["margin"]["items"],
                r["margin"]["true"],
                "after",
                r["default"]["items"],
                r["default"]["true"],
                file=sys.stderr,
            )
    if args.details:
        Path(args.details).parent.mkdir(parents=True, exist_ok=True)
        Path(args.details).write_text(json.dumps(per_lang, indent=1, ensure_ascii=False))
    command = "python bench/noisy_mine.py " + " ".join(sys.argv[1:])
    n_langs = len(per_lang)
    min_rank = per_lang[0]["rank"]["min_rank"]
    thr = per_lang[0]["margin"]["threshold"]
    lid = "on" if langid else "off"

    # table 1: per noise kind, before and after
    rows = []
    for kind in KINDS:
        n = sum(r["items"][kind] for r in per_lang)
        b = sum(r["margin"]["items"][kind] for r in per_lang)
        a = sum(r["default"]["items"][kind] for r in per_lang)
        worst = _extreme(
            [
                (
                    _share(
                        r["margin"]["items"][kind] - r["default"]["items"][kind],
                        r["margin"]["items"][kind],
                    ),
                    r["lang"],
                )
                for r in per_lang
                if r["margin"]["items"][kind]
            ],
            min,
        )
        by = Counter()
        for r in per_lang:
            by.update(r["removed_by"].get(kind, {}))
        by.pop("kept", None)
        rows.append(
            [
                kind,
                n,
                b,
                a,
                pct(b - a, b),
                worst,
                _goal(not b or (b - a) / b >= 0.95),
                ", ".join(f"{k} {v}" for k, v in by.most_common()),
            ]
        )
    n = sum(r["n_true"] for r in per_lang)
    b = sum(r["margin"]["true"] for r in per_lang)
    a = sum(r["default"]["true"] for r in per_lang)
    worst = _extreme(
        [
            (_share(r["margin"]["true"] - r["default"]["true"], r["margin"]["true"]), r["lang"])
            for r in per_lang
            if r["margin"]["true"]
        ],
        max,
    )
    lost_by = Counter()
    for r in per_lang:
        lost_by.update({k: v for k, v in r["removed_by"].get("true", {}).items() if k != "kept"})
    rows.append(
        [
            "true pairs (found)",
            n,
            b,
            a,
            f"lost {pct(b - a, b)}",
            f"lost {worst}",
            _goal(not b or (b - a) / b <= 0.02),
            ", ".join(f"{k} {v}" for k, v in lost_by.most_common()),
        ]
    )
    bo = sum(r["margin"]["output"] for r in per_lang)
    ao = sum(r["default"]["output"] for r in per_lang)
    rows.append(["all pairs output", "", bo, ao, "", "", "", ""])
    first = per_lang[0]
    notes = (
        f"model {enc.config.name}; pairs {', '.join(r['lang'] + '-eng' for r in per_lang)} "
        f"(wrong_lang targets in {', '.join(r['third'] for r in per_lang)}); per pair "
        f"{args.true} true pairs, {args.per_kind} items per noise kind (unrelated: "
        f"{args.per_kind} source + {args.per_kind} target lines; boilerplate: "
        f"{first['items']['boilerplate']} pairs x {args.repeats} copies on each side), "
        f"~{first['n_src']} source x ~{first['n_tgt']} target lines, seed {args.seed}. "
        f"before: margin alone (ratio margin k=4, threshold {thr}, no filters, no min_rank); "
        f"after: default mine_files (filters, min_rank {first['default']['min_rank']}, "
        f"language ID {lid}; the model's calibrated mine settings: "
        f"{mine_settings(enc) or 'none (no margin cap, rank probability 0.5)'}). "
        f"n, before, after: noise items output (summed over pairs); "
        f"worst: the pair with the least removed (most lost); removed by: the first filter "
        f"that dropped each pair margin alone output; goal: >= 95 % of each noise kind "
        f"removed, <= 2 % of the true pairs lost (pooled over the pairs)."
    )
    title = "Noisy mining on FLORES-200 devtest: injected noise before and after the filters"
    columns = [
        "kind",
        "n",
        "before (margin)",
        "after (default)",
        "% removed",
        "worst pair %",
        "goal",
        "removed by",
    ]
    print_table(title, columns, rows, notes, args.json)
    _add_command(args.json, command)
    print()

    # table 2: min_rank against margin alone at equal recall
    rows2 = []
    tot = defaultdict(lambda: [0, 0])

    def row(pair, setting, threshold, output, true, n_true):
        tot[setting][0] += output
        tot[setting][1] += true
        thr_s = "-" if threshold is None else f"{threshold:.4f}"
        rows2.append(
            [pair, setting, thr_s, output, true, f"{true / n_true:.3f}", prec(true, output)]
        )

    settings = [
        "margin",
        f"margin + min_rank {min_rank}",
        "margin, recall of min_rank",
        "default mine",
        "margin, recall of default",
    ]
    for r in per_lang:
        p, nt = f"{r['lang']}-eng", r["n_true"]
        row(
            p, settings[0], r["margin"]["threshold"], r["margin"]["output"], r["margin"]["true"], nt
        )
        row(p, settings[1], r["rank"]["threshold"], r["rank"]["output"], r["rank"]["true"], nt)
        sw = r["sweep_rank"]
        row(p, settings[2], sw["threshold"], sw["output"], sw["true"], nt)
        row(
            p,
            settings[3],
            r["default"]["threshold"],
            r["default"]["output"],
            r["default"]["true"],
            nt,
        )
        sw = r["sweep_default"]
        row(p, settings[4], sw["threshold"], sw["output"], sw["true"], nt)
    n_all = sum(r["n_true"] for r in per_lang)
    for s in settings:
        o, t = tot[s]
        rows2.append(["all", s, "", o, t, f"{t / n_all:.3f}", prec(t, o)])
    notes2 = (
        f"The same {n_langs} noisy samples as the table above. precision = true pairs found / "
        f"pairs output (noise and misaligned pairs are errors); recall = true pairs found / "
        f"{args.true}. 'margin, recall of X': margin alone, no filters, with the threshold "
        f"raised to the highest value that still finds as many true pairs as X (ties kept); "
        f"min_rank {min_rank} is the model's top rank. {command}"
    )
    print_table(
        "Noisy mining: min_rank against margin alone at equal recall",
        ["pair", "setting", "threshold", "output", "true found", "recall", "precision"],
        rows2,
        notes2,
        _suffixed(args.json, "_rank"),
    )
    _add_command(_suffixed(args.json, "_rank"), command)
    print()

    # table 3: per pair, % removed per kind and % true lost
    rows3 = []
    for r in per_lang:
        cells, ok = [f"{r['lang']}-eng"], True
        for kind in KINDS:
            b, a = r["margin"]["items"][kind], r["default"]["items"][kind]
            cells.append(f"{pct(b - a, b)} ({b}->{a})")
            ok &= not b or (b - a) / b >= 0.95
        b, a = r["margin"]["true"], r["default"]["true"]
        cells.append(f"{pct(b - a, b)} ({b}->{a})")
        ok &= not b or (b - a) / b <= 0.02
        rows3.append([*cells, _goal(ok)])
    print_table(
        "Noisy mining per pair: % of the noise margin alone outputs that the filters "
        "remove (before->after)",
        ["pair", *KINDS, "true lost", "goal"],
        rows3,
        f"As the first table; goal: >= 95 % of each kind removed and <= 2 % of the true "
        f"pairs lost on this pair. {command}",
        _suffixed(args.json, "_langs"),
    )
    _add_command(_suffixed(args.json, "_langs"), command)
    if args.score:
        print()
        score_table(per_lang, args, enc, command, _suffixed(args.json, "", "noisy_score"))

    # surviving noise, for the record
    print("\nsurviving noise examples (default mine):")
    for r in per_lang:
        for kind, exs in r["surviving_examples"].items():
            for a, b in exs[:2]:
                print(f"  {r['lang']} {kind}: {a!r} -> {b!r}")
        for a, b, why in r["lost_true_examples"][:2]:
            print(f"  {r['lang']} true pair lost ({why}): {a!r} -> {b!r}")


def score_table(per_lang: list[dict], args, enc, command: str, path: str | None) -> None:
    """Table 4: ``emmax score`` on the aligned pairs, drop verdicts per kind (pooled)."""
    sc = [(r["lang"], r["score"]["kinds"]) for r in per_lang]
    tot = {k: [sum(ks[k][x] for _, ks in sc) for x in ("n", "dropped")] for k in ["true", *KINDS]}
    tot["all noise"] = [sum(tot[k][x] for k in KINDS) for x in (0, 1)]
    d_true, rows = tot["true"][1], []
    for kind, (n, d) in tot.items():
        by = Counter()
        for _, ks in sc:
            by.update(ks.get(kind, {}).get("reasons", {}))
        shares = [(_share(ks[kind]["dropped"], ks[kind]["n"]), g) for g, ks in sc if kind in ks]
        worst = _extreme(shares, max if kind == "true" else min) if shares else ""
        cells = [pct(d, n), prec(d, d + d_true), worst]
        if kind == "true":
            cells = [f"kept {pct(n - d, n)}", "", f"dropped {worst}"]
        reasons = ", ".join(f"{k} {v}" for k, v in by.most_common())
        rows.append([kind.replace("true", "true pairs"), n, d, *cells, reasons])
    first = per_lang[0]["score"]
    lid = "on" if per_lang[0]["default"]["kwargs"].get("src_lang") else "off"
    notes = (
        f"model {enc.config.name}; the samples of the first table as aligned bitexts (one "
        f"`src<TAB>tgt` line per pair, shuffled, seed {args.seed}) scored by score_files "
        f"(`emmax score`) with its defaults: ratio margin k=4 within the file, no threshold, "
        f"min_rank {first['min_rank']}, copy, length, language ID {lid}, dedup (the first "
        f"occurrence stays), no repeat filter. Pairs per pair of languages: {args.true} true; "
        f"{args.per_kind} each of copy, wrong_lang, truncated, near_duplicate (placed after its "
        f"true pair), unrelated (an unrelated source line with an unrelated target line); "
        f"boilerplate: every occurrence ({first['kinds']['boilerplate']['n']} = pairs x "
        f"{args.repeats}). recall %: the kind's pairs dropped (true pairs: kept); precision: "
        f"noise dropped / all dropped among the true pairs plus that kind (all noise: plus "
        f"every kind), pooled over {len(per_lang)} pairs; worst pair: the least dropped (true: "
        f"the most); reasons: the first filter that dropped each pair. {command}"
    )
    columns = ["kind", "n", "dropped", "recall %", "precision", "worst pair %", "reasons"]
    print_table(
        "emmax score on the same pairs, aligned: drop verdicts per kind", columns, rows, notes, path
    )
    _add_command(path, command)


def mine_settings(enc) -> dict:
    """The model's calibrated mining settings (margin_cap, rank_prob; ``{}``: none, so no
    margin cap and a rank probability of 0.5)."""
    extra = getattr(enc.config, "extra", None)
    m = extra.get("mine", {}) if isinstance(extra, dict) else {}
    return m if isinstance(m, dict) else {}


def _extreme(vals: list[tuple[float, str]], pick) -> str:
    """``"12.5 (swh)"``: the extreme value and its pair; ``(all)`` when every pair has it."""
    if not vals:
        return "-"
    v = pick(x for x, _ in vals)
    langs = [lang for x, lang in vals if x == v]
    return f"{v:.1f} ({'all' if len(langs) == len(vals) > 1 else ', '.join(langs)})"


def _goal(ok) -> str:
    return "met" if ok else "NOT met"


def _suffixed(path: str | None, suffix: str, stem: str | None = None) -> str | None:
    if not path:
        return None
    p = Path(path)
    return str(p.with_name((stem or p.stem) + suffix + p.suffix))


def _add_command(path: str | None, command: str) -> None:
    if path:
        d = json.loads(Path(path).read_text())
        d["command"] = command
        Path(path).write_text(json.dumps(d, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
