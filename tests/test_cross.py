"""The VECO cross-attention pair scorer: plug-out identity, symmetry, the near-miss generators,
a tiny training run with exact resume, and bad input (models/cross.py, train/cross.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
TINY = REPO / "configs" / "train" / "tiny.toml"

SRC = ["Der Hund bellt.", "Es regnet seit 3 Tagen in Berlin.", "Ich habe keine Zeit.", "Ja"]
TGT = ["The dog barks.", "It has been raining in Berlin for 3 days.", "I have no time.", "Yes"]


@pytest.fixture
def tiny_with_cross(tiny_model):
    from emmax_cli.models.cross import CrossPlugin
    from emmax_cli.models.encoder import Encoder

    enc = Encoder.load(str(tiny_model), device="cpu", precision="fp32")
    torch.manual_seed(0)
    p = CrossPlugin.for_net(enc.net, layers=1)
    for prm in p.head.parameters():  # a head that is not ~uniform, so differences show
        torch.nn.init.normal_(prm, std=0.5)
    p.save(tiny_model)
    return tiny_model


def test_plugged_out_embeddings_are_bit_identical(tiny_model, tiny_with_cross):
    from emmax_cli.models.cross_scorer import CrossScorer
    from emmax_cli.models.encoder import Encoder

    plain = Encoder.load(str(tiny_model), device="cpu", precision="fp32").encode(SRC + TGT)
    scorer = CrossScorer.load(str(tiny_with_cross), device="cpu", precision="fp32")
    before = scorer.encoder.encode(SRC + TGT)
    scorer.rank_probs(SRC, TGT)  # reading pairs jointly must not touch the encoder
    after = scorer.encoder.encode(SRC + TGT)
    assert np.array_equal(plain, before) and np.array_equal(plain, after)


def test_cross_scores_are_symmetric_probabilities_and_read_both_sides(tiny_with_cross):
    from emmax_cli.models.cross_scorer import CrossScorer

    s = CrossScorer.load(str(tiny_with_cross), device="cpu", precision="fp32")
    p = s.rank_probs(SRC, TGT)
    assert p.shape == (4, s.num_ranks)
    np.testing.assert_allclose(p.sum(1), 1, rtol=1e-5)
    np.testing.assert_allclose(p, s.rank_probs(TGT, SRC), atol=1e-6)
    # one batch or one pair per batch: the same numbers (padding is masked)
    np.testing.assert_allclose(p, s.rank_probs(SRC, TGT, batch_tokens=1), atol=1e-5)
    # the target matters: a different partner gives different probabilities
    assert np.abs(p - s.rank_probs(SRC, TGT[::-1])).max() > 1e-4
    assert s.rank_probs([], []).shape == (0, s.num_ranks)


def test_missing_or_corrupt_cross_head_is_a_clear_error(tiny_model, tiny_with_cross, tmp_path):
    from emmax_cli.errors import ModelLoadError
    from emmax_cli.models.cross import CONFIG_FILE, WEIGHTS_FILE, CrossPlugin
    from emmax_cli.models.cross_scorer import CrossScorer

    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(ModelLoadError, match="no cross scorer"):
        CrossPlugin.from_dir(plain)
    (tiny_with_cross / WEIGHTS_FILE).write_bytes(b"not safetensors")
    with pytest.raises(ModelLoadError, match="unreadable cross scorer"):
        CrossPlugin.from_dir(tiny_with_cross)
    c = json.loads((tiny_with_cross / CONFIG_FILE).read_text())
    c["hidden"] = 64
    (tiny_with_cross / CONFIG_FILE).write_text(json.dumps(c))
    with pytest.raises(ModelLoadError):
        CrossScorer.load(str(tiny_with_cross), device="cpu", precision="fp32")


def test_plugin_for_another_encoder_shape_is_refused(tiny_encoder):
    from emmax_cli.errors import ModelLoadError
    from emmax_cli.models.cross import CrossPlugin
    from emmax_cli.models.cross_scorer import CrossScorer

    c = tiny_encoder.net.config_dict
    other = CrossPlugin(c["hidden_size"], c["num_attention_heads"], c["num_hidden_layers"] + 1, 1)
    with pytest.raises(ModelLoadError, match="trained for an encoder"):
        CrossScorer(tiny_encoder, other)


# ---- near-misses --------------------------------------------------------------------------
def test_perturbations_change_what_they_say():
    from emmax_cli import perturb

    rng = np.random.default_rng(0)
    s = "In 2019 the company said that Maria was leaving Paris, but she stayed."
    n = perturb.change_number(s, rng)
    assert "2019" not in n and len(n) == len(s)
    assert perturb.change_number("no digits here", rng) is None
    m = perturb.change_name(s, rng, ["Paris", "Oslo", "Maria"])
    assert m != s and "Oslo" in m
    assert perturb.negate(s) == s.replace("was leaving", "was not leaving")
    assert perturb.negate("He did not go.") == "He did go."
    assert perturb.negate("Fish swim.") is None
    t, share = perturb.truncate(s, rng)
    assert s.startswith(t) and len(t) < len(s) and 0.3 <= share <= 0.75
    assert perturb.truncate("Too short.", rng) is None
    assert perturb.splice("a b c d e f", "u v w x y z", 0.5) == "a b c x y z"


def test_training_labels_follow_the_ranks():
    from emmax_cli.train.cross_data import label_for

    assert [label_for(k, 1.0, 4) for k in ("translation", "number", "hard", "unrelated")] == [
        3,
        2,
        1,
        0,
    ]
    assert [label_for("truncation", s, 4) for s in (0.3, 0.6, 0.95)] == [1, 2, 2]


# ---- training -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vocab_model(tmp_path_factory) -> Path:
    from emmax_cli.models.tiny import build_tiny_model
    from emmax_cli.train.config import load_config

    cfg = load_config(TINY)
    texts = []
    for pat in cfg.data.parallel:
        texts += (REPO / pat).read_text(encoding="utf-8").split("\n")[:200]
    return build_tiny_model(tmp_path_factory.mktemp("tinyv") / "tiny", seed=0, vocab_texts=texts)


def _cfg(model: Path, out: Path, *extra: str):
    from emmax_cli.train.config import load_config

    return load_config(
        TINY,
        [
            f'model.base="{model}"',
            f'run.out="{out}"',
            "cross.steps=4",
            "cross.layers=1",
            "cross.batch_pairs=6",
            "cross.max_pairs_per_file=60",
            "cross.dev_pairs=12",
            "cross.warmup_steps=1",
            "cross.max_length=32",
            "run.save_every=2",
            "run.eval_every=2",
            *extra,
        ],
    )


def _run(cfg, resume=False):
    from emmax_cli.train import train

    old = os.getcwd()
    os.chdir(REPO)
    try:
        return train(cfg, ["cross"], resume=resume)
    finally:
        os.chdir(old)


@pytest.mark.skipif(not (SHARED / "train").exists(), reason="../shared/data is not available")
def test_tiny_cross_training_runs_exports_and_resumes_exactly(vocab_model, tmp_path):
    from safetensors.torch import load_file

    from emmax_cli.models.cross_scorer import CrossScorer

    full = _run(_cfg(vocab_model, tmp_path / "full"))["cross"]
    assert full["step"] == 4 and np.isfinite(full["loss"])
    assert any(k.startswith("dev_acc_") for k in full)
    model = tmp_path / "full" / "cross"
    assert (model / "cross_head.safetensors").exists() and (model / "emmax.json").exists()
    card = json.loads((model / "cross_head.json").read_text())["card"]
    assert card["steps"] == 4 and card["train_pairs_pool"] > 0
    p = CrossScorer.load(str(model), device="cpu", precision="fp32").rank_probs(SRC, TGT)
    assert p.shape == (4, 4)
    # the plug-in trained: not the initial head any more
    w_full = load_file(str(model / "cross_head.safetensors"))

    _run(_cfg(vocab_model, tmp_path / "part", "cross.steps=2"))
    resumed = _run(_cfg(vocab_model, tmp_path / "part"), resume=True)["cross"]
    w_res = load_file(str(tmp_path / "part" / "cross" / "cross_head.safetensors"))
    assert resumed["step"] == 4
    for k in w_full:
        assert torch.equal(w_full[k], w_res[k]), k
    log = [
        json.loads(x)
        for x in (tmp_path / "part" / "cross-train" / "train_log.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    # the prior shift: 0.99 of the held-out translations get the top rank
    c = json.loads((model / "cross_head.json").read_text())
    assert c["top_bias"] == full["top_bias"] != 0
    assert full["calibrated_acc_translation"] >= 0.99


def test_cross_phase_config_errors(vocab_model, tmp_path):
    from emmax_cli.errors import ConfigError

    with pytest.raises(ConfigError, match="cross.steps"):
        _run(_cfg(vocab_model, tmp_path / "a", "cross.steps=0"))
    with pytest.raises(ConfigError, match="cross.layers"):
        _run(_cfg(vocab_model, tmp_path / "b", "cross.layers=9"))
    with pytest.raises(ConfigError, match="no cross checkpoint"):
        _run(_cfg(vocab_model, tmp_path / "c"), resume=True)


# ---- the shipped cross scorer of the default model ----------------------------------------
FLORES = SHARED / "flores200" / "devtest"


@pytest.fixture(scope="module")
def default_scorer():
    from emmax_cli.models.cross import has_cross
    from emmax_cli.models.cross_scorer import CrossScorer
    from emmax_cli.models.loading import resolve

    if not FLORES.exists():
        pytest.skip("../shared/data is not available")
    if not has_cross(resolve(None).root):
        pytest.skip("the default model has no cross scorer")
    return CrossScorer.load(None, device="cpu", precision="fp32")


def test_default_cross_scorer_accepts_translations_and_rejects_near_misses(default_scorer):
    """On FLORES-200 devtest (never trained on): deu-eng translations get the top rank, the
    same translations with one number changed or a negation flipped mostly do not."""
    from emmax_cli import perturb

    de = (FLORES / "deu.txt").read_text(encoding="utf-8").splitlines()
    en = (FLORES / "eng.txt").read_text(encoding="utf-8").splitlines()
    rng = np.random.default_rng(0)
    rows = [
        i for i in range(len(en)) if perturb.negate(en[i]) and perturb.change_number(en[i], rng)
    ]
    rows = rows[:40]
    top = default_scorer.num_ranks - 1
    true = default_scorer.rank_probs([de[i] for i in rows], [en[i] for i in rows]).argmax(1)
    assert (true == top).mean() >= 0.9
    for kind in ("number", "negation"):
        bad = [perturb.perturb(kind, en[i], rng) for i in rows]
        r = default_scorer.rank_probs([de[i] for i in rows], bad).argmax(1)
        assert (r != top).mean() >= 0.5, kind
