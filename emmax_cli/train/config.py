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

log = logging.getLogger(__name__)

PHASES = ("ctl", "gmm", "em")
EVAL_DIRS = ["../shared/data/tatoeba", "../shared/data/ud_pud", "../shared/data/flores200"]


@dataclass
class ModelSection:
    """``[model]``: the encoder a run starts from and which of its parts train."""

    base: str = "multilingual-e5-small"  # name or directory of the starting encoder
    name: str = "emmax"  # name written into emmax.json of the exported models
    max_length: int = 128  # tokens per sentence while training (the paper does not quote one)
    train_layers: int = -1  # train only the top n transformer layers; -1 = all layers
    # token/position embeddings frozen (always, unless all layers train)
    freeze_embeddings: bool = False
    projection: bool = False  # extra d x d linear after pooling, initialised to the identity
    dropout: bool = True  # keep the encoder's dropout active while training


@dataclass
class DataSection:
    """``[data]``: training, monolingual, evaluation-exclusion and dev files (paths are
    relative to the current folder)."""

    parallel: list[Any] = field(default_factory=list)  # TSV globs, or {src, tgt, lang} tables
    mono: list[str] = field(default_factory=list)  # monolingual globs, one sentence per line
    exclude: list[str] = field(default_factory=lambda: list(EVAL_DIRS))  # never trained on
    alpha: float = 0.3  # language sampling exponent, p ~ n^alpha (XLM-R style)
    mono_ratio: float = 0.5  # EM phase: share of batch sentences that are monolingual (1:1)
    max_lines: int = 0  # read at most this many lines per file (0 = all), for small slices
    shuffle_buffer: int = 2048  # per-file shuffle buffer while streaming
    dev: list[str] = field(default_factory=list)  # TSVs whose dev pairs are held out
    dev_pairs: int = 500  # dev pairs (spread over the dev files); written to <out>/dev.tsv


@dataclass
class PhaseSection:
    """``[phases]``: the length of each phase (ctl, gmm warm-up, em)."""

    ctl_steps: int = 1000  # encoder warm-up steps (InfoNCE on parallel data)
    gmm_steps: int = 300  # GMM warm-up: Adam steps on interpolations (early stopping)
    gmm_pairs: int = 4096  # parallel pairs encoded (frozen encoder) for the GMM warm-up
    gmm_warmup_lr: float = 1e-2  # Adam lr of the GMM warm-up fit
    # share of warm-up samples that are the translations themselves (rank N-1)
    gmm_golden: float = 0.4
    em_steps: int = 1000  # EM steps (GMM and encoder label each other)


@dataclass
class LossSection:
    """``[loss]``: semantic ranks, temperatures, GMM and MLM terms (algorithm doc §5)."""

    num_ranks: int = 4  # N semantic ranks [paper]
    tau_min: float = 0.04  # temperature of the top rank [paper: 0.04]
    tau_max: float = 0.08  # temperature of rank 1 (emmax choice)
    label_smoothing: float = 0.3  # GMM cross-entropy smoothing (reference code)
    class_weight_cap: float = 10.0  # GMM CE weighted by inverse rank frequency, capped
    gmm_anchor: float = 0.0  # beta of the generative anchor -log p(z|c)/d
    rank_mean_rate: float = 0.001  # EMA rate of the rank means m_c (reference code)
    agree_filter: bool = False  # positives only where GMM and encoder ranks agree
    min_posterior: float = 0.0  # positives only where P_G(rank) >= this
    # --- EM fixes (docs/training.md; all off = "EM as it is now", ablation arm B) ---
    # per-level RINCE mean: "present" = over rows with a positive at the level (arm B),
    # "all" = over all B rows (the reference code; a level with one row weighs 1/B)
    level_norm: str = "present"
    lower_weight: float = 1.0  # weight of levels 1..N-2 (0 = ablation arm C0)
    # positives at levels 1..N-2 only if cross-lingual, P_G >= related_min_posterior and
    # cosine above that rank's mean (the diagnosis: most are hard negatives otherwise)
    related_filter: bool = False
    related_min_posterior: float = 0.9
    # non-golden positives at the top level: "gmm" = every pair the GMM calls a translation
    # (arm B); "dup_mnn" = multi-way duplicates (same English side in the batch) and mutual
    # nearest neighbours that the GMM calls translations
    top_positives: str = "gmm"
    # GMM prior = running label frequencies, smoothing spread by them, class weights from
    # them (capped at class_weight_cap); false = learned prior, uniform smoothing, batch weights
    gmm_calibrate: bool = False
    label_freq_rate: float = 0.01  # EMA rate of the label frequencies (gmm_calibrate)
    mlm: bool = True  # masked-LM term on a masked copy (reference code: always on)
    mlm_weight: float = 1.0
    mlm_prob: float = 0.15
    mlm_smoothing: float = 0.1


@dataclass
class OptimSection:
    """``[optim]``: AdamW for the encoder, Adam for the GMM, the learning-rate schedule."""

    lr: float = 5e-4  # encoder peak lr [paper]
    min_lr: float = 0.0  # cosine floor
    warmup_steps: int = 8000  # linear warm-up of each encoder phase (reference code)
    weight_decay: float = 0.01  # AdamW, 2-D parameters only
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-6
    gmm_lr: float = 3e-5  # GMM Adam lr in EM, constant [paper]
    grad_clip: float = 1.0  # max global grad norm; 0 = off
    grad_accum: int = 1  # micro-batches per optimiser step
    # em starts from ctl's final AdamW state (its last checkpoint in the same run folder)
    # with no learning-rate warm-up, instead of a fresh optimiser and warm-up
    em_continue: bool = False


@dataclass
class RunSection:
    """``[run]``: batch, queue, device and precision, seed, logging and checkpoints."""

    batch_pairs: int = 512  # parallel pairs per micro-batch (1024 sentences [paper])
    queue_size: int = 256  # momentum queue K [paper]
    momentum: float = 0.999  # key encoder EMA [paper]
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (fp16 on CUDA only)
    device: str = "auto"
    seed: int = 0
    log_every: int = 10
    eval_every: int = 100  # dev retrieval accuracy
    save_every: int = 200  # checkpoint interval (steps)
    keep_checkpoints: int = 2
    out: str = "runs/emmax"
    threads: int = 0  # torch intra-op threads (0 = torch default)
    # --- speed (docs/training.md) ---
    sub_batches: int = 1  # length-sorted sub-batches per micro-batch (1 = one padded batch)
    key_precision: str = "same"  # key encoder forward: same | auto | fp32 | bf16
    trunk_precision: str = "fp32"  # frozen lower layers' forward: same | auto | fp32 | bf16
    level_grad_every: int = 0  # em: per-level gradient norms every n steps (0 = never)
    level_grad_warn_every: int = 100  # at most one "lower levels outweigh" warning per n steps


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
