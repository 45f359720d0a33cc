"""The GMM head's files in a model directory: ``gmm_head.safetensors`` (weights) and
``gmm_head.json`` (format, number of ranks, dim, log-variance bounds, rank names), written
atomically and read with one-line errors. ``gmm.GMMHead.save`` / ``from_dir`` use them."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import ModelLoadError
from ..io.atomic import atomic_output

WEIGHTS_FILE = "gmm_head.safetensors"
CONFIG_FILE = "gmm_head.json"
HEAD_FORMAT = 1
FIX = "re-copy the model directory or retrain the head with `emmax train`"


def write_head_files(directory: str | os.PathLike, tensors: dict, config: dict[str, Any]) -> Path:
    """Write the head's weights and config into ``directory`` (created if missing), each file
    atomically.

    Args:
        directory: the model directory.
        tensors: name -> contiguous CPU tensor.
        config: the ``gmm_head.json`` object.

    Returns:
        The weights path.
    """
    from safetensors.torch import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    with atomic_output(d / WEIGHTS_FILE) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "emmax-gmm-head"})
    with atomic_output(d / CONFIG_FILE) as tmp:
        tmp.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return d / WEIGHTS_FILE


def read_head_files(directory: str | os.PathLike) -> tuple[dict[str, Any], dict]:
    """Read the head's config and weights.

    Args:
        directory: the model directory.

    Returns:
        ``(config, tensors)``; config has ``num_ranks`` and ``dim`` as ints, ``log_var_min``
        and ``log_var_max`` (None where absent) and ``rank_names`` (or None).

    Raises:
        ModelLoadError: a missing, unreadable or too new file.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    d = Path(directory)
    wpath, cpath = d / WEIGHTS_FILE, d / CONFIG_FILE
    for p in (wpath, cpath):
        if not p.exists():
            raise ModelLoadError(f"{p}: GMM head file is missing", hint=FIX)
    try:
        raw = json.loads(cpath.read_text(encoding="utf-8"))
        cfg = {
            "num_ranks": int(raw["num_ranks"]),
            "dim": int(raw["dim"]),
            "log_var_min": float(raw["log_var_min"]) if "log_var_min" in raw else None,
            "log_var_max": float(raw["log_var_max"]) if "log_var_max" in raw else None,
            "rank_names": raw.get("rank_names"),
        }
        version = int(raw.get("format_version", HEAD_FORMAT))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelLoadError(
            f"{cpath}: unreadable GMM head config ({type(e).__name__}: {e})", hint=FIX
        ) from None
    if version > HEAD_FORMAT:
        raise ModelLoadError(
            f"{cpath}: GMM head format {version} is newer than this emmax supports ({HEAD_FORMAT})",
            hint="upgrade emmax",
        )
    try:
        tensors = load_file(str(wpath))
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelLoadError(
            f"{wpath}: corrupt GMM head weights ({str(e).splitlines()[0]})", hint=FIX
        ) from None
    return cfg, tensors
