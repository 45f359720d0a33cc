"""Devices and precision, in one place: CPU feature detection, ``--device`` resolution,
``--precision auto``, autocast, and the faiss GPU number.

``auto`` picks bf16 only where the hardware computes it natively: on CUDA devices that support
it, and on CPUs with AVX-512 BF16 or AMX. On AVX2-only CPUs bf16 is emulated and ~7x slower
than fp32 (docs/benchmarks.md), so ``auto`` stays fp32 there. ``int8`` (dynamic int8
quantisation of the linear layers, ``models/quant.py``) is a CPU inference precision that needs
no AVX-512: the encoder accepts it, training never gets it. ``auto`` does not pick it
(``AUTO_INT8``): on emmax-small it costs 0.89 / 0.79 points of Tatoeba XTREME-36
(xx->eng / eng->xx), more than the 0.2 allowed (docs/benchmarks.md). Benchmarks report the
same features (``cpu_info()``), so every figure names the CPU it was measured on."""

from __future__ import annotations

import functools
import platform
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from .errors import EmmaxError

PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
# Whether ``auto`` picks int8 for inference on CPUs without native bf16. It would only where
# int8 keeps Tatoeba XTREME-36 within 0.2 points of fp32 in both directions for emmax-small;
# measured (bench/results/embed_int8_quality.json: 87.89 / 87.46 against 88.78 / 88.24 at
# fp32), it does not, so auto stays fp32 there.
AUTO_INT8 = False
# /proc/cpuinfo flag -> the name we report
_FEATURES = {
    "avx2": "avx2",
    "avx512f": "avx512f",
    "avx512_bf16": "avx512_bf16",
    "avx512_vnni": "avx512_vnni",
    "avx_vnni": "avx_vnni",
    "amx_bf16": "amx_bf16",
    "amx_int8": "amx_int8",
    "asimd": "neon",
    "bf16": "arm_bf16",
}


@functools.lru_cache(maxsize=1)
def cpu_info() -> dict[str, Any]:
    """The CPU model name and the SIMD features emmax cares about.

    Returns:
        ``{"name": str, "features": sorted list of names}`` (AVX2, AVX-512 F/BF16/VNNI,
        AVX-VNNI, AMX, NEON), read from /proc/cpuinfo; an empty feature list elsewhere.
    """
    name, flags = platform.processor() or platform.machine(), set()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model") and value.strip():
            name = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return {"name": name, "features": sorted(v for k, v in _FEATURES.items() if k in flags)}


def cpu_has(feature: str) -> bool:
    """True if the CPU reports ``feature`` (a name from ``cpu_info()['features']``)."""
    return feature in cpu_info()["features"]


def cpu_has_bf16() -> bool:
    """True where the CPU computes bf16 natively (AVX-512 BF16 or AMX): there bf16 autocast
    is faster than fp32 with embeddings at cosine >= 0.9999 to fp32 (bench/)."""
    return cpu_has("avx512_bf16") or cpu_has("amx_bf16")


def cpu_summary() -> str:
    """One line for benchmark headers: ``<model name> [feature, ...]``."""
    info = cpu_info()
    return f"{info['name']} [{', '.join(info['features']) or 'no SIMD features detected'}]"


def resolve_device(device: str = "auto") -> str:
    """``auto|cpu|cuda|cuda:N`` -> the torch device string to use.

    Raises:
        EmmaxError: CUDA was asked for but is not available, or the name is unknown.
    """
    import torch

    dev = (device or "auto").strip().lower()
    if dev == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if dev == "cpu":
        return dev
    if dev == "cuda" or (dev.startswith("cuda:") and dev[5:].isdigit()):
        if not torch.cuda.is_available():
            raise EmmaxError(
                f"--device {device}: CUDA is not available here", hint="use --device cpu or auto"
            )
        if dev != "cuda" and int(dev[5:]) >= torch.cuda.device_count():
            raise EmmaxError(
                f"--device {device}: torch sees only {torch.cuda.device_count()} GPU(s)",
                hint="use --device cuda:0 or auto",
            )
        return dev
    raise EmmaxError(f"unknown device {device!r}", hint="use auto, cpu, cuda or cuda:N")


def pick_precision(precision: str, device: str, int8: bool = False) -> str:
    """Resolve ``--precision`` for a resolved ``device``.

    Args:
        precision: auto, fp32, bf16, fp16 or int8.
        device: a resolved device (``cpu``, ``cuda``, ``cuda:N``).
        int8: the caller runs inference and can run int8 (``Encoder``); training and other
            callers leave it False and never get int8.

    Returns:
        fp32, bf16, fp16 or int8. ``auto`` is bf16 on CUDA devices that support it (else fp16)
        and on CPUs with native bf16; elsewhere on CPU int8 if ``int8`` and ``AUTO_INT8``,
        else fp32.

    Raises:
        EmmaxError: unknown precision, fp16 on CPU, int8 on CUDA or where ``int8`` is False.
    """
    if precision not in PRECISIONS:
        raise EmmaxError(
            f"unknown precision {precision!r}", hint=f"use one of {', '.join(PRECISIONS)}"
        )
    cuda = device.startswith("cuda")
    if precision == "auto":
        if cuda:
            import torch

            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        if cpu_has_bf16():
            return "bf16"
        return "int8" if int8 and AUTO_INT8 else "fp32"
    if precision == "fp16" and not cuda:
        raise EmmaxError("fp16 needs a CUDA device", hint="use --precision bf16 or fp32 on CPU")
    if precision == "int8" and cuda:
        raise EmmaxError(
            "--precision int8 runs on CPU only", hint="use --precision bf16 or fp16 on CUDA"
        )
    if precision == "int8" and not int8:
        raise EmmaxError(
            "int8 is an inference precision (embedding), not one for training",
            hint="use fp32 or bf16",
        )
    return precision


def autocast(device: str, precision: str):
    """An autocast context for ``precision`` on ``device`` (a no-op for fp32 and int8, whose
    quantised layers take float32 inputs)."""
    if precision in ("fp32", "int8"):
        return nullcontext()
    import torch

    dt = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=dt)


def faiss_gpu_device(device: str) -> int | None:
    """Map ``auto|cpu|cuda|cuda:N`` to a faiss GPU number, or None for CPU.

    Raises:
        EmmaxError: a GPU was asked for but faiss has no GPU support or no such GPU.
    """
    import faiss

    dev = device.strip().lower()
    n_gpus = faiss.get_num_gpus() if hasattr(faiss, "StandardGpuResources") else 0
    if dev == "cpu":
        return None
    if dev == "auto":
        return 0 if n_gpus else None
    if dev == "cuda" or dev.startswith("cuda:"):
        num = dev.partition(":")[2] or "0"
        if not num.isdigit():
            raise EmmaxError(f"unknown device {device!r}", hint="use auto, cpu, cuda or cuda:N")
        if not n_gpus:
            raise EmmaxError(
                f"device {device!r}: this faiss build has no GPU support",
                hint="install faiss-gpu (pip install 'emmax[gpu]') or use --device cpu",
            )
        if int(num) >= n_gpus:
            raise EmmaxError(f"device {device!r}: faiss sees only {n_gpus} GPU(s)")
        return int(num)
    raise EmmaxError(f"unknown device {device!r}", hint="use auto, cpu, cuda or cuda:N")
