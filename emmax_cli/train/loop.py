"""The EMMA-X trainer: phases ``ctl`` (encoder warm-up), ``gmm`` (GMM warm-up) and ``em``.

    emmax train --config configs/train/tiny.toml                 # all phases in order
    emmax train --config X.toml --phase em --resume              # continue the EM phase
    torchrun --nproc_per_node 2 -m emmax_cli train --config X.toml

Each phase starts from the model the previous phase exported (``<out>/ctl``, ``<out>/gmm``; a
missing one is an error, never a silent restart: F20) and exports a complete emmax model
directory ``<out>/<phase>/`` when it ends. The step itself (forward, losses, backward,
optimiser) is in ``step.py``, seeds and RNG state in ``seed.py``, checkpoints and the resume
lookup in ``checkpoint.py``, the JSON-lines log in ``runlog.py``, the export in ``export.py``.

Features: gradient accumulation, clipping, bf16 autocast on CPU/CUDA, fp16 + GradScaler on
CUDA, JSON-lines log (per-term losses, lr, GMM/encoder agreement, rank distribution, dev
retrieval accuracy), atomic checkpoints with exact resume (same losses and the same log as an
uninterrupted run)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from ..io.atomic import atomic_output
from . import distributed as D
from .checkpoint import find_resume, load_checkpoint, save_checkpoint
from .config import PHASES, TrainConfig, adopt_saved_config, dump_toml
from .em import EMState
from .encoding import key_precision
from .export import export_model
from .paths import check_paths
from .queue import MomentumQueue, SplitEncoder, embed_texts
from .runlog import append_record, truncate_log
from .sampler import build_sampler
from .seed import capture_rng_state, set_seed
from .state import continue_from_ctl, restore_state, trainer_state
from .step import build_mlm, build_optimizers, gmm_warmup, lr_at, optimizer_step

__all__ = ["Trainer", "OnStep", "lr_at", "set_seed"]

log = logging.getLogger(__name__)

OnStep = Callable[[str, int, int, dict], None]


class Trainer:
    """One EMMA-X training run, in torchtune's recipe shape.

    ``setup(phase, resume)`` builds everything a phase needs (and restores a checkpoint),
    ``train()`` runs the phase to its end and exports its model, ``save()`` / ``load(path)``
    write and read checkpoints, ``cleanup()`` leaves the process group; ``run(phases,
    resume)`` does them in order for several phases. Rank zero alone logs and writes.

    Args:
        cfg: the resolved config.
        on_step: called as ``on_step(phase, step, total, record)`` after every step (rank
            zero), e.g. for a progress bar.
        crash_at: tests only: raise ``RuntimeError`` after this step, like a kill (faiss
            ``crash_at``).

    Raises:
        ConfigError: (from ``setup`` and ``run``) a bad combination (fp16 on CPU, a missing
            previous phase, nothing to resume), or a configured path that does not exist.
        InputError: (from ``setup`` and ``run``) unusable training data.
    """

    def __init__(
        self, cfg: TrainConfig, on_step: OnStep | None = None, crash_at: int | None = None
    ):
        self.cfg = cfg
        self.on_step = on_step
        self.crash_at = crash_at
        self.out = Path(cfg.run.out)
        self.dist = D.DistInfo()
        self.history: list[dict] = []

    # ---- setup ------------------------------------------------------------------------------
    def _resolve_device(self) -> None:
        self.dist, self.device, self.precision = D.setup_device(
            self.cfg.run.device, self.cfg.run.precision
        )
        if self.cfg.run.threads:
            self._prev_threads = torch.get_num_threads()  # restored by cleanup()
            torch.set_num_threads(self.cfg.run.threads)

    def _starts_from_base(self, phase: str) -> bool:
        return phase == "ctl" or (phase == "gmm" and self.cfg.phases.ctl_steps == 0)

    def _start_model(self, phase: str) -> Path | str:
        """Where a phase starts: the base (ctl), else the previous phase's export."""
        if self._starts_from_base(phase):
            return self.cfg.model.base
        prev = "ctl" if phase == "gmm" else "gmm"
        src = self.out / prev
        if not (src / "emmax.json").exists():
            raise ConfigError(
                f"phase {phase} starts from {src}, which does not exist",
                hint=f"run --phase {prev} first (same --out)",
            )
        return src

    def setup(self, phase: str, resume: bool = False) -> None:
        """Build the phase: model, encoder split, key encoder and queue, heads, optimisers and
        data sampler. Every configured path is checked before anything is written.

        Args:
            phase: ``ctl``, ``gmm`` or ``em``.
            resume: restore the newest checkpoint (``checkpoint.find_resume``), which must be
                of this phase; its config wins (differences are warned about), and the log
                is cut back to its step.

        Raises:
            ConfigError: unknown phase, a missing path or previous phase, no checkpoint to
                resume from, or a checkpoint of another phase.
            InputError: unusable training data.
        """
        from tokenizers import Tokenizer

        from ..models.encoder import Encoder
        from ..models.gmm import GMMHead

        if phase not in PHASES:
            raise ConfigError(f"unknown phase {phase!r}", hint=f"use one of {', '.join(PHASES)}")
        point = ck_weights = ck_state = None
        if resume:
            point = find_resume(self.out, phase)
            ck_weights, ck_state = load_checkpoint(point.path)
            self.cfg = adopt_saved_config(self.cfg, ck_state["config"])
        cfg = self.cfg
        check_paths(cfg, start_from_base=self._starts_from_base(phase))
        self._resolve_device()
        self.phase = phase
        self.seed = set_seed(cfg.run.seed, self.dist.rank)
        src = self._start_model(phase)
        enc = Encoder.load(str(src), device=self.device, precision="fp32")
        self.base_config = enc.config
        self.base_tok = enc.tokenizer  # saved with exports (the base's truncation)
        self.tok = Tokenizer.from_str(enc.tokenizer.to_str())
        self.tok.enable_truncation(cfg.model.max_length)  # training truncates shorter
        self.prefix = enc.config.prefix or ""
        self.pad_id = enc.pad_id
        self.model = enc.model
        self.model.eval()  # the frozen trunk never uses dropout; the top switches in train()
        self.enc = SplitEncoder(
            self.model,
            cfg.model.train_layers,
            cfg.model.freeze_embeddings,
            cfg.model.projection,
            enc.config.pooling,
            enc.config.normalize,
        ).to(self.device)
        self.enc.load_projection(src)  # a previous phase's trained projection, if any
        self.dim = int(self.model.config.hidden_size)
        self.N = cfg.loss.num_ranks
        self.key_prec = key_precision(cfg.run.key_precision, self.precision, self.device)
        self.trunk_prec = key_precision(cfg.run.trunk_precision, self.precision, self.device)
        self.gmm = self.em_state = None
        if phase == "em":
            self.gmm = GMMHead.from_dir(src, dim=self.dim).to(self.device)
            self.gmm.train()
            self.em_state = EMState(self.N).to(self.device)
            if cfg.loss.gmm_calibrate:  # em's prior is the label frequencies; the head's stays
                self.gmm.prior_logits.requires_grad_(False)
        self.mq = MomentumQueue(self.enc.top, self.dim, cfg.run.queue_size, cfg.run.momentum).to(
            self.device
        )
        self.mq.key_top.eval()
        self.mlm = None
        if cfg.loss.mlm and phase != "gmm":
            self.mlm, self.mask_id, self.special_ids = build_mlm(self.model, self.tok, self.device)
        self.mask_gen = torch.Generator().manual_seed(self.seed + 1)
        self.opt, self.gmm_opt = build_optimizers(cfg.optim, self.enc.top, self.mlm, self.gmm)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision == "fp16")
        self.step = 0
        self.total = cfg.phase_steps(phase)
        self.elapsed = 0.0
        self._dev_cache: dict = {}  # frozen-trunk outputs of the dev batches (exact reuse)
        self._build_data()
        self.em_continued = False  # em continuing ctl's optimiser has no warm-up of its own
        if point is None and phase == "em" and cfg.optim.em_continue:
            self.em_continued = continue_from_ctl(self)
        if point is not None:
            restore_state(self, point.path, ck_weights, ck_state)
            if self.dist.is_main:
                truncate_log(self.out, phase, self.step)
        self.warmup = 0 if self.em_continued else cfg.optim.warmup_steps

    def _build_data(self) -> None:
        """The phase's sampler; the dev pairs (held out of training) go to ``<out>/dev.tsv``."""
        self.sampler, self.dev, langs = build_sampler(
            self.cfg, self.phase, self.dist.rank, self.dist.world
        )
        if self.dev and self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            rows = zip(*self.dev, langs, strict=True)
            with atomic_output(self.out / "dev.tsv") as tmp:
                tmp.write_text("".join(f"{a}\t{b}\t{g}\n" for a, b, g in rows), "utf-8")

    # ---- evaluation ---------------------------------------------------------------------------
    def embed(
        self, texts: list[str], batch_size: int = 128, cache: dict | None = None
    ) -> torch.Tensor:
        """Query-encoder embeddings in eval mode (the training mode is restored after).

        Args:
            texts: the sentences.
            batch_size: sentences per forward pass (sorted by length to cut padding).
            cache: optional dict of frozen-trunk outputs per batch, filled and reused
                (``queue.embed_texts``).

        Returns:
            (n, d) float32 embeddings, in input order.
        """
        args = (self.tok, texts, self.prefix, self.pad_id, self.device, self.precision)
        return embed_texts(self.enc, *args, batch_size=batch_size, cache=cache)

    def dev_accuracy(self) -> float | None:
        """xx->eng top-1 retrieval accuracy on the dev pairs (exact cosine).

        Returns:
            The accuracy in [0, 1], or None without dev pairs (``data.dev`` empty).
        """
        if not self.dev:
            return None
        xx, en = self.dev
        a, b = self.embed(xx, cache=self._dev_cache), self.embed(en, cache=self._dev_cache)
        return float(((a @ b.T).argmax(1) == torch.arange(len(xx))).float().mean())

    # ---- training ---------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        """Run the set-up phase to its end, checkpointing every ``run.save_every`` steps, and
        export its model to ``<out>/<phase>``. ``gmm`` is a single fit.

        Returns:
            The last log record (losses, lr, dev accuracy, ...).

        Raises:
            RuntimeError: the simulated crash of ``crash_at`` (tests).
        """
        if self.phase == "gmm":
            return self._train_gmm()
        cfg, o = self.cfg, self.cfg.optim
        self.enc.top.train(cfg.model.dropout)
        t_last, n_last = time.perf_counter(), 0
        rec: dict = {}
        while self.step < self.total:
            t0 = time.perf_counter()
            lr = lr_at(self.step, self.total, o.lr, self.warmup, o.min_lr)
            stats, sents = optimizer_step(self, lr)
            self.step += 1
            self.elapsed += time.perf_counter() - t0
            n_last += sents / 2 * self.dist.world  # pair equivalents (2 sentences each)
            rec = {"phase": self.phase, "step": self.step, "lr": lr, **stats}
            if self.gmm_opt is not None:
                rec["gmm_lr"] = o.gmm_lr
            if self.step % cfg.run.eval_every == 0 or self.step == self.total:
                te = time.perf_counter()
                rec["dev_acc"] = self.dev_accuracy()
                t_last += time.perf_counter() - te  # throughput excludes the dev evaluation
            if self.step % cfg.run.log_every == 0 or self.step == self.total or "dev_acc" in rec:
                now = time.perf_counter()
                rec["pairs_per_s"] = n_last / max(now - t_last, 1e-9)
                rec["pairs_seen"] = self.sampler.distinct_pairs()  # distinct, this rank
                rec["elapsed_s"] = round(self.elapsed, 2)
                t_last, n_last = now, 0
                self._log(rec)
            if self.on_step and self.dist.is_main:
                self.on_step(self.phase, self.step, self.total, rec)
            if self.step % cfg.run.save_every == 0 and self.step < self.total:
                self.save()
            if self.crash_at is not None and self.step == self.crash_at:
                raise RuntimeError(f"simulated crash after step {self.step}")
        self.save()
        self.export(self.out / self.phase)
        return rec

    def _train_gmm(self) -> dict:
        """The gmm phase: one fit (``step.gmm_warmup``), logged as step 1, then exported."""
        self.gmm, rec = gmm_warmup(self)
        self.step, self.elapsed = 1, rec["elapsed_s"]
        self._log(rec)
        if self.on_step and self.dist.is_main:
            self.on_step("gmm", 1, 1, rec)
        self.save()
        self.export(self.out / "gmm")
        return rec

    def _log(self, rec: dict) -> None:
        self.history.append(rec)
        if not self.dist.is_main:
            return
        log.info(
            "%s",
            " ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in rec.items()
            ),
        )
        append_record(self.out, rec)

    # ---- checkpoints ------------------------------------------------------------------------
    def save(self) -> None:
        """Checkpoint the phase (rank zero writes; every rank's RNG state is gathered).

        The ``gmm`` phase has no checkpoint: its export is its result, and it is deterministic.
        """
        if self.phase == "gmm":
            return
        rng = capture_rng_state()
        rng["mask_gen"] = self.mask_gen.get_state()
        rngs = [rng]
        if self.dist.enabled:
            import torch.distributed as dist

            rngs = [None] * self.dist.world
            dist.all_gather_object(rngs, rng)
        if self.dist.is_main:
            state = trainer_state(self, rngs)
            save_checkpoint(
                self.out,
                self.phase,
                self.step,
                dict(self.enc.top.state_dict()),
                state,
                dump_toml(self.cfg),
                gmm=self.gmm,
                keep=self.cfg.run.keep_checkpoints,
            )
        D.barrier()

    def load(self, path: str | Path) -> None:
        """Restore a checkpoint made by ``save`` into a set-up trainer of the same phase.

        Args:
            path: the checkpoint folder.

        Raises:
            ConfigError: a checkpoint file is missing, or the checkpoint was made with
                another number of processes or in another phase.
        """
        weights, state = load_checkpoint(path)
        restore_state(self, Path(path), weights, state)

    def export(self, root: Path) -> Path:
        """Write the phase's complete emmax model directory atomically (rank zero).

        Args:
            root: the model directory, normally ``<out>/<phase>``; an existing one is replaced
                once the new one is complete.

        Returns:
            ``root``.
        """
        if self.dist.is_main:
            export_model(
                root,
                self.model,
                self.base_tok,
                self.base_config,
                self.enc.top,
                self.cfg,
                self.phase,
                gmm=self.gmm,
            )
        D.barrier()
        return root

    def cleanup(self) -> None:
        """Leave the process group and restore torch's thread count."""
        D.cleanup()
        if getattr(self, "_prev_threads", None):
            torch.set_num_threads(self._prev_threads)

    # ---- all phases -------------------------------------------------------------------------
    def run(self, phases: list[str] | None = None, resume: bool = False) -> dict[str, dict]:
        """Set up, train and clean up ``phases`` in order.

        Args:
            phases: the phases to run; default: every phase with steps.
            resume: continue from the newest checkpoint: the phases exported before it are
                skipped, its phase continues from it, and the later phases run anew.

        Returns:
            The last log record of each phase that ran.

        Raises:
            ConfigError: see the class docstring (``no checkpoint to resume from`` with
                ``resume`` and nothing saved).
        """
        phases = phases or [p for p in PHASES if p == "gmm" or self.cfg.phase_steps(p) > 0]
        out: dict[str, dict] = {}
        ck_phase = find_resume(self.out).phase if resume else None
        try:
            for p in phases:
                exported = (self.out / p / "emmax.json").exists()
                if ck_phase is not None and PHASES.index(p) < PHASES.index(ck_phase) and exported:
                    continue  # finished before the checkpoint was written
                self.setup(p, resume=p == ck_phase)
                if resume and p != ck_phase and self.dist.is_main:
                    truncate_log(self.out, p, 0)  # this phase starts anew: drop its old records
                if self.step >= self.total and exported:
                    continue  # the checkpoint is this phase's last step
                out[p] = self.train()
        finally:
            self.cleanup()
        return out
