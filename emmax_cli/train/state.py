"""What a checkpoint holds of a set-up trainer (``trainer_state.pt``), how it is put back, and
the hand-over of ctl's optimiser state to em (``optim.em_continue``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .checkpoint import checkpoint_root, latest_complete, load_checkpoint
from .seed import restore_rng_state

log = logging.getLogger(__name__)


def trainer_state(tr: Any, rngs: list[dict]) -> dict[str, Any]:
    """The trainer state a checkpoint saves beside the trained weights.

    Args:
        tr: a set-up trainer (``loop.Trainer``) of the ctl or em phase.
        rngs: every rank's RNG states (``seed.capture_rng_state`` plus ``mask_gen``).

    Returns:
        Optimisers, scaler, key encoder and queue, MLM head, em state, RNG states, step,
        seed, data position, time and the resolved config.
    """
    return {
        "phase": tr.phase,
        "step": tr.step,
        "seed": tr.cfg.run.seed,
        "world": tr.dist.world,
        "opt": tr.opt.state_dict(),
        "gmm_opt": tr.gmm_opt.state_dict() if tr.gmm_opt else None,
        "scaler": tr.scaler.state_dict(),
        "queue": tr.mq.state_dict(),
        "mlm": tr.mlm.state_dict() if tr.mlm else None,
        "em_state": tr.em_state.state_dict() if tr.em_state is not None else None,
        "em_continued": tr.em_continued,
        "rng": rngs,
        "data_position": tr.sampler.drawn,
        "elapsed": tr.elapsed,
        "config": tr.cfg.to_dict(),
    }


def restore_state(tr: Any, path: Path, weights: dict, state: dict) -> None:
    """Put a checkpoint back into a set-up trainer of the same phase.

    Args:
        tr: the trainer.
        path: the checkpoint folder (its GMM head is read from there).
        weights: the trained parameters (``load_checkpoint``).
        state: the trainer state (``trainer_state``).

    Raises:
        ConfigError: the checkpoint was made with another number of processes or in another
            phase.
    """
    if state.get("world", 1) != tr.dist.world:
        raise ConfigError(
            f"checkpoint made with {state['world']} processes, now {tr.dist.world}",
            hint="resume with the same number of processes",
        )
    if state.get("phase", tr.phase) != tr.phase:
        raise ConfigError(f"{path} is a checkpoint of phase {state['phase']}, not {tr.phase}")
    tr.enc.top.load_state_dict(weights)
    tr.mq.load_state_dict(state["queue"])
    tr.opt.load_state_dict(state["opt"])
    if tr.gmm_opt is not None and state.get("gmm_opt"):
        tr.gmm_opt.load_state_dict(state["gmm_opt"])
    if tr.mlm is not None and state.get("mlm"):
        tr.mlm.load_state_dict(state["mlm"])
    if tr.em_state is not None and state.get("em_state"):
        tr.em_state.load_state_dict(state["em_state"])
    tr.scaler.load_state_dict(state["scaler"])
    if tr.gmm is not None:
        from ..models.gmm import GMMHead

        tr.gmm.load_state_dict(GMMHead.from_dir(path, dim=tr.dim).state_dict())
    tr.em_continued = bool(state.get("em_continued", False))
    tr.step, tr.elapsed = int(state["step"]), float(state.get("elapsed", 0.0))
    tr.sampler.skip(int(state["data_position"]))
    rng = dict(state["rng"][tr.dist.rank])
    tr.mask_gen.set_state(rng.pop("mask_gen"))
    restore_rng_state(rng)
    log.info("resumed phase %s at step %d", tr.phase, tr.step)


def continue_from_ctl(tr: Any) -> bool:
    """em with ``optim.em_continue``: load ctl's final AdamW state (and MLM head) from the
    newest ctl checkpoint of the same run folder, so that em continues ctl's optimiser
    instead of starting a fresh one with a warm-up.

    Args:
        tr: a trainer set up for em (not resumed: a resumed em restores its own state).

    Returns:
        True if a ctl state was loaded; False (with a warning) if there is none, or it does
        not fit (another ``model.train_layers`` or ``loss.mlm``): em then starts fresh.
    """
    found = latest_complete(checkpoint_root(tr.out) / "ctl")
    if found is None:
        log.warning(
            "optim.em_continue: no ctl checkpoint in %s; em starts a fresh optimiser", tr.out
        )
        return False
    _, state = load_checkpoint(found)
    try:
        tr.opt.load_state_dict(state["opt"])
        if tr.mlm is not None and state.get("mlm"):
            tr.mlm.load_state_dict(state["mlm"])
    except (ValueError, KeyError, RuntimeError) as e:
        log.warning(
            "optim.em_continue: %s does not fit this em run (%s); fresh optimiser", found, e
        )
        return False
    log.info("em continues the optimiser state of %s", found)
    return True
