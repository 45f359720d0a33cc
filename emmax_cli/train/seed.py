"""Seeds and random-number-generator state (torchtune ``training/seed.py``; nanoGPT's seed plus
rank). A checkpoint stores every rank's RNG state so that a resumed run draws the same dropout
masks and samples as an uninterrupted one."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def set_seed(seed: int, rank: int = 0) -> int:
    """Seed torch, numpy and ``random`` with ``seed + rank``.

    Args:
        seed: the run's base seed (``run.seed``).
        rank: the process rank under torchrun (0 in a single process), so that every rank
            draws different dropout masks.

    Returns:
        The seed actually used, ``seed + rank``.
    """
    s = seed + rank
    torch.manual_seed(s)
    np.random.seed(s % 2**32)
    random.seed(s)
    return s


def capture_rng_state() -> dict[str, Any]:
    """The state of every global generator of this process.

    Returns:
        ``{"torch", "numpy", "python"}`` states, plus ``"cuda"`` (one per device) where CUDA
        is available; ``restore_rng_state`` puts them back.
    """
    st: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore the generators captured by ``capture_rng_state``.

    Args:
        state: a dict from ``capture_rng_state``; a ``"cuda"`` entry is ignored where CUDA
            is not available (a GPU checkpoint resumed on CPU).
    """
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
