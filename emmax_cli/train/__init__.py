"""EMMA-X training (``emmax train``): config, data, momentum queue, losses, the trainer,
checkpoints and torchrun support. Heavy modules load on first use."""

from __future__ import annotations

import os
from typing import Any

__all__ = ["TrainConfig", "load_config", "Trainer", "train"]


def __getattr__(name: str):
    if name in ("TrainConfig", "load_config"):
        from . import config

        return getattr(config, name)
    if name == "Trainer":
        from .loop import Trainer

        return Trainer
    raise AttributeError(f"module 'emmax_cli.train' has no attribute {name!r}")


def train(
    config: str | os.PathLike | Any,
    phases: list[str] | None = None,
    resume: bool = False,
    overrides: list[str] | tuple[str, ...] = (),
    on_step=None,
) -> dict[str, dict]:
    """Run the phases of a training config (a TOML path or a ``TrainConfig``); returns the
    last log record of each phase. ``on_step(phase, step, total, record)`` is called after
    every step (rank zero). The library function behind ``emmax train``."""
    from .config import TrainConfig, load_config
    from .loop import Trainer

    cfg = config if isinstance(config, TrainConfig) else load_config(config, overrides)
    return Trainer(cfg, on_step=on_step).run(phases, resume=resume)
