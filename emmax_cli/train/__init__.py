"""EMMA-X training (``emmax train``): config, data, momentum queue, losses, the training step,
seeds, the trainer, checkpoints, the run log, exports and torchrun support. Heavy modules load
on first use."""

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
    """Run the phases of a training config: the library function behind ``emmax train``.

    Args:
        config: a TOML path or a ``TrainConfig``.
        phases: the phases to run (default: all with steps, in order).
        resume: continue from ``<out>/checkpoints`` (exactly: same losses and log).
        overrides: ``section.key=value`` overrides (with a TOML path only).
        on_step: called as ``on_step(phase, step, total, record)`` after every step (rank
            zero), e.g. for a progress bar.

    Returns:
        The last log record of each phase that ran.

    Raises:
        ConfigError: a bad config or a missing path (checked before anything is written),
            a missing previous phase, or nothing to resume.
        InputError: unusable training data.
    """
    from .config import TrainConfig, load_config
    from .loop import Trainer

    cfg = config if isinstance(config, TrainConfig) else load_config(config, overrides)
    cross = phases == ["cross"] or (phases is None and cfg.cross.steps > 0)
    rest = [p for p in phases or [] if p != "cross"] or None
    out: dict[str, dict] = {}
    if phases != ["cross"]:
        out = Trainer(cfg, on_step=on_step).run(rest, resume=resume)
        resume = False
    if cross:
        from .cross import train_cross

        out["cross"] = train_cross(cfg, resume=resume, on_step=on_step)
    return out
