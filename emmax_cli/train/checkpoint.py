"""Atomic training checkpoints (torchtune split, nanoGPT contents), and the one place that finds
the checkpoint a ``--resume`` continues from.

    <out>/checkpoints/<phase>/step-000123/
        trainable.safetensors   the query encoder's trained parameters (fp32; the frozen base
                                 is not copied: it is ``model.base`` of the config)
        gmm_head.safetensors    GMM head weights and rank means (+ gmm_head.json), once trained
        trainer_state.pt        optimisers, step, phase, key encoder + queue, MLM head, RNG
                                 states, seed, data position
        config.toml             the resolved config
    <out>/checkpoints/latest    text: ``<phase>/step-000123``, the newest complete checkpoint

A checkpoint is written into a hidden temporary folder beside ``step-000123/`` and renamed when
complete (``io.atomic.atomic_dir``; removed on any error); ``latest`` is replaced last, so a
crash at any point leaves the previous checkpoint usable."""

from __future__ import annotations

import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from ..io.atomic import atomic_dir, atomic_output, remove_path
from .config import PHASES

log = logging.getLogger(__name__)

WEIGHTS = "trainable.safetensors"
STATE = "trainer_state.pt"
CONFIG = "config.toml"
LATEST = "latest"
_STEP_DIR = re.compile(r"step-(\d+)")


def checkpoint_root(out: str | os.PathLike) -> Path:
    """The folder that holds a run's checkpoints.

    Args:
        out: the run folder (``run.out``).

    Returns:
        ``<out>/checkpoints``.
    """
    return Path(out) / "checkpoints"


def save_checkpoint(
    out: str | os.PathLike,
    phase: str,
    step: int,
    weights: dict[str, torch.Tensor],
    state: dict[str, Any],
    config_text: str,
    gmm: Any = None,
    keep: int = 2,
) -> Path:
    """Write checkpoint ``step`` atomically, point ``latest`` at it, keep the newest ``keep``.

    Args:
        out: the run folder.
        phase: ``ctl`` or ``em``.
        step: the number of optimiser steps done.
        weights: the trained parameters (saved as fp32 safetensors).
        state: the trainer state (``torch.save``d).
        config_text: the resolved config as TOML.
        gmm: a ``GMMHead`` to save beside the weights, or None.
        keep: how many checkpoints of the phase to keep (0 keeps all).

    Returns:
        The checkpoint folder, ``<out>/checkpoints/<phase>/step-<step>``.

    Raises:
        OSError: the folder cannot be written; nothing is left behind, and ``latest`` still
            names the previous checkpoint.
    """
    from safetensors.torch import save_file

    root = checkpoint_root(out) / phase
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".step-*"):  # temporaries of a process that was killed (SIGKILL)
        remove_path(stale)
    final = root / f"step-{step:06d}"
    with atomic_dir(final, replace=True) as tmp:
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in weights.items()}, str(tmp / WEIGHTS)
        )
        if gmm is not None:
            gmm.save(tmp)
        torch.save(state, tmp / STATE)
        (tmp / CONFIG).write_text(config_text, encoding="utf-8")
    with atomic_output(checkpoint_root(out) / LATEST) as t:
        t.write_text(f"{phase}/{final.name}\n", encoding="utf-8")
    if keep > 0:
        for old in _complete(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _complete(phase_dir: Path) -> list[Path]:
    """The complete checkpoints of one phase folder, oldest first."""
    if not phase_dir.is_dir():
        return []
    found = [p for p in phase_dir.iterdir() if _STEP_DIR.fullmatch(p.name) and p.is_dir()]
    return sorted((p for p in found if (p / STATE).exists()), key=_step_of)


def latest_complete(phase_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint of one phase folder.

    Args:
        phase_dir: ``<out>/checkpoints/<phase>``.

    Returns:
        Its folder, or None if the phase has no complete checkpoint.
    """
    found = _complete(Path(phase_dir))
    return found[-1] if found else None


def _step_of(p: Path) -> int:
    return int(_STEP_DIR.fullmatch(p.name).group(1))


@dataclass(frozen=True)
class ResumePoint:
    """A checkpoint to resume from.

    Attributes:
        path: the checkpoint folder.
        phase: the phase it belongs to.
        step: the optimiser steps done when it was written.
    """

    path: Path
    phase: str
    step: int


def find_resume(out: str | os.PathLike, phase: str | None = None) -> ResumePoint:
    """The checkpoint that ``--resume`` continues from: the one ``latest`` names, else (no
    ``latest`` file) the newest complete checkpoint of the newest phase.

    Only the file names are read, so this is cheap; ``load_checkpoint`` reads the contents.

    Args:
        out: the run folder.
        phase: if given, the checkpoint must belong to this phase.

    Returns:
        The checkpoint's folder, phase and step.

    Raises:
        ConfigError: there is no checkpoint; ``latest`` names an incomplete or missing one;
            or the newest checkpoint belongs to another phase than ``phase``.
    """
    root = checkpoint_root(out)
    pointer = root / LATEST
    if pointer.exists():
        rel = pointer.read_text(encoding="utf-8").strip()
        ph, _, name = rel.partition("/")
        if ph not in PHASES or not _STEP_DIR.fullmatch(name) or not (root / rel / STATE).exists():
            raise ConfigError(
                f"{pointer} names {rel!r}, which is incomplete or missing",
                hint=f"delete {pointer} to resume from the newest complete checkpoint, "
                "or start without --resume",
            )
        point = ResumePoint(root / rel, ph, _step_of(root / rel))
    else:
        found = [(p, d) for p in PHASES for d in _complete(root / p)]
        if not found:
            raise ConfigError(f"{out}: no checkpoint to resume from", hint="start without --resume")
        ph, d = found[-1]  # phases in order, steps ascending: the last is the newest
        point = ResumePoint(d, ph, _step_of(d))
        log.warning("%s is missing: resuming from %s/%s", pointer, ph, d.name)
    if phase is not None and point.phase != phase:
        raise ConfigError(
            f"the newest checkpoint {point.phase}/{point.path.name} is from phase "
            f"{point.phase}, not {phase}",
            hint=f"resume with --phase {point.phase}, or without --phase",
        )
    return point


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint folder written by ``save_checkpoint``.

    Args:
        path: the checkpoint folder (``ResumePoint.path``).

    Returns:
        ``(weights, state)``: the trained parameters and the trainer state.

    Raises:
        ConfigError: a checkpoint file is missing.
    """
    from safetensors.torch import load_file

    p = Path(path)
    for f in (WEIGHTS, STATE):
        if not (p / f).exists():
            raise ConfigError(f"{p}: checkpoint file {f} is missing", hint="use another checkpoint")
    state = torch.load(p / STATE, map_location="cpu", weights_only=False)
    return load_file(str(p / WEIGHTS)), state
