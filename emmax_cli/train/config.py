"""Training configuration: dataclasses read from one TOML file (``emmax train --config``).

Every hyper-parameter defaults to the paper's value where the paper gives one, else to the
reference code's or the emmax choice (shared/docs/emmax-algorithm.md §7 table). Unknown keys are
errors that name the key; ``--set section.key=value`` overrides are type-checked."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from ..errors import ConfigError

PHASES = ("ctl", "gmm", "em")
EVAL_DIRS = ["../shared/data/tatoeba", "../shared/data/ud_pud", "../shared/data/flores200"]


@dataclass
class ModelSection:
    base: str = "multilingual-e5-small"  # name or directory of the starting encoder
    name: str = "emmax"  # name written into emmax.json of the exported models
    max_length: int = 128  # tokens per sentence while training (the paper does not quote one)
    train_layers: int = -1  # train only the top n transformer layers; -1 = all layers
    freeze_embeddings: bool = (
        False  # token/position embeddings frozen (always, unless all layers train)
    )
    projection: bool = False  # extra d x d linear after pooling, initialised to the identity
    dropout: bool = True  # keep the encoder's dropout active while training


@dataclass
class DataSection:
    parallel: list[Any] = field(default_factory=list)  # TSV globs, or {src, tgt, lang} tables
    mono: list[str] = field(default_factory=list)  # monolingual globs, one sentence per line
    exclude: list[str] = field(
        default_factory=lambda: list(EVAL_DIRS)
    )  # eval sets: never trained on
    alpha: float = 0.3  # language sampling exponent, p ~ n^alpha (XLM-R style)
    mono_ratio: float = 0.5  # EM phase: share of batch sentences that are monolingual (1:1)
    max_lines: int = 0  # read at most this many lines per file (0 = all), for small slices
    shuffle_buffer: int = 2048  # per-file shuffle buffer while streaming
    dev: list[str] = field(
        default_factory=list
    )  # TSVs from which dev pairs are held out of training
    dev_pairs: int = 500  # dev pairs (spread over the dev files); written to <out>/dev.tsv


@dataclass
class PhaseSection:
    ctl_steps: int = 1000  # encoder warm-up steps (InfoNCE on parallel data)
    gmm_steps: int = 300  # GMM warm-up: Adam steps on interpolations (early stopping)
    gmm_pairs: int = 4096  # parallel pairs encoded (frozen encoder) for the GMM warm-up
    gmm_warmup_lr: float = 1e-2  # Adam lr of the GMM warm-up fit
    gmm_golden: float = (
        0.4  # share of warm-up samples that are the translations themselves (rank N-1)
    )
    em_steps: int = 1000  # EM steps (GMM and encoder label each other)


@dataclass
class LossSection:
    num_ranks: int = 4  # N semantic ranks [paper]
    tau_min: float = 0.04  # temperature of the top rank [paper: 0.04]
    tau_max: float = 0.08  # temperature of rank 1 (emmax choice)
    label_smoothing: float = 0.3  # GMM cross-entropy smoothing (reference code)
    class_weight_cap: float = 10.0  # GMM CE weighted by inverse rank frequency, capped
    gmm_anchor: float = 0.0  # beta of the generative anchor -log p(z|c)/d
    rank_mean_rate: float = 0.001  # EMA rate of the rank means m_c (reference code)
    agree_filter: bool = False  # positives only where GMM and encoder ranks agree
    min_posterior: float = 0.0  # positives only where P_G(rank) >= this
    mlm: bool = True  # masked-LM term on a masked copy (reference code: always on)
    mlm_weight: float = 1.0
    mlm_prob: float = 0.15
    mlm_smoothing: float = 0.1


@dataclass
class OptimSection:
    lr: float = 5e-4  # encoder peak lr [paper]
    min_lr: float = 0.0  # cosine floor
    warmup_steps: int = 8000  # linear warm-up of each encoder phase (reference code)
    weight_decay: float = 0.01  # AdamW, 2-D parameters only
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-6
    gmm_lr: float = 3e-5  # GMM Adam lr in EM, constant [paper]
    grad_clip: float = 1.0  # max global grad norm; 0 = off
    grad_accum: int = 1  # micro-batches per optimiser step


@dataclass
class RunSection:
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


@dataclass
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    phases: PhaseSection = field(default_factory=PhaseSection)
    loss: LossSection = field(default_factory=LossSection)
    optim: OptimSection = field(default_factory=OptimSection)
    run: RunSection = field(default_factory=RunSection)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def phase_steps(self, phase: str) -> int:
        return {"ctl": self.phases.ctl_steps, "gmm": 1, "em": self.phases.em_steps}[phase]

    def taus(self) -> list[float]:
        """Per-rank temperatures tau_1..tau_{N-1}: linear from tau_max (r=1) to tau_min (r=N-1);
        N = 2 gives [tau_min] (§5.1; avoids F13)."""
        n, lo, hi = self.loss.num_ranks, self.loss.tau_min, self.loss.tau_max
        if n == 2:
            return [lo]
        return [lo + (hi - lo) * (n - 1 - r) / (n - 2) for r in range(1, n)]

    def validate(self) -> TrainConfig:
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


def config_from_dict(d: dict[str, Any]) -> TrainConfig:
    return _build(TrainConfig, d, "")


def parse_override(s: str) -> tuple[str, Any]:
    """``section.key=value`` with a TOML value (strings may be bare)."""
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
    """Read a TOML config and apply ``section.key=value`` overrides; validate.

    Raises:
        ConfigError: unreadable TOML, an unknown key, a wrong type or an invalid value."""
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
    """The resolved config as TOML (saved in every checkpoint)."""
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
