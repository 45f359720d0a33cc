"""The cross phase of ``emmax train``: VECO plug-in fine-tuning of a cross-attention pair
scorer (``models/cross.py``) over a frozen encoder.

    emmax train --config configs/emmax-small-cross.toml --phase cross [--resume]

It starts from ``cross.model`` (else the run's ``em``, ``gmm`` or ``ctl`` export, else
``model.base``), trains only the plug-in on the pairs of ``cross_data.py`` with cross-entropy
over the N ranks, and exports ``<out>/cross/``: the starting model's files (hard links where
the file system allows) plus ``cross_head.safetensors`` / ``cross_head.json``. Checkpoints and
the log live in ``<out>/cross-train/``; a step's data depends only on ``(seed, step)`` and
nothing is random in the forward pass, so ``--resume`` continues exactly."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from ..errors import ConfigError
from ..io.atomic import atomic_dir, atomic_output
from ..models.cross import CrossPlugin
from ..models.encoder import Encoder
from ..models.pooling import pool
from ..models.tokenizer import pad_batch
from .checkpoint import latest_complete, load_checkpoint, save_checkpoint
from .config import TrainConfig, dump_toml
from .cross_data import PairPool, StepBatch, label_for, load_pool, make_batch
from .data import normalize_line, read_pairs

log = logging.getLogger(__name__)

PHASE = "cross"
SUB = 16  # sentences or pairs per length-sorted sub-batch


def start_model(cfg: TrainConfig) -> str:
    """The model the plug-in is trained for."""
    if cfg.cross.model:
        return cfg.cross.model
    for p in ("em", "gmm", "ctl"):
        if (Path(cfg.run.out) / p / "emmax.json").exists():
            return str(Path(cfg.run.out) / p)
    return cfg.model.base


def add_hard_negatives(sb: StepBatch, emb: torch.Tensor, num_ranks: int) -> None:
    """For each source, its most similar non-translation among the batch's translations."""
    B = sb.batch
    sim = emb[:B] @ emb[B : 2 * B].T
    same = np.array([[x == y for y in sb.texts[B : 2 * B]] for x in sb.texts[B : 2 * B]])
    sim[torch.from_numpy(same)] = -math.inf
    j = sim.argmax(1).tolist()
    for i in range(B):
        if math.isfinite(float(sim[i, j[i]])):
            sb.a.append(i)
            sb.b.append(B + j[i])
            sb.labels.append(label_for("hard", 0.0, num_ranks))
            sb.kinds.append("hard")


class CrossTrainer:
    """Trains a ``CrossPlugin``; ``run()`` does the whole phase."""

    def __init__(self, cfg: TrainConfig, on_step=None):
        self.cfg, self.on_step = cfg, on_step
        self.out = Path(cfg.run.out)
        self.work = self.out / "cross-train"
        if cfg.run.threads > 0:
            torch.set_num_threads(cfg.run.threads)
        self.model = start_model(cfg)
        self.enc = Encoder.load(self.model, device=cfg.run.device, precision="fp32")
        self.net = self.enc.net
        self.N = cfg.loss.num_ranks

    # ---- data ----------------------------------------------------------------------------
    def _lengths(self, texts: list[str]) -> np.ndarray:
        return np.array([len(e.ids) for e in self.enc.tokenizer.encode_batch(texts)])

    def _load_data(self) -> None:
        cfg = self.cfg
        dev_files = cfg.data.dev or cfg.data.parallel
        xs, ys, _ = read_pairs(
            [p for p in dev_files if isinstance(p, str)], cfg.cross.dev_pairs, seed=cfg.run.seed
        )
        held = {normalize_line(t) for t in xs + ys}
        self.pool = load_pool(
            cfg, self._lengths, cfg.cross.max_pairs_per_file, cfg.data.alpha, held
        )
        self.dev = PairPool(["dev"], [xs], [ys], np.ones(1), self.pool.names)
        log.info(
            "cross: %d training pairs from %d files, %d dev pairs",
            self.pool.size,
            len(self.pool.files),
            len(xs),
        )

    # ---- the step ------------------------------------------------------------------------
    def _states(self, sb: StepBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """States entering the plugged layers for every sentence of the step (length-sorted
        sub-batches: padding to the step's longest sentence would cost ~2.5x), and the hard
        negatives from the plain embeddings of sources and translations."""
        p, net, enc = self.plugin, self.net, self.enc
        ids = enc.tokenize(sb.texts)
        X, M = pad_batch(ids, enc.pad_id, enc.device)
        H = torch.zeros(*X.shape, net.config_dict["hidden_size"], device=X.device)
        B2 = 2 * sb.batch
        emb = torch.zeros(B2, H.shape[-1], device=X.device)
        with torch.no_grad():
            for rows in _length_chunks(M.sum(1), SUB):
                L = int(M[rows].sum(1).max())
                H[rows, :L] = p.lower(net, X[rows, :L], M[rows, :L])
            for rows in _length_chunks(M[:B2].sum(1), SUB):
                L = int(M[rows].sum(1).max())
                top = net.run_layers(H[rows, :L], M[rows, :L], p.start)
                emb[rows] = pool(top, M[rows, :L], self.enc.config.pooling, True)
        add_hard_negatives(sb, emb, self.N)
        return H, M

    def _pair_batches(self, sb: StepBatch, M: torch.Tensor):
        """Length-sorted pair sub-batches: (pair rows, a, b, La, Lb)."""
        a, b = torch.tensor(sb.a), torch.tensor(sb.b)
        n = M.sum(1)
        for rows in _length_chunks(torch.maximum(n[a], n[b]), SUB):
            yield rows, a[rows], b[rows], int(n[a[rows]].max()), int(n[b[rows]].max())

    def _logits(self, sb: StepBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits of every pair of the step (no gradient: evaluation)."""
        H, M = self._states(sb)
        out = torch.zeros(len(sb.a), self.N)
        for rows, a, b, la, lb in self._pair_batches(sb, M):
            out[rows] = self.plugin.pair_logits(
                self.net, H[a, :la], M[a, :la], H[b, :lb], M[b, :lb]
            )
        return out, torch.tensor(sb.labels)

    def _loss_backward(self, sb: StepBatch) -> float:
        """Mean cross-entropy of the step, back-propagated sub-batch by sub-batch."""
        H, M = self._states(sb)
        labels = torch.tensor(sb.labels)
        total = 0.0
        for rows, a, b, la, lb in self._pair_batches(sb, M):
            logits = self.plugin.pair_logits(self.net, H[a, :la], M[a, :la], H[b, :lb], M[b, :lb])
            loss = F.cross_entropy(logits, labels[rows], reduction="sum") / len(labels)
            loss.backward()
            total += float(loss.detach())
        return total

    def _lr(self, step: int) -> float:
        c = self.cfg.cross
        if step < c.warmup_steps:
            return c.lr * (step + 1) / c.warmup_steps
        t = (step - c.warmup_steps) / max(1, c.steps - c.warmup_steps)
        return c.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    def _dev_margins(self) -> tuple[np.ndarray, np.ndarray]:
        """Per held-out pair: how far the top rank's logit is below the best other rank's
        (top rank where < 0), and the kind of pair."""
        margins, kinds = [], []
        n, B = len(self.dev.src[0]), self.cfg.cross.batch_pairs
        with torch.no_grad():
            for k in range(max(1, n // B)):
                sb = make_batch(self.dev, self.cfg.run.seed + 1, 10**9 + k, B, self.N)
                logits, _ = self._logits(sb)
                margins += (logits[:, :-1].max(1).values - logits[:, -1]).tolist()
                kinds += sb.kinds
        return np.array(margins), np.array(kinds)

    @staticmethod
    def _accuracy(margins: np.ndarray, kinds: np.ndarray, prefix: str) -> dict[str, float]:
        top = margins < 0
        return {
            f"{prefix}{k}": float((top if k == "translation" else ~top)[kinds == k].mean())
            for k in sorted(set(kinds.tolist()))
        }

    def evaluate(self) -> dict[str, float]:
        """Top-rank decision accuracy per kind of pair on the held-out dev pairs."""
        return self._accuracy(*self._dev_margins(), "dev_acc_")

    def calibrate(self) -> dict[str, float]:
        """Set ``top_bias`` so that ``cross.calibrate_true`` of the held-out translations get
        the top rank (a prior shift: the classes are unbalanced in training, ~1 translation
        per 4 other pairs); returns the bias and the accuracies with it."""
        q = self.cfg.cross.calibrate_true
        self.plugin.top_bias = 0.0
        if q <= 0:
            return {}
        m, kinds = self._dev_margins()
        bias = float(np.quantile(m[kinds == "translation"], q)) + 1e-4
        self.plugin.top_bias = bias
        return {"top_bias": bias, **self._accuracy(m - bias, kinds, "calibrated_acc_")}

    # ---- checkpoints ---------------------------------------------------------------------
    def _save(self, step: int) -> None:
        state = {"step": step, "optimizer": self.opt.state_dict(), "model": self.model}
        save_checkpoint(
            self.work,
            PHASE,
            step,
            dict(self.plugin.state_dict()),
            state,
            dump_toml(self.cfg),
            keep=self.cfg.run.keep_checkpoints,
        )

    def _resume(self) -> int:
        ck = latest_complete(self.work / "checkpoints" / PHASE)
        if ck is None:
            raise ConfigError(
                f"{self.work}: no cross checkpoint to resume from", hint="start without --resume"
            )
        weights, state = load_checkpoint(ck)
        self.plugin.load_state_dict(weights)
        self.opt.load_state_dict(state["optimizer"])
        step = int(state["step"])
        self._truncate_log(step)
        log.info("cross: resuming from %s (step %d)", ck, step)
        return step

    def _log(self, rec: dict[str, Any]) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        with open(self.work / "train_log.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")

    def _truncate_log(self, step: int) -> None:
        p = self.work / "train_log.jsonl"
        if p.exists():
            keep = [x for x in p.read_text().splitlines() if _step_of(x) <= step]
            with atomic_output(p) as tmp:
                tmp.write_text("".join(x + "\n" for x in keep))

    # ---- the phase -----------------------------------------------------------------------
    def run(self, resume: bool = False) -> dict[str, Any]:
        """Train to ``cross.steps`` and export ``<out>/cross``; returns the last log record."""
        cfg = self.cfg
        total = cfg.cross.steps
        if total <= 0:
            raise ConfigError("cross.steps is 0", hint="set it, e.g. --set cross.steps=800")
        n_layers = self.net.config_dict["num_hidden_layers"]
        if cfg.cross.layers > n_layers:
            raise ConfigError(
                f"cross.layers is {cfg.cross.layers} but {self.model} has {n_layers} layers",
                hint=f"set cross.layers to at most {n_layers}",
            )
        torch.manual_seed(cfg.run.seed)
        self.plugin = CrossPlugin.for_net(self.net, cfg.cross.layers, self.N)
        params = list(self.plugin.parameters())
        self.opt = torch.optim.AdamW(params, lr=cfg.cross.lr, weight_decay=0.01)
        step = self._resume() if resume else 0
        if not resume and (self.work / "train_log.jsonl").exists():
            (self.work / "train_log.jsonl").unlink()
        self._load_data()
        t0, seen, rec = time.time(), 0, {}
        losses: list[float] = []
        self.plugin.train()
        while step < total:
            sb = make_batch(self.pool, cfg.run.seed, step, cfg.cross.batch_pairs, self.N)
            self.opt.zero_grad(set_to_none=True)
            loss = self._loss_backward(sb)
            if cfg.optim.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
            for g in self.opt.param_groups:
                g["lr"] = self._lr(step)
            self.opt.step()
            step += 1
            seen += sb.batch
            losses.append(loss)
            rec = {
                "phase": PHASE,
                "step": step,
                "loss": float(np.mean(losses)),
                "lr": self._lr(step - 1),
                "pairs": len(sb.labels),
            }
            if step % cfg.run.eval_every == 0 or step == total:
                self.plugin.eval()
                rec.update(self.evaluate())
                self.plugin.train()
            if step % cfg.run.log_every == 0 or step == total or "dev_acc_hard" in rec:
                rec["pairs_per_s"] = seen / max(1e-9, time.time() - t0)
                self._log(rec)
                losses = []
            if step % cfg.run.save_every == 0 or step == total:
                self._save(step)
            if self.on_step:
                self.on_step(PHASE, step, total, rec)
        self.plugin.eval()
        rec = {**(rec or {"phase": PHASE, "step": step}), **self.calibrate()}
        self._export(rec, time.time() - t0)
        return rec

    def _export(self, rec: dict[str, Any], wall: float) -> Path:
        cfg, src = self.cfg, Path(self.enc.root)
        self.plugin.card = {
            "model": self.enc.config.name,
            "model_checksum": self.enc.config.checksum,
            "steps": cfg.cross.steps,
            "batch_pairs": cfg.cross.batch_pairs,
            "layers": cfg.cross.layers,
            "lr": cfg.cross.lr,
            "train_files": len(self.pool.files),
            "train_pairs_pool": self.pool.size,
            "wall_s_last_run": round(wall, 1),
            "last_record": {k: v for k, v in rec.items() if k != "phase"},
            "data": "data.parallel of the config (eval sets excluded): translations, in-batch "
            "hard negatives, number/name/negation/truncation near-misses, text interpolations",
        }
        final = self.out / PHASE
        with atomic_dir(final, replace=True) as tmp:
            for f in src.rglob("*"):
                if f.is_file() and not f.name.startswith("cross_head"):
                    dst = tmp / f.relative_to(src)
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    try:
                        os.link(f, dst)
                    except OSError:
                        shutil.copy2(f, dst)
            self.plugin.save(tmp)
        log.info("cross: model with its cross scorer in %s", final)
        return final


def _length_chunks(lengths: torch.Tensor, size: int) -> list[torch.Tensor]:
    """Row indices sorted by length, cut into chunks of ``size``."""
    order = torch.argsort(lengths, descending=True, stable=True)
    return [order[i : i + size] for i in range(0, len(order), size)]


def _step_of(line: str) -> int:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return 1 << 60


def train_cross(cfg: TrainConfig, resume: bool = False, on_step=None) -> dict[str, Any]:
    """Run the cross phase (see the module docstring)."""
    return CrossTrainer(cfg, on_step=on_step).run(resume=resume)
