"""CUDA and CPU embeddings agree (fp32, bf16 and fp16 on the GPU against fp32 on the CPU).

Skipped without CUDA; run with `pytest -m gpu tests/test_gpu.py` on a machine with a GPU."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TATOEBA, read_tatoeba

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

PRECISIONS = ("fp32", "bf16", "fp16")
TEXTS = ["guten morgen", "hello tom and mary", "the cat " * 100, "merci", "a dog and a house"]


def _agree(model, texts: list[str], precision: str) -> float:
    from emmax_cli.models.encoder import Encoder

    cpu = Encoder.load(model, device="cpu", precision="fp32").encode(texts)
    gpu_enc = Encoder.load(model, device="cuda", precision=precision)
    assert gpu_enc.device.startswith("cuda") and gpu_enc.precision == precision
    gpu = gpu_enc.encode(texts)
    assert gpu.dtype == np.float32 and gpu.shape == cpu.shape
    return float((cpu * gpu).sum(1).min())


@pytest.mark.parametrize("precision", PRECISIONS)
def test_tiny_model_cuda_equals_cpu(tiny_model_dir, precision):
    assert _agree(str(tiny_model_dir), TEXTS, precision) >= 0.999


@pytest.mark.real
@pytest.mark.parametrize("precision", PRECISIONS)
def test_default_model_cuda_equals_cpu(precision):
    if not TATOEBA.exists():
        pytest.skip("../shared/data is not available")
    de, en = read_tatoeba("deu")
    assert _agree(None, de[:200] + en[:200], precision) >= 0.999


def test_auto_precision_on_cuda_is_half(tiny_model_dir):
    from emmax_cli.models.encoder import Encoder

    enc = Encoder.load(str(tiny_model_dir), device="auto", precision="auto")
    assert enc.device == "cuda" and enc.precision in ("bf16", "fp16")
