"""The sections of a training config (``[model]``, ``[data]``, ``[phases]``, ``[loss]``,
``[optim]``, ``[run]``): one dataclass each, with every key's default and a comment on it.
``config.TrainConfig`` holds one of each; ``config`` re-exports them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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
    # false = ablation arm A, "ctl continued" on the em data stream: the translation pairs
    # (and, with top_positives = "dup_mnn", the multi-way duplicates) are the only positives;
    # the GMM is neither used nor trained
    em_labels: bool = True
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
class CrossSection:
    """``[cross]``: plug-in cross-attention fine-tuning (VECO), the encoder frozen
    (``emmax train --phase cross``; docs/cross.md)."""

    model: str = ""  # the model to plug into ("" = the run's em, else gmm, else model.base)
    steps: int = 0  # optimiser steps; 0 = not run unless --phase cross
    layers: int = 4  # top transformer layers that get a cross-attention block
    batch_pairs: int = 24  # parallel pairs per step (each gives ~4 training pairs)
    lr: float = 3e-4  # AdamW peak lr (linear warm-up, cosine to 0)
    warmup_steps: int = 30
    max_length: int = 96  # pairs with a longer side are skipped (never cut: a cut is a near-miss)
    max_pairs_per_file: int = 20000  # pairs read from each parallel file
    dev_pairs: int = 240  # held-out pairs (from data.dev) for the accuracy log
    # after training, shift the top rank's logit so that this share of the held-out
    # translations get the top rank (0 = no shift)
    calibrate_true: float = 0.99
