"""emmax_cli.langid: code normalisation, detection, the short-text rule and FLORES accuracy."""

from __future__ import annotations

import builtins
import sys

import numpy as np
import pytest
from conftest import SHARED

from emmax_cli import langid
from emmax_cli.errors import InputError, ModelLoadError

FLORES = SHARED / "flores200" / "devtest"

SENTENCES = {
    "de": "Der Bahnhof liegt nur wenige Minuten vom Stadtzentrum entfernt.",
    "en": "The train station is only a few minutes away from the city centre.",
    "fr": "La gare se trouve à quelques minutes seulement du centre-ville.",
    "ru": "Вокзал находится всего в нескольких минутах от центра города.",
    "zh": "火车站离市中心只有几分钟的路程，交通非常方便。",
    "ar": "تقع محطة القطار على بعد دقائق قليلة فقط من وسط المدينة.",
    "es": "La estación de tren está a solo unos minutos del centro de la ciudad.",
}


@pytest.mark.parametrize(
    "code, want",
    [
        ("de", "de"),
        ("deu", "de"),
        ("ger", "de"),
        ("deu_Latn", "de"),
        ("DE", "de"),
        ("de-AT", "de"),
        ("en", "en"),
        ("eng_Latn", "en"),
        ("zh", "zh"),
        ("zho", "zh"),
        ("cmn", "zh"),
        ("zho_Hans", "zh"),
        ("zho_Hant", "zh"),
        ("pes", "fa"),
        ("fas", "fa"),
        ("fa", "fa"),
        ("pes_Arab", "fa"),
        ("swh", "sw"),
        ("swa", "sw"),
        ("swh_Latn", "sw"),
        ("ind", "id"),
        ("msa", "ms"),
        ("zsm_Latn", "ms"),
        ("arb_Arab", "ar"),
        ("nob", "no"),
        ("tgl", "tl"),
        ("fil", "tl"),
        ("yue_Hant", "yue"),
    ],
)
def test_normalize_lang(code, want):
    assert langid.normalize_lang(code) == want
    assert langid.supported(code)


@pytest.mark.parametrize("code", ["xx", "xyz", "", "klingon", "zxx", "zzz_Latn"])
def test_unknown_code_is_an_input_error(code):
    assert not langid.supported(code)
    with pytest.raises(InputError) as e:
        langid.normalize_lang(code)
    assert repr(code) in e.value.message
    assert "ISO 639-1" in e.value.hint and "deu_Latn" in e.value.hint
    with pytest.raises(InputError):
        langid.matches(["some text"], code)


def test_all_flores_test_languages_are_supported():
    codes = "afr ara ben bul cmn deu ell eng est eus fin fra heb hin hun ind ita jav jpn kat kaz"
    codes += " kor mal mar nld pes por rus spa swh tam tel tgl tha tur urd vie"
    assert all(langid.supported(c) for c in codes.split())
    assert set(langid.languages()) >= {langid.normalize_lang(c) for c in codes.split()}


def test_groups():
    assert langid.group("cmn") == {"zh", "wuu", "yue"}
    assert langid.group("ind") == {"id", "ms"} == langid.group("zsm_Latn")
    assert langid.group("deu") == {"de"}


def test_detect_sentences():
    assert langid.detect(list(SENTENCES.values())) == list(SENTENCES)


def test_matches_sentences():
    texts = list(SENTENCES.values())
    for i, lang in enumerate(SENTENCES):
        want = np.zeros(len(texts), dtype=bool)
        want[i] = True
        got = langid.matches(texts, lang)
        assert got.dtype == bool and got.shape == (len(texts),)
        assert (got == want).all(), lang


def test_matches_accepts_a_group_member():
    # Malay detected for an Indonesian side is accepted, and the other way round
    ms = "Kerajaan negeri telah mengumumkan bahawa sekolah akan dibuka semula minggu hadapan."
    id_ = "Pemerintah provinsi mengumumkan bahwa sekolah akan dibuka kembali minggu depan."
    assert langid.matches([ms, id_], "ind").all()
    assert langid.matches([ms, id_], "msa").all()
    assert not langid.matches([ms, id_], "deu").any()


def test_empty_and_letterless_texts():
    texts = ["", "   ", "123", "2024-01-01", "!!!", "$5.00", "...", "OK"]
    assert langid.detect(texts) == ["und"] * len(texts)
    assert langid.matches(texts, "deu").all()
    assert langid.matches(texts, "rus").all()
    assert langid.detect([]) == []
    assert langid.matches([], "de").shape == (0,)


def test_short_text_rule():
    # under MIN_LETTERS letters: always a match
    assert langid.matches(["Hi", "42 ok"], "rus").all()
    # under SHORT_LETTERS letters: a match when among the model's top-3 guesses
    short_de = "Guten Morgen!"
    assert 3 <= langid._letters(short_de) < langid.SHORT_LETTERS
    assert langid.matches([short_de], "deu").all()
    assert not langid.matches(["Доброе утро!"], "deu").any()
    # the thresholds are parameters: with the short rule off, only the top-1 counts
    long_text = SENTENCES["fr"]
    assert not langid.matches([long_text], "deu", short_letters=0).any()
    assert langid.matches(["Guten Morgen"], "fra", min_letters=100).all()


def test_duplicates_and_order_are_kept():
    texts = [SENTENCES["de"], "", SENTENCES["ru"], SENTENCES["de"]]
    assert langid.detect(texts) == ["de", "und", "ru", "de"]
    assert langid.matches(texts, "de").tolist() == [True, True, False, True]


def test_one_string_is_not_a_list():
    with pytest.raises(TypeError):
        langid.detect("Der Bahnhof")


def test_missing_package_is_a_model_load_error(monkeypatch):
    real_import = builtins.__import__

    def no_py3langid(name, *args, **kwargs):
        if name.startswith("py3langid"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_py3langid)
    for mod in [m for m in sys.modules if m.startswith("py3langid")]:
        monkeypatch.delitem(sys.modules, mod)
    langid._identifier.cache_clear()
    try:
        with pytest.raises(ModelLoadError) as e:
            langid.detect(["Der Bahnhof liegt nahe."])
        assert "py3langid" in e.value.message
        assert "pip install" in e.value.hint
        # letterless texts never need the model
        assert langid.matches(["", "123"], "de").all()
    finally:
        langid._identifier.cache_clear()


@pytest.mark.skipif(not FLORES.exists(), reason="../shared/data is not available")
@pytest.mark.parametrize("lang", ["deu", "fra", "rus", "cmn", "ara"])
def test_flores_accuracy(lang):
    lines = (FLORES / f"{lang}.txt").read_text(encoding="utf-8").split("\n")[:100]
    accept = langid.group(lang)
    accuracy = np.mean([p in accept for p in langid.detect(lines)])
    assert accuracy >= 0.9, accuracy
    assert langid.matches(lines, lang).mean() >= 0.9
