"""``emmax train``: run the phases of a training config, a call to ``train.train``."""

from __future__ import annotations

import json
import logging

import click

from .options import DEVICES, quiet_of, quiet_option

log = logging.getLogger("emmax_cli")


@click.command("train")
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="Training recipe (TOML); e.g. configs/emmax-small.toml, configs/train/tiny.toml.",
)
@click.option(
    "--phase",
    type=click.Choice(["ctl", "gmm", "em", "cross"]),
    default=None,
    help="Run one phase: ctl (encoder warm-up), gmm (GMM warm-up), em, or cross (the VECO "
    "cross-attention pair scorer over the frozen encoder, [cross] section). Default: all, in "
    "order (cross only where cross.steps > 0).",
)
@click.option("--resume", is_flag=True, help="Continue from <out>/checkpoints/latest (exactly).")
@click.option(
    "--out", default=None, help="Run folder (checkpoints, log, exported models); overrides run.out."
)
@click.option("--device", type=DEVICES, default=None, help="Overrides run.device.")
@click.option(
    "--seed", type=int, default=None, help="Overrides run.seed (the checkpoint's wins on --resume)."
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="SECTION.KEY=VALUE",
    help="Override a config value, type-checked (repeatable), e.g. --set phases.em_steps=50.",
)
@quiet_option
@click.pass_context
def command(ctx: click.Context, config_path, phase, resume, out, device, seed, overrides, quiet):
    """Train an EMMA-X model: ctl -> gmm -> em, one model folder per phase in --out.

    Logs every run.log_every steps to <out>/train_log.jsonl (losses, lr, GMM/encoder agreement,
    rank distribution, dev accuracy); checkpoints go to <out>/checkpoints/.

    \b
    Examples:
      emmax train --config configs/emmax-small.toml
      emmax train --config configs/emmax-small.toml --phase em --resume
      emmax train --config configs/emmax-small-cross.toml --phase cross
      torchrun --nproc_per_node 2 -m emmax_cli train --config configs/train/tiny.toml
    """
    from ..console import step_progress
    from ..train import train
    from ..train.config import load_config

    extra = list(overrides)
    for key, value in (("run.out", out), ("run.device", device)):
        if value:
            extra.append(f"{key}={json.dumps(value)}")  # a TOML string
    if seed is not None:
        extra.append(f"run.seed={seed}")
    cfg = load_config(config_path, extra)  # parsed here to name the run folder below
    with step_progress(enabled=not quiet_of(ctx, quiet)) as on_step:
        results = train(cfg, [phase] if phase else None, resume=resume, on_step=on_step)
    for p, rec in results.items():
        floats = ", ".join(f"{k} {v:.4g}" for k, v in rec.items() if isinstance(v, float))
        log.info("phase %s done: model in %s/%s (%s)", p, cfg.run.out, p, floats)
