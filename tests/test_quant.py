"""int8 inference (models/quant.py) and the CPU feature rules of ``--precision auto``."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import one_line_error

from emmax_cli import device as D
from emmax_cli.cli import cli
from emmax_cli.errors import EmmaxError
from emmax_cli.models import quant
from emmax_cli.models.encoder import Encoder

SENTS = [
    "Guten Morgen.",
    "Good morning, Tom.",
    "Das ist ein Hund und eine Katze.",
    "the cat",
    "Merci beaucoup!",
    "Mary has a book",
    "Ich habe keine Zeit, weil ich morgen früh zur Arbeit fahren muss.",
]

pytestmark = pytest.mark.skipif(not quant.available(), reason="torch has no int8 engine here")


@pytest.fixture(scope="module")
def int8_encoder(tiny_model_dir):
    return Encoder.load(str(tiny_model_dir), device="cpu", precision="int8")


def test_int8_encoder_loads_and_is_close_to_fp32(int8_encoder, tiny_encoder):
    from emmax_cli.models.modeling import _Linear

    assert int8_encoder.precision == "int8" and int8_encoder.meta["precision"] == "int8"
    net = int8_encoder._net
    lins = [m for m in net.modules() if isinstance(m, quant.Int8Linear)]
    assert len(lins) == 6 * net.config_dict["num_hidden_layers"]  # q, k, v, 3 dense per layer
    assert not any(isinstance(m, _Linear) for m in net.encoder.modules())
    assert tiny_encoder.precision == "fp32"  # the fp32 fixture is untouched
    X = int8_encoder.encode(SENTS)
    R = tiny_encoder.encode(SENTS)
    assert X.dtype == np.float32 and X.shape == R.shape
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1, atol=1e-5)
    cos = (X * R).sum(1)
    assert cos.min() > 0.999, cos  # tiny random model: min 0.999997 measured
    assert not np.allclose(X, R, atol=1e-6)  # int8 really ran


def test_int8_batches_agree(int8_encoder):
    a = int8_encoder.encode(SENTS, batch_size=1)
    b = int8_encoder.encode(SENTS, batch_size=4)
    assert ((a * b).sum(1) > 0.98).all()  # per-batch input scales differ a little


def test_quantize_skip_and_transformers_model(tiny_model_dir):
    from torch import nn

    from emmax_cli.models.modeling import load_net, load_transformers_model

    net = load_net(tiny_model_dir / "encoder")
    n = quant.quantize_int8(net, skip=("attention.output",))
    assert n == 5 * net.config_dict["num_hidden_layers"]
    hf = load_transformers_model(tiny_model_dir / "encoder")
    assert quant.quantize_int8(hf) == 6 * hf.config.num_hidden_layers
    assert not any(isinstance(m, nn.Linear) for m in hf.encoder.modules())
    with pytest.raises(EmmaxError, match="no linear layers"):
        quant.quantize_int8(nn.Sequential(nn.ReLU()))


def test_int8_model_property_stays_int8(tiny_model_dir):
    enc = Encoder.load(str(tiny_model_dir), device="cpu", precision="int8")
    a = enc.encode(SENTS)
    hf = enc.model  # switches to the transformers model, quantised the same way
    assert any(isinstance(m, quant.Int8Linear) for m in hf.modules())
    assert ((enc.encode(SENTS) * a).sum(1) > 0.999).all()


def test_int8_refused_on_cuda_and_in_training():
    with pytest.raises(EmmaxError, match="CPU only") as e:
        D.pick_precision("int8", "cuda", int8=True)
    assert "\n" not in e.value.message
    with pytest.raises(EmmaxError, match="CPU only"):
        D.pick_precision("int8", "cuda:1", int8=True)
    with pytest.raises(EmmaxError, match="inference"):
        D.pick_precision("int8", "cpu")  # callers other than the encoder (training)
    from emmax_cli.errors import ConfigError
    from emmax_cli.train.distributed import setup_device

    with pytest.raises(ConfigError):
        setup_device("cpu", "int8")


def test_cli_int8_on_cuda_is_one_line_error(tiny_model, tmp_path, monkeypatch):
    import emmax_cli.models.encoder as E

    monkeypatch.setattr(E, "resolve_device", lambda d: "cuda")
    src = tmp_path / "a.txt"
    src.write_text("hello\n", encoding="utf-8")
    r = CliRunner().invoke(
        cli, ["embed", str(src), "--model", str(tiny_model), "--precision", "int8"]
    )
    one_line_error(r, "int8", "CPU only")


def test_cli_embed_int8_records_precision(tiny_model, tmp_path):
    src = tmp_path / "c.txt"
    src.write_text("\n".join(SENTS) + "\n", encoding="utf-8")
    r = CliRunner().invoke(
        cli,
        ["embed", str(src), "--model", str(tiny_model), "--precision", "int8"],
        catch_exceptions=False,
    )
    assert r.exit_code == 0, r.output
    t = pq.read_table(tmp_path / "c.parquet")
    meta = json.loads(t.schema.metadata[b"emmax"])
    assert meta["precision"] == "int8"


def _cpu(monkeypatch, *features):
    monkeypatch.setattr(D, "cpu_info", lambda: {"name": "Test CPU", "features": sorted(features)})


@pytest.mark.parametrize(
    ("features", "auto_int8", "encoder", "training"),
    [
        (("avx2", "avx512f", "avx512_bf16"), True, "bf16", "bf16"),
        (("avx2", "amx_bf16", "amx_int8"), True, "bf16", "bf16"),
        (("avx2",), False, "fp32", "fp32"),
        (("avx2",), True, "int8", "fp32"),  # only if AUTO_INT8 (the quality bar) allows it
        (("avx2", "avx512f", "avx512_vnni"), False, "fp32", "fp32"),
        ((), False, "fp32", "fp32"),
        (("neon", "arm_bf16"), False, "fp32", "fp32"),
    ],
)
def test_pick_precision_auto_by_cpu_features(monkeypatch, features, auto_int8, encoder, training):
    _cpu(monkeypatch, *features)
    monkeypatch.setattr(D, "AUTO_INT8", auto_int8)
    assert D.pick_precision("auto", "cpu", int8=True) == encoder
    assert D.pick_precision("auto", "cpu") == training  # training never gets int8
    assert D.pick_precision("fp32", "cpu", int8=True) == "fp32"
    assert D.pick_precision("int8", "cpu", int8=True) == "int8"


def test_auto_int8_default_matches_the_measurement():
    # emmax-small at int8 misses the bar (docs/benchmarks.md), so auto stays fp32 on AVX2 CPUs
    assert D.AUTO_INT8 is False


def test_cpu_feature_detection(monkeypatch, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: AMD EPYC 7B13\n"
        "flags\t\t: fpu sse2 avx avx2 fma avx512f avx512_vnni\n\n"
        "processor\t: 1\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu sse2 avx avx2 amx_bf16\n"
    )
    real = D.Path

    monkeypatch.setattr(D, "Path", lambda p: real(cpuinfo) if p == "/proc/cpuinfo" else real(p))
    D.cpu_info.cache_clear()
    try:
        info = D.cpu_info()
        assert info == {"name": "AMD EPYC 7B13", "features": ["avx2", "avx512_vnni", "avx512f"]}
        assert D.cpu_has("avx2") and not D.cpu_has_bf16()  # the first CPU's flags are used
        assert D.cpu_summary() == "AMD EPYC 7B13 [avx2, avx512_vnni, avx512f]"
    finally:
        D.cpu_info.cache_clear()


def test_unknown_precision_lists_int8():
    with pytest.raises(EmmaxError) as e:
        D.pick_precision("int4", "cpu", int8=True)
    assert "int8" in (e.value.hint or "")
