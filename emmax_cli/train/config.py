"""Training configuration: dataclasses read from one TOML file (``emmax train --config``).

Every hyper-parameter defaults to the paper's value where the paper gives one, else to the
reference code's or the emmax choice (shared/docs/emmax-algorithm.md §7 table). Unknown keys are
errors that name the key; ``--set section.key=value`` overrides are type-checked."""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from ..errors import ConfigError
from .sections import (  # noqa: F401  (re-exported: callers import the sections from here)
    EVAL_DIRS,
    CrossSection,
    DataSection,
    LossSection,
    ModelSection,
    OptimSection,
    PhaseSection,
    RunSection,
)

log = logging.getLogger(__name__)

PHASES = ("ctl", "gmm", "em")


@dataclass
class TrainConfig:
    """A whole training config: one TOML file, one section per dataclass.

    Build it with ``load_config`` (TOML plus ``--set`` overrides, type-checked) or
    ``config_from_dict``; ``validate`` checks the values, ``check_paths`` the files."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    phases: PhaseSection = field(default_factory=PhaseSection)
    loss: LossSection = field(default_factory=LossSection)
    optim: OptimSection = field(default_factory=OptimSection)
    run: RunSection = field(default_factory=RunSection)
    cross: CrossSection = field(default_factory=CrossSection)

    def to_dict(self) -> dict[str, Any]:
        """The config as nested dicts (what checkpoints store).

        Returns:
            ``{section: {key: value}}``.
        """
        return asdict(self)

    def phase_steps(self, phase: str) -> int:
        """The optimiser steps of a phase.

        Args:
            phase: ``ctl``, ``gmm`` or ``em``.

        Returns:
            ``phases.ctl_steps``, 1 (the gmm warm-up is one fit) or ``phases.em_steps``.
        """
        return {"ctl": self.phases.ctl_steps, "gmm": 1, "em": self.phases.em_steps}[phase]

    def taus(self) -> list[float]:
        """Per-rank temperatures tau_1..tau_{N-1}: linear from tau_max (r=1) to tau_min (r=N-1);
        N = 2 gives [tau_min] (§5.1; avoids F13).

        Returns:
            N - 1 temperatures, for ranks 1..N-1.
        """
        n, lo, hi = self.loss.num_ranks, self.loss.tau_min, self.loss.tau_max
        if n == 2:
            return [lo]
        return [lo + (hi - lo) * (n - 1 - r) / (n - 2) for r in range(1, n)]

    def validate(self) -> TrainConfig:
        """Check the values (not the paths: ``check_paths`` does that before a run).

        Returns:
            ``self``.

        Raises:
            ConfigError: the first invalid value, named by its key.
        """
        r, lo = self.run, self.loss
        checks = [
            (lo.num_ranks >= 2, "loss.num_ranks must be >= 2"),
            (self.cross.steps >= 0, "cross.steps must be >= 0"),
            (self.cross.layers >= 1, "cross.layers must be >= 1"),
            (self.cross.batch_pairs >= 4, "cross.batch_pairs must be >= 4"),
            (self.cross.max_length >= 8, "cross.max_length must be >= 8"),
            (self.cross.lr > 0, "cross.lr must be > 0"),
            (0 <= self.cross.calibrate_true < 1, "cross.calibrate_true must be in [0, 1)"),
            (0 < lo.tau_min <= lo.tau_max, "need 0 < loss.tau_min <= loss.tau_max"),
            (0 <= lo.label_smoothing < 1, "loss.label_smoothing must be in [0, 1)"),
            (0 < lo.mlm_prob < 1, "loss.mlm_prob must be in (0, 1)"),
            (r.batch_pairs >= 2, "run.batch_pairs must be >= 2"),
            (r.queue_size >= 0, "run.queue_size must be >= 0"),
            (0 <= r.momentum < 1, "run.momentum must be in [0, 1)"),
            (
                r.precision in ("auto", "fp32", "bf16", "fp16"),
                "run.precision: auto, fp32, bf16 or fp16",
            ),
            (self.optim.grad_accum >= 1, "optim.grad_accum must be >= 1"),
            (0 <= self.data.mono_ratio < 1, "data.mono_ratio must be in [0, 1)"),
            (0 <= self.phases.gmm_golden < 1, "phases.gmm_golden must be in [0, 1)"),
            (self.model.max_length >= 4, "model.max_length must be >= 4"),
            (self.model.train_layers != 0, "model.train_layers: -1 (all) or a positive count"),
            (r.sub_batches >= 1, "run.sub_batches must be >= 1"),
            (
                r.key_precision in ("same", "auto", "fp32", "bf16"),
                "run.key_precision: same, auto, fp32 or bf16",
            ),
            (
                r.trunk_precision in ("same", "auto", "fp32", "bf16"),
                "run.trunk_precision: same, auto, fp32 or bf16",
            ),
            (r.level_grad_every >= 0, "run.level_grad_every must be >= 0"),
            (r.level_grad_warn_every >= 1, "run.level_grad_warn_every must be >= 1"),
            (lo.level_norm in ("present", "all"), "loss.level_norm: present or all"),
            (lo.lower_weight >= 0, "loss.lower_weight must be >= 0"),
            (0 <= lo.related_min_posterior <= 1, "loss.related_min_posterior must be in [0, 1]"),
            (lo.top_positives in ("gmm", "dup_mnn"), "loss.top_positives: gmm or dup_mnn"),
            (0 < lo.label_freq_rate <= 1, "loss.label_freq_rate must be in (0, 1]"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)
        if not self.data.parallel:
            raise ConfigError("data.parallel is empty", hint="list parallel TSV files or globs")
        return self


def _build(cls, data: dict[str, Any], where: str):
    fields = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(
                f"unknown config key {where + key!r}", hint=f"known keys: {', '.join(fields)}"
            )
        if cls is TrainConfig:
            if not isinstance(value, dict):
                raise ConfigError(f"config key {where + key!r} must be a table")
            kwargs[key] = _build(_SECTIONS[key], value, f"{key}.")
        else:
            kwargs[key] = _check_type(cls(), key, value, where)
    return cls(**kwargs)


def _check_type(default_obj, key: str, value, where: str):
    default = getattr(default_obj, key)
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, str):
        ok = isinstance(value, str)
    elif isinstance(default, list):
        ok = isinstance(value, list)
    else:
        ok = True
    if not ok:
        raise ConfigError(
            f"config key {where + key!r}: expected {type(default).__name__}, "
            f"got {type(value).__name__} ({value!r})"
        )
    return value


_SECTIONS = {
    "model": ModelSection,
    "data": DataSection,
    "phases": PhaseSection,
    "loss": LossSection,
    "optim": OptimSection,
    "run": RunSection,
    "cross": CrossSection,
}


# Config values that may change on --resume without a warning (they do not change the maths);
# the phase lengths may change too (a phase may be extended).
RESUMABLE = {
    "run.log_every",
    "run.eval_every",
    "run.save_every",
    "run.keep_checkpoints",
    "run.out",
    "run.device",
    "run.threads",
    "run.level_grad_every",
    "run.level_grad_warn_every",
    "data.dev",
    "data.dev_pairs",
}


def adopt_saved_config(cfg: TrainConfig, saved: dict[str, Any]) -> TrainConfig:
    """The config of a resumed run: the checkpoint's values win, except those in
    ``RESUMABLE`` and the ``[phases]`` lengths; every difference that is overruled is warned
    about by name (nanoGPT and torchtune take the architecture and seed from the checkpoint).

    Args:
        cfg: the config given now.
        saved: the checkpoint's config, as ``TrainConfig.to_dict()`` wrote it.

    Returns:
        The config to resume with.
    """
    mine = cfg.to_dict()
    for sec, vals in saved.items():
        for k, v in vals.items():
            key = f"{sec}.{k}"
            if mine[sec][k] != v and key not in RESUMABLE and sec != "phases":
                log.warning(
                    "resume: %s = %r in the checkpoint, %r in the config; using the checkpoint's",
                    key,
                    v,
                    mine[sec][k],
                )
                mine[sec][k] = v
    return config_from_dict(mine)


def config_from_dict(d: dict[str, Any]) -> TrainConfig:
    """Build a config from nested dicts (a parsed TOML file), type-checking every value.

    Args:
        d: ``{section: {key: value}}``; missing keys take their defaults.

    Returns:
        The config (not yet validated).

    Raises:
        ConfigError: an unknown section or key, or a value of the wrong type.
    """
    return _build(TrainConfig, d, "")


def parse_override(s: str) -> tuple[str, Any]:
    """Parse one ``--set`` override.

    Args:
        s: ``section.key=value`` with a TOML value (strings may be bare).

    Returns:
        ``("section.key", value)``.

    Raises:
        ConfigError: no ``=`` or no section.
    """
    if "=" not in s or "." not in s.split("=", 1)[0]:
        raise ConfigError(f"bad override {s!r}", hint="use section.key=value, e.g. run.seed=1")
    key, raw = s.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip(), value


def load_config(
    path: str | os.PathLike | None, overrides: list[str] | tuple[str, ...] = ()
) -> TrainConfig:
    """Read a TOML config, apply ``section.key=value`` overrides and validate the values.

    Args:
        path: the TOML file, or None for the defaults.
        overrides: ``--set`` overrides, applied in order.

    Returns:
        The validated config.

    Raises:
        ConfigError: unreadable TOML, an unknown key, a wrong type or an invalid value.
    """
    d: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            d = tomllib.loads(p.read_text(encoding="utf-8"))
        except OSError as e:
            raise ConfigError(f"{p}: cannot read config ({e.strerror})") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{p}: invalid TOML ({e})") from None
    for ov in overrides:
        key, value = parse_override(ov)
        section, name = key.split(".", 1)
        d.setdefault(section, {})
        if not isinstance(d[section], dict):
            raise ConfigError(f"unknown config key {section!r}")
        d[section][name] = value
    return config_from_dict(d).validate()


def dump_toml(cfg: TrainConfig) -> str:
    """The resolved config as TOML (saved in every checkpoint).

    Args:
        cfg: the config.

    Returns:
        TOML text that ``load_config`` reads back to an equal config.
    """
    import json

    def value(v) -> str:
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + "}"
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return json.dumps(v)

    lines = []
    for section, values in cfg.to_dict().items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {value(v)}" for k, v in values.items()]
        lines.append("")
    return "\n".join(lines)
