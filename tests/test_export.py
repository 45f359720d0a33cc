"""`export_model`: a directory that loads as it is in sentence-transformers, transformers and
emmax, with the same vectors; emmax's own model directories load in sentence-transformers too."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import read_tatoeba

from emmax_cli.errors import InputError, ModelLoadError
from emmax_cli.models.export import export_model

TEXTS = [
    "guten morgen",
    "Hello Tom and Mary, the cat is a dog.",
    "the cat " * 100,  # longer than the tiny model's 64 tokens
    "a",
    "<s> x </s>",
    "unknown wörds here",
]


def st_encode(path: Path, texts: list[str]) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(path), device="cpu").encode(texts, batch_size=4)


def emmax_encode(path, texts: list[str]) -> np.ndarray:
    from emmax_cli.models.encoder import Encoder

    return Encoder.load(str(path) if path else None, device="cpu", precision="fp32").encode(texts)


@pytest.fixture(scope="module")
def exported(tiny_model_dir, tmp_path_factory) -> Path:
    return export_model(tiny_model_dir, tmp_path_factory.mktemp("export") / "tiny-st")


def test_export_layout(exported):
    names = {p.relative_to(exported).as_posix() for p in exported.rglob("*") if p.is_file()}
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "modules.json",
        "sentence_bert_config.json",
        "1_Pooling/config.json",
        "2_Normalize/config.json",
        "config_sentence_transformers.json",
        "emmax.json",
    } <= names
    assert json.loads((exported / "sentence_bert_config.json").read_text())["max_seq_length"] == 64
    cfg = json.loads((exported / "emmax.json").read_text())
    assert set(cfg["files"]) == {"model.safetensors", "tokenizer.json"}
    assert [p.name for p in exported.parent.iterdir()] == [exported.name]  # no temporary left


def test_sentence_transformers_equals_emmax(tiny_model_dir, exported):
    ref = emmax_encode(tiny_model_dir, TEXTS)
    for path in (exported, tiny_model_dir):  # the export, and emmax's own directory as it is
        got = st_encode(path, TEXTS)
        assert (ref * got).sum(1).min() >= 0.9999
        assert np.abs(ref - got).max() < 1e-5


def test_transformers_loads_the_export(tiny_encoder, exported):
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(exported))
    model = AutoModel.from_pretrained(str(exported)).eval()
    batch = tok(TEXTS, padding=True, truncation=True, max_length=64, return_tensors="pt")
    pairs = zip(batch["input_ids"], batch["attention_mask"], strict=True)
    assert [ids[m.bool()].tolist() for ids, m in pairs] == tiny_encoder.tokenize(TEXTS)
    with torch.no_grad():
        h = model(**batch).last_hidden_state
    m = batch["attention_mask"][..., None].float()
    vec = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1).numpy()
    assert np.abs(vec - tiny_encoder.encode(TEXTS)).max() < 1e-5


def test_emmax_loads_the_export_and_verifies_it(tiny_model_dir, exported, tmp_path):
    assert np.abs(emmax_encode(exported, TEXTS) - emmax_encode(tiny_model_dir, TEXTS)).max() == 0
    broken = shutil.copytree(exported, tmp_path / "broken")
    tok = broken / "tokenizer.json"
    tok.write_text(tok.read_text().replace("morgen", "morgan"))
    with pytest.raises(ModelLoadError, match="checksum mismatch for tokenizer.json"):
        emmax_encode(broken, TEXTS)


def test_prefix_cls_pooling_and_no_normalisation_carry_over(tiny_model, tmp_path):
    """emmax's prefix becomes the default prompt; cls pooling and no L2 norm are kept; a
    sentence-transformers directory without emmax.json loads in emmax with those settings."""
    from emmax_cli.models.gmm import GMMHead

    cfg = json.loads((tiny_model / "emmax.json").read_text())
    cfg.update(prefix="the ", pooling="cls", normalize=False)
    (tiny_model / "emmax.json").write_text(json.dumps(cfg))
    GMMHead(num_ranks=4, dim=32).save(tiny_model)
    out = export_model(tiny_model, tmp_path / "out")
    st = json.loads((out / "config_sentence_transformers.json").read_text())
    assert st["prompts"][st["default_prompt_name"]] == "the "
    assert not (out / "2_Normalize").exists()
    assert GMMHead.from_dir(out, dim=32).num_ranks == 4
    ref = emmax_encode(tiny_model, TEXTS)
    assert np.abs(ref).max() > 0 and abs(np.linalg.norm(ref, axis=1) - 1).max() > 0.01
    assert np.abs(st_encode(out, TEXTS) - ref).max() < 1e-5
    (out / "emmax.json").unlink()  # a plain sentence-transformers directory now
    assert np.abs(emmax_encode(out, TEXTS) - ref).max() == 0


def test_export_refuses_to_overwrite_and_replaces_with_force(tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(InputError, match="already exists"):
        export_model(tiny_model_dir, out)
    assert (out / "keep.txt").exists()
    export_model(tiny_model_dir, out, force=True)
    assert not (out / "keep.txt").exists() and (out / "modules.json").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="not a folder"):
        export_model(tiny_model_dir, tmp_path / "file", force=True)
    with pytest.raises(InputError, match="does not exist"):
        export_model(tiny_model_dir, tmp_path / "no" / "out")


def test_export_never_replaces_its_source(tiny_model, tmp_path):
    with pytest.raises(InputError, match="would replace the model"):
        export_model(tiny_model, tiny_model, force=True)
    with pytest.raises(InputError, match="would replace the model"):
        export_model(tiny_model, tiny_model.parent, force=True)
    assert (tiny_model / "emmax.json").exists()


def test_failed_export_leaves_nothing(tiny_model_dir, tmp_path, monkeypatch):
    from emmax_cli.models import export

    def fail(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export, "write_sentence_transformers_files", fail)
    with pytest.raises(OSError, match="No space"):
        export_model(tiny_model_dir, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_old_model_directories_get_the_ecosystem_files(tiny_model, tiny_encoder):
    """Directories written by emmax 0.1.0 (no tokenizer_config.json, no modules.json) are
    completed in place, after which sentence-transformers loads them."""
    from emmax_cli.models.modeldir import add_missing_ecosystem_files, open_dir

    for p in ["modules.json", "config_sentence_transformers.json", "1_Pooling", "2_Normalize"]:
        shutil.rmtree(tiny_model / p) if (tiny_model / p).is_dir() else (tiny_model / p).unlink()
    for p in ["tokenizer_config.json", "special_tokens_map.json", "sentence_bert_config.json"]:
        (tiny_model / "encoder" / p).unlink()
    add_missing_ecosystem_files(open_dir(tiny_model))
    assert (tiny_model / "encoder" / "tokenizer_config.json").exists()
    assert _leftovers(tiny_model) == []
    got = st_encode(tiny_model, TEXTS)
    assert np.abs(got - tiny_encoder.encode(TEXTS)).max() < 1e-5


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


@pytest.mark.real
def test_default_model_export_equals_emmax_embed(tmp_path):
    """`SentenceTransformer(exported).encode(x)` equals emmax on the real default model."""
    de, _ = read_tatoeba("deu")
    texts = de[:100]
    out = export_model(None, tmp_path / "emmax-small")
    ref = emmax_encode(None, texts)
    cos = (ref * st_encode(out, texts)).sum(1)
    assert cos.min() >= 0.9999, cos.min()
