"""The model a phase exports: a complete emmax model directory (``emmax.json``, ``encoder/``,
the GMM head once trained, the projection if any), written atomically (``io.atomic.atomic_dir``):
the previous export stays in place until the new one is complete, and nothing is left behind
on failure."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from ..io.atomic import atomic_dir
from .config import TrainConfig


def export_model(
    root: str | os.PathLike,
    model: nn.Module,
    tokenizer: Any,
    base_config: Any,
    top: nn.ModuleDict,
    cfg: TrainConfig,
    phase: str,
    gmm: Any = None,
) -> Path:
    """Write (or replace) the model directory ``root``.

    Args:
        root: the model directory to write, e.g. ``<out>/ctl``.
        model: the transformers encoder, with the trained layers in place.
        tokenizer: the base model's ``tokenizers.Tokenizer`` (its truncation is kept).
        base_config: the ``ModelConfig`` of the model the phase started from.
        top: the trained top (``SplitEncoder.top``); its ``proj`` is saved if present.
        cfg: the resolved training config (recorded in ``emmax.json``).
        phase: the phase that produced the model.
        gmm: the GMM head to save with the model (em, gmm), or None.

    Returns:
        ``root``.

    Raises:
        OSError: the directory cannot be written (the previous export, if any, is kept).
    """
    from ..models.loading import ModelConfig, save_model_dir, sha256_file

    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    dim = int(model.config.hidden_size)
    with atomic_dir(root, replace=True) as tmp:
        files = {}
        if gmm is not None:
            gmm.save(tmp)
            files = {f: sha256_file(tmp / f) for f in ("gmm_head.safetensors", "gmm_head.json")}
        extra: dict[str, Any] = {
            "trained_by": "emmax train",
            "phase": phase,
            "train_config": cfg.to_dict(),
        }
        if "proj" in top:
            from safetensors.torch import save_file

            save_file(
                {k: v.contiguous() for k, v in top["proj"].state_dict().items()},
                str(tmp / "projection.safetensors"),
            )
            extra["projection"] = "projection.safetensors"
        bc = base_config
        mc = ModelConfig(
            name=cfg.model.name,
            pooling=bc.pooling,
            normalize=bc.normalize,
            prefix=bc.prefix,
            max_length=bc.max_length,
            dim=dim,
            base_model=bc.base_model if bc.extra.get("trained_by") else bc.name,
            mine_threshold=bc.mine_threshold,
            mine_threshold_source=bc.mine_threshold_source,
            num_ranks=cfg.loss.num_ranks if gmm is not None else None,
            files=files,
            extra=extra,
        )
        save_model_dir(tmp, model, tokenizer, mc)
    return root
