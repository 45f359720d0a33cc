"""Atomic training checkpoints (torchtune split, nanoGPT contents).

    <out>/checkpoints/<phase>/step-000123/
        trainable.safetensors   the query encoder's trained parameters (fp32; the frozen base
                                 is not copied: it is ``model.base`` of the config)
        gmm_head.safetensors    GMM head weights and rank means (+ gmm_head.json), once trained
        trainer_state.pt        optimisers, step, phase, key encoder + queue, MLM head, RNG
                                 states, seed, data position
        config.toml             the resolved config
    <out>/checkpoints/latest    text: ``<phase>/step-000123``, the newest complete checkpoint

A checkpoint is written to ``step-000123.tmp/`` and renamed when complete; ``latest`` is
replaced last, so a crash at any point leaves the previous checkpoint usable."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import torch

from ..errors import ConfigError
from ..io.atomic import atomic_output, remove_path

log = logging.getLogger(__name__)

WEIGHTS = "trainable.safetensors"
STATE = "trainer_state.pt"
CONFIG = "config.toml"


def checkpoint_root(out: str | os.PathLike) -> Path:
    return Path(out) / "checkpoints"


def save_checkpoint(
    out: str | os.PathLike,
    phase: str,
    step: int,
    weights: dict[str, torch.Tensor],
    state: dict,
    config_text: str,
    gmm=None,
    keep: int = 2,
) -> Path:
    """Write checkpoint ``step`` atomically, point ``latest`` at it, keep the newest ``keep``."""
    from safetensors.torch import save_file

    root = checkpoint_root(out) / phase
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = root / f"step-{step:06d}.tmp"
    remove_path(tmp)
    tmp.mkdir()
    try:
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in weights.items()}, str(tmp / WEIGHTS)
        )
        if gmm is not None:
            gmm.save(tmp)
        torch.save(state, tmp / STATE)
        (tmp / CONFIG).write_text(config_text, encoding="utf-8")
        remove_path(final)
        os.replace(tmp, final)
    except BaseException:
        remove_path(tmp)
        raise
    with atomic_output(checkpoint_root(out) / "latest") as t:
        t.write_text(f"{phase}/{final.name}\n", encoding="utf-8")
    if keep > 0:
        done = sorted(p for p in root.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))
        for old in done[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(out: str | os.PathLike) -> Path | None:
    """The checkpoint named by ``latest``, or None if there is none."""
    f = checkpoint_root(out) / "latest"
    if not f.exists():
        return None
    p = checkpoint_root(out) / f.read_text(encoding="utf-8").strip()
    if not (p / STATE).exists():
        raise ConfigError(
            f"{f} names {p.name}, which is incomplete or missing",
            hint="delete the latest file to fall back, or start without --resume",
        )
    return p


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """(trained weights, trainer state) of a checkpoint directory."""
    from safetensors.torch import load_file

    p = Path(path)
    for f in (WEIGHTS, STATE):
        if not (p / f).exists():
            raise ConfigError(f"{p}: checkpoint file {f} is missing", hint="use another checkpoint")
    state = torch.load(p / STATE, map_location="cpu", weights_only=False)
    return load_file(str(p / WEIGHTS)), state
