"""The EMMA-X trainer: phases ``ctl`` (encoder warm-up), ``gmm`` (GMM warm-up) and ``em``.

    emmax train --config configs/train/tiny.toml                 # all phases in order
    emmax train --config X.toml --phase em --resume              # continue the EM phase
    torchrun --nproc_per_node 2 -m emmax_cli train --config X.toml

Each phase starts from the model the previous phase exported (``<out>/ctl``, ``<out>/gmm``; a
missing one is an error, never a silent restart: F20) and exports a complete emmax model
directory ``<out>/<phase>/`` when it ends. One step (shared/docs/emmax-algorithm.md §6):

1. momentum update of the key encoder; q = query(x) with gradient, k = key(x) without;
   candidates [k ; queue]; S = q [k ; queue]^T (B x (B+K)); the query's own key is excluded.
2. ctl: labels = N-1 for the translation, 0 otherwise (plain InfoNCE at tau_min).
   em: the encoder's ranks (nearest rank mean of S) label the GMM; the GMM's posteriors on
   z = sg(q) - candidate label the encoder; translation pairs are forced to N-1 in both;
   the rank means follow the GMM's assignments (EMA).
3. loss = L_CTL (+ L_GMM) (+ L_MLM); backward; gradients averaged over ranks; clipping;
   AdamW step (warm-up + cosine lr, a pure function of the step); GMM Adam step; enqueue k
   (gathered from all ranks).

Features: gradient accumulation, clipping, bf16 autocast on CPU/CUDA, fp16 + GradScaler on
CUDA, JSON-lines log (per-term losses, lr, GMM/encoder agreement, rank distribution, dev
retrieval accuracy), atomic checkpoints with exact resume (same losses as an uninterrupted run).

Raises (from ``setup``): ConfigError for a bad combination (fp16 on CPU, a missing previous
phase, nothing to resume), InputError for missing data."""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..device import autocast, pick_precision, resolve_device
from ..errors import ConfigError, EmmaxError
from ..io.atomic import atomic_output
from . import distributed as D
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .config import PHASES, TrainConfig, config_from_dict, dump_toml
from .data import BatchSampler, eval_sentence_set, find_sources, normalize_line, read_pairs
from .losses import MLMHead, gmm_cross_entropy, mask_tokens, mlm_loss, ranking_infonce
from .queue import MomentumQueue, SplitEncoder, pad_batch

log = logging.getLogger(__name__)

OnStep = Callable[[str, int, int, dict], None]
# Config values that may change on --resume without a warning (they do not change the maths).
RESUMABLE = {
    "run.log_every",
    "run.eval_every",
    "run.save_every",
    "run.keep_checkpoints",
    "run.out",
    "run.device",
    "run.threads",
    "data.dev",
    "data.dev_pairs",
}


def lr_at(step: int, total: int, peak: float, warmup: int, floor: float = 0.0) -> float:
    """Linear warm-up to ``peak`` over ``warmup`` steps, then cosine decay to ``floor`` at
    ``total``. A pure function of the step, so resuming needs only the step (nanoGPT)."""
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    span = max(1, total - warmup)
    t = min(1.0, (step - warmup) / span)
    return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * t))


def set_seed(seed: int, rank: int = 0) -> int:
    """Seed torch, numpy and ``random`` with seed + rank; returns the seed used."""
    s = seed + rank
    torch.manual_seed(s)
    np.random.seed(s % 2**32)
    random.seed(s)
    return s


def _rng_state() -> dict:
    st = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    np.random.set_state(st["numpy"])
    random.setstate(st["python"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


class Trainer:
    """One EMMA-X training run: ``setup(phase, resume)``, ``train()``, ``save()``, ``load()``,
    ``cleanup()``; ``run(phases, resume)`` does them in order for several phases."""

    def __init__(
        self, cfg: TrainConfig, on_step: OnStep | None = None, crash_at: int | None = None
    ):
        self.cfg = cfg
        self.on_step = on_step
        self.crash_at = crash_at  # tests: raise after this step (a kill), like faiss' crash_at
        self.out = Path(cfg.run.out)
        self.dist = D.DistInfo()
        self.history: list[dict] = []

    # ---- setup ------------------------------------------------------------------------------
    def _resolve_device(self) -> None:
        self.dist = D.setup(resolve_device(self.cfg.run.device))
        self.device = D.device_for(self.dist, resolve_device(self.cfg.run.device))
        try:
            self.precision = pick_precision(self.cfg.run.precision, self.device)
        except EmmaxError as e:
            raise ConfigError(
                f"run.precision = {self.cfg.run.precision}: {e.message}", hint=e.hint
            ) from None
        if self.cfg.run.threads:
            self._prev_threads = torch.get_num_threads()  # restored by cleanup()
            torch.set_num_threads(self.cfg.run.threads)

    def _autocast(self):
        return autocast(self.device, self.precision)

    def _start_model(self, phase: str) -> Path | str:
        """Where a phase starts: the base (ctl), else the previous phase's export."""
        if phase == "ctl" or (phase == "gmm" and self.cfg.phases.ctl_steps == 0):
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
        """Load the model, build the encoder split, key encoder, queue, heads, optimisers and
        data sampler of ``phase``; with ``resume`` restore the newest checkpoint of that phase."""
        from tokenizers import Tokenizer

        from ..models.encoder import Encoder
        from ..models.gmm import GMMHead

        if phase not in PHASES:
            raise ConfigError(f"unknown phase {phase!r}", hint=f"use one of {', '.join(PHASES)}")
        state = ck = None
        if resume:
            ck = latest_checkpoint(self.out)
            if ck is None:
                raise ConfigError(
                    f"{self.out}: no checkpoint to resume from", hint="start without --resume"
                )
            state = torch.load(ck / "trainer_state.pt", map_location="cpu", weights_only=False)
            if state["phase"] != phase:
                raise ConfigError(
                    f"the newest checkpoint {ck.name} is from phase {state['phase']}, not {phase}"
                )
            self._adopt_config(state["config"])
        cfg = self.cfg
        self._resolve_device()
        self.phase = phase
        self.seed = set_seed(cfg.run.seed, self.dist.rank)
        src = self._start_model(phase)
        enc = Encoder.load(str(src), device=self.device, precision="fp32")
        self.base_config = enc.config
        self.base_tok = enc.tokenizer  # saved with exports (the base's truncation)
        self.tok = Tokenizer.from_str(enc.tokenizer.to_str())
        self.tok.enable_truncation(cfg.model.max_length)  # training truncates shorter
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
        if (Path(str(src)) / "projection.safetensors").exists() and "proj" in self.enc.top:
            from safetensors.torch import load_file

            self.enc.top["proj"].load_state_dict(
                load_file(str(Path(str(src)) / "projection.safetensors"))
            )
        self.dim = int(self.model.config.hidden_size)
        self.N = cfg.loss.num_ranks
        self.gmm = None
        if phase == "em":
            self.gmm = GMMHead.from_dir(src, dim=self.dim).to(self.device)
            self.gmm.train()
        self.mq = MomentumQueue(self.enc.top, self.dim, cfg.run.queue_size, cfg.run.momentum).to(
            self.device
        )
        self.mq.key_top.eval()
        self.mlm = None
        if cfg.loss.mlm and phase != "gmm":
            we = self.model.embeddings.word_embeddings.weight
            self.mlm = MLMHead(self.dim, we.shape[0]).to(self.device)
            self.mask_id = self.tok.token_to_id("<mask>") or self.tok.token_to_id("[MASK]")
            if self.mask_id is None:
                raise ConfigError(
                    "loss.mlm needs a <mask> token in the tokenizer", hint="set loss.mlm = false"
                )
            specials = [
                self.tok.token_to_id(t) for t in ("<s>", "</s>", "<pad>", "[CLS]", "[SEP]", "[PAD]")
            ]
            self.special_ids = torch.tensor(
                [s for s in specials if s is not None], device=self.device
            )
        self.mask_gen = torch.Generator().manual_seed(self.seed + 1)
        params = [p for p in self.enc.top.parameters()] + (
            list(self.mlm.parameters()) if self.mlm else []
        )
        decay = [p for p in params if p.ndim >= 2]
        rest = [p for p in params if p.ndim < 2]
        o = cfg.optim
        self.opt = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": o.weight_decay},
                {"params": rest, "weight_decay": 0.0},
            ],
            lr=o.lr,
            betas=tuple(o.betas),
            eps=o.eps,
        )
        self.gmm_opt = (
            torch.optim.Adam(self.gmm.parameters(), lr=o.gmm_lr, betas=tuple(o.betas))
            if self.gmm is not None
            else None
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision == "fp16")
        self.step = 0
        self.total = cfg.phase_steps(phase)
        self.elapsed = 0.0
        self._build_data()
        if ck is not None:
            self.load(ck)

    def _adopt_config(self, saved: dict) -> None:
        """On resume the checkpoint's config wins, except for values in RESUMABLE and the
        phase lengths; differences are warned about by name."""
        mine, theirs = self.cfg.to_dict(), saved
        for sec, vals in theirs.items():
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
        self.cfg = config_from_dict(mine)

    def _build_data(self) -> None:
        cfg, d = self.cfg, self.cfg.data
        banned = eval_sentence_set(d.exclude)
        self.dev = None
        if d.dev:  # dev pairs are taken out of training: both sides join the banned set
            xx, en, langs = read_pairs(d.dev, d.dev_pairs, seed=cfg.run.seed, banned=banned)
            self.dev = (xx, en)
            banned |= {normalize_line(t) for t in xx + en}
            if self.dist.is_main:
                self.out.mkdir(parents=True, exist_ok=True)
                with atomic_output(self.out / "dev.tsv") as tmp:
                    tmp.write_text(
                        "".join(f"{a}\t{b}\t{lang}\n" for a, b, lang in zip(xx, en, langs, strict=False)),
                        encoding="utf-8",
                    )
        par = find_sources(d.parallel, "tsv", d.max_lines)
        mono = find_sources(d.mono, "mono", d.max_lines) if d.mono else []
        B = cfg.run.batch_pairs
        num_pairs, num_mono = B, 0
        if (
            self.phase == "em" and mono and d.mono_ratio > 0
        ):  # mix: 2P + M sentences, M/(2P+M) = ratio
            total = 2 * B
            num_mono = int(round(total * d.mono_ratio))
            num_pairs = max(1, (total - num_mono) // 2)
        phase_seed = cfg.run.seed * 1000 + PHASES.index(self.phase)
        self.sampler = BatchSampler(
            par,
            mono,
            num_pairs,
            num_mono,
            d.alpha,
            phase_seed,
            self.dist.rank,
            self.dist.world,
            banned,
            d.shuffle_buffer,
            d.max_lines,
        )

    # ---- encoding -----------------------------------------------------------------------------
    def _ids(self, texts: list[str]):
        encs = self.tok.encode_batch(list(texts))
        prefix = self.base_config.prefix
        if prefix:
            encs = self.tok.encode_batch([prefix + t for t in texts])
        return pad_batch([e.ids for e in encs], self.pad_id, self.device)

    @torch.no_grad()
    def embed(self, texts: list[str], batch_size: int = 128) -> torch.Tensor:
        """Query-encoder embeddings (eval mode), (n, d) float32."""
        was = self.enc.top.training
        self.enc.top.eval()
        out = []
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for s in range(0, len(texts), batch_size):
            idx = order[s : s + batch_size]
            x, m = self._ids([texts[i] for i in idx])
            h, ext = self.enc.trunk(x, m)
            with self._autocast():
                v = self.enc.sentence(self.enc.top, self.enc.top_hidden(self.enc.top, h, ext), m)
            out.append(v.float().cpu())
        self.enc.top.train(was)
        emb = torch.cat(out)
        res = torch.empty_like(emb)
        res[torch.tensor(order)] = emb
        return res

    def dev_accuracy(self) -> float | None:
        """xx->eng top-1 retrieval accuracy on the dev pairs (exact cosine)."""
        if not self.dev:
            return None
        xx, en = self.dev
        a, b = self.embed(xx), self.embed(en)
        return float(((a @ b.T).argmax(1) == torch.arange(len(xx))).float().mean())

    # ---- one micro-batch ----------------------------------------------------------------------
    def _micro(self, batch) -> tuple[torch.Tensor, dict]:
        cfg, N = self.cfg, self.N
        x, mask = self._ids(batch.texts)
        h, ext = self.enc.trunk(x, mask)
        with self._autocast():
            q = self.enc.sentence(
                self.enc.top, self.enc.top_hidden(self.enc.top, h, ext), mask
            )  # (B, d)
            with torch.no_grad():
                k = self.enc.sentence(
                    self.mq.key_top, self.enc.top_hidden(self.mq.key_top, h, ext), mask
                )
        q, k = q.float(), k.float()
        cand = torch.cat([k, self.mq.entries()])  # (B + K', d)
        S = q @ cand.T  # (B, B + K') cosines
        B, C, P = S.shape[0], S.shape[1], batch.num_pairs
        rows = torch.arange(B, device=S.device)
        exclude = torch.zeros(B, C, dtype=torch.bool, device=S.device)
        exclude[rows, rows] = True  # own key
        golden = torch.zeros_like(exclude)
        prow = torch.arange(2 * P, device=S.device)
        golden[prow, (prow + P) % (2 * P)] = True  # translation pairs (two-halves layout)
        stats: dict = {}
        if self.phase == "ctl":
            labels = golden.long() * (N - 1)
            l_ctl, _ = ranking_infonce(S, labels, exclude, [cfg.loss.tau_min] * (N - 1))
            loss = l_ctl
        else:
            gmm = self.gmm
            with torch.no_grad():
                sim = S.detach()
                c_m = gmm.rank_from_similarity(sim).clone()  # encoder's ranks -> GMM targets
                c_m[golden | exclude] = N - 1
            lj = gmm.log_joint(q.detach(), cand)  # (B, C, N), grad into the GMM only
            with torch.no_grad():
                post = torch.softmax(lj.detach(), -1)
                conf, c_g = post.max(-1)
                c_g = c_g.clone()  # GMM's ranks -> encoder labels (clone before fills: F8)
                keep = ~exclude
                gmm.update_rank_means(sim[keep], c_g[keep], cfg.loss.rank_mean_rate)
                D.average_(gmm.rank_means)
                labels = c_g.clone()
                labels[golden] = N - 1
                ok = None
                if cfg.loss.agree_filter or cfg.loss.min_posterior > 0:
                    ok = torch.ones_like(exclude)
                    if cfg.loss.agree_filter:
                        ok &= c_g == c_m
                    if cfg.loss.min_posterior > 0:
                        ok &= conf >= cfg.loss.min_posterior
                    ok |= golden
                free = keep & ~golden
                stats["agreement"] = (
                    float((c_g[free] == c_m[free]).float().mean()) if free.any() else None
                )
                dist_g = torch.bincount(c_g[keep], minlength=N).float()
                stats["rank_dist"] = [round(v, 4) for v in (dist_g / dist_g.sum()).tolist()]
                stats["rank_means"] = [round(v, 4) for v in gmm.rank_means.tolist()]
            l_ctl, rows_per = ranking_infonce(S, labels, exclude, cfg.taus(), ok)
            l_gmm = gmm_cross_entropy(
                lj,
                c_m,
                cfg.loss.label_smoothing,
                cfg.loss.class_weight_cap,
                cfg.loss.gmm_anchor / self.dim,
            )
            stats["loss_gmm"] = float(l_gmm.detach())
            stats["pos_rows"] = rows_per
            loss = l_ctl + l_gmm
        stats["loss_ctl"] = float(l_ctl.detach())
        if self.mlm is not None:
            l_mlm = self._mlm(x, mask)
            stats["loss_mlm"] = float(l_mlm.detach())
            loss = loss + cfg.loss.mlm_weight * l_mlm
        self.mq.enqueue(D.all_gather_cat(k))
        return loss, stats

    def _mlm(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """MLM on a masked copy; logits only at the masked positions (F3, F17)."""
        we = self.model.embeddings.word_embeddings.weight
        special = torch.isin(x, self.special_ids)
        xm, chosen = mask_tokens(
            x, mask, special, self.cfg.loss.mlm_prob, self.mask_id, we.shape[0], self.mask_gen
        )
        h, ext = self.enc.trunk(xm, mask)
        with self._autocast():
            hs = self.enc.top_hidden(self.enc.top, h, ext)[chosen]  # (M, d)
            logits = self.mlm(hs, we)
        return mlm_loss(logits, x[chosen], self.cfg.loss.mlm_smoothing)

    # ---- training ---------------------------------------------------------------------------
    def _params(self):
        ps = list(self.enc.top.parameters()) + (list(self.mlm.parameters()) if self.mlm else [])
        return [p for p in ps if p.requires_grad]

    def train(self) -> dict:
        """Run the phase to its end; returns a summary (last record). ``gmm`` is one step."""
        if self.phase == "gmm":
            return self._train_gmm()
        cfg, o = self.cfg, self.cfg.optim
        self.enc.top.train(cfg.model.dropout)
        t_last, n_last = time.perf_counter(), 0
        rec: dict = {}
        while self.step < self.total:
            t0 = time.perf_counter()
            lr = lr_at(self.step, self.total, o.lr, o.warmup_steps, o.min_lr)
            for g in self.opt.param_groups:
                g["lr"] = lr
            self.mq.momentum_update(self.enc.top)
            sums: dict = {}
            sents = 0
            for _ in range(o.grad_accum):
                batch = self.sampler.next()
                sents += len(batch.texts)
                loss, stats = self._micro(batch)
                self.scaler.scale(loss / o.grad_accum).backward()
                for key, v in stats.items():
                    if isinstance(v, float):
                        sums[key] = sums.get(key, 0.0) + v / o.grad_accum
                    else:
                        sums[key] = v
                sums["loss"] = sums.get("loss", 0.0) + float(loss.detach()) / o.grad_accum
            params = self._params()
            D.average_gradients(params)
            self.scaler.unscale_(self.opt)
            gnorm = torch.nn.utils.clip_grad_norm_(
                params, o.grad_clip if o.grad_clip > 0 else float("inf")
            )
            self.scaler.step(self.opt)
            self.scaler.update()
            self.opt.zero_grad(set_to_none=True)
            if self.gmm_opt is not None:
                D.average_gradients(list(self.gmm.parameters()))
                self.gmm_opt.step()
                self.gmm_opt.zero_grad(set_to_none=True)
            self.step += 1
            self.elapsed += time.perf_counter() - t0
            n_last += sents / 2 * self.dist.world  # pair equivalents (2 sentences each)
            rec = {
                "phase": self.phase,
                "step": self.step,
                "lr": lr,
                "grad_norm": float(gnorm),
                **sums,
            }
            if self.gmm_opt is not None:
                rec["gmm_lr"] = o.gmm_lr
            if self.step % cfg.run.eval_every == 0 or self.step == self.total:
                te = time.perf_counter()
                rec["dev_acc"] = self.dev_accuracy()
                t_last += time.perf_counter() - te  # throughput excludes the dev evaluation
            if self.step % cfg.run.log_every == 0 or self.step == self.total or "dev_acc" in rec:
                now = time.perf_counter()
                rec["pairs_per_s"] = n_last / max(now - t_last, 1e-9)
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
        """GMM warm-up (§4.1): encode parallel pairs with the frozen encoder, fit the head on
        interpolations toward the translation (fixed uniform lambda buckets)."""
        from ..models.gmm import fit_gmm_interpolation

        cfg = self.cfg
        t0 = time.perf_counter()
        want = cfg.phases.gmm_pairs
        xx, en = [], []
        while len(xx) < want:
            b = self.sampler.next()
            xx += b.texts[: b.num_pairs]
            en += b.texts[b.num_pairs : 2 * b.num_pairs]
        xx, en = xx[:want], en[:want]
        q, t = self.embed(xx), self.embed(en)
        q, t = D.all_gather_cat(q), D.all_gather_cat(t)
        self.gmm = fit_gmm_interpolation(
            q,
            t,
            self.N,
            steps=cfg.phases.gmm_steps,
            lr=cfg.phases.gmm_warmup_lr,
            seed=cfg.run.seed,
            golden=cfg.phases.gmm_golden,
        )
        with torch.no_grad():
            probs = self.gmm.rank_probs_pairs(q, t)
            shuffled = t[torch.roll(torch.arange(len(t)), 1)]
            rprobs = self.gmm.rank_probs_pairs(q, shuffled)
        self.step, self.elapsed = 1, time.perf_counter() - t0
        rec = {
            "phase": "gmm",
            "step": 1,
            "pairs": len(q),
            "elapsed_s": round(self.elapsed, 2),
            "train_top_rank": float((probs.argmax(-1) == self.N - 1).float().mean()),
            "train_random_rank0": float((rprobs.argmax(-1) == 0).float().mean()),
            "rank_means": [round(v, 4) for v in self.gmm.rank_means.tolist()],
        }
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
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / "train_log.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")

    # ---- checkpoints ------------------------------------------------------------------------
    def _weights(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.enc.top.state_dict().items()}

    def save(self) -> None:
        """Checkpoint the phase (rank zero writes; every rank's RNG state is gathered). The
        ``gmm`` phase has no checkpoint: its export is its result, and it is deterministic."""
        if self.phase == "gmm":
            return
        rng = _rng_state()
        rng["mask_gen"] = self.mask_gen.get_state()
        rngs = [rng]
        if self.dist.enabled:
            import torch.distributed as dist

            rngs = [None] * self.dist.world
            dist.all_gather_object(rngs, rng)
        if self.dist.is_main:
            state = {
                "phase": self.phase,
                "step": self.step,
                "seed": self.cfg.run.seed,
                "world": self.dist.world,
                "opt": self.opt.state_dict(),
                "gmm_opt": self.gmm_opt.state_dict() if self.gmm_opt else None,
                "scaler": self.scaler.state_dict(),
                "queue": self.mq.state_dict(),
                "mlm": self.mlm.state_dict() if self.mlm else None,
                "rng": rngs,
                "data_position": self.sampler.drawn,
                "elapsed": self.elapsed,
                "config": self.cfg.to_dict(),
            }
            save_checkpoint(
                self.out,
                self.phase,
                self.step,
                self._weights(),
                state,
                dump_toml(self.cfg),
                gmm=self.gmm,
                keep=self.cfg.run.keep_checkpoints,
            )
        D.barrier()

    def load(self, path: Path) -> None:
        """Restore a checkpoint made by ``save`` into a set-up trainer of the same phase."""
        weights, state = load_checkpoint(path)
        if state.get("world", 1) != self.dist.world:
            raise ConfigError(
                f"checkpoint made with {state['world']} processes, now {self.dist.world}",
                hint="resume with the same number of processes",
            )
        self.enc.top.load_state_dict(weights)
        self.mq.load_state_dict(state["queue"])
        self.opt.load_state_dict(state["opt"])
        if self.gmm_opt is not None and state.get("gmm_opt"):
            self.gmm_opt.load_state_dict(state["gmm_opt"])
        if self.mlm is not None and state.get("mlm"):
            self.mlm.load_state_dict(state["mlm"])
        self.scaler.load_state_dict(state["scaler"])
        if self.gmm is not None:
            from ..models.gmm import GMMHead

            self.gmm.load_state_dict(GMMHead.from_dir(path, dim=self.dim).state_dict())
        self.step, self.elapsed = int(state["step"]), float(state.get("elapsed", 0.0))
        self.sampler.skip(int(state["data_position"]))
        rng = state["rng"][self.dist.rank]
        self.mask_gen.set_state(rng.pop("mask_gen"))
        _set_rng_state(rng)
        log.info("resumed phase %s at step %d", self.phase, self.step)

    def export(self, root: Path) -> Path:
        """Write a complete emmax model directory (encoder, emmax.json, GMM head) atomically."""
        from ..models.loading import ModelConfig, save_model_dir, sha256_file

        if not self.dist.is_main:
            D.barrier()
            return root
        tmp = root.with_name(f".{root.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        files = {}
        if self.gmm is not None:
            self.gmm.save(tmp)
            files = {f: sha256_file(tmp / f) for f in ("gmm_head.safetensors", "gmm_head.json")}
        extra = {
            "trained_by": "emmax train",
            "phase": self.phase,
            "train_config": self.cfg.to_dict(),
        }
        if "proj" in self.enc.top:
            from safetensors.torch import save_file

            save_file(
                {k: v.contiguous() for k, v in self.enc.top["proj"].state_dict().items()},
                str(tmp / "projection.safetensors"),
            )
            extra["projection"] = "projection.safetensors"
        bc = self.base_config
        mc = ModelConfig(
            name=self.cfg.model.name,
            pooling=bc.pooling,
            normalize=bc.normalize,
            prefix=bc.prefix,
            max_length=bc.max_length,
            dim=self.dim,
            base_model=bc.base_model if bc.extra.get("trained_by") else bc.name,
            mine_threshold=bc.mine_threshold,
            mine_threshold_source=bc.mine_threshold_source,
            num_ranks=self.N if self.gmm is not None else None,
            files=files,
            extra=extra,
        )
        save_model_dir(tmp, self.model, self.base_tok, mc)
        shutil.rmtree(root, ignore_errors=True)
        os.replace(tmp, root)
        D.barrier()
        return root

    def cleanup(self) -> None:
        D.cleanup()
        if getattr(self, "_prev_threads", None):
            torch.set_num_threads(self._prev_threads)

    # ---- all phases -------------------------------------------------------------------------
    def run(self, phases: list[str] | None = None, resume: bool = False) -> dict[str, dict]:
        """Run ``phases`` (default: every phase with steps) in order; with ``resume`` skip
        the phases already exported and continue the newest checkpoint."""
        phases = phases or [p for p in PHASES if p == "gmm" or self.cfg.phase_steps(p) > 0]
        out: dict[str, dict] = {}
        ck_phase = None
        if resume:
            ck = latest_checkpoint(self.out)
            if ck is None:
                raise ConfigError(
                    f"{self.out}: no checkpoint to resume from", hint="start without --resume"
                )
            ck_phase = torch.load(ck / "trainer_state.pt", map_location="cpu", weights_only=False)[
                "phase"
            ]
        try:
            for p in phases:
                exported = (self.out / p / "emmax.json").exists()
                if ck_phase is not None and PHASES.index(p) < PHASES.index(ck_phase) and exported:
                    continue  # finished before the checkpoint was written
                self.setup(p, resume=p == ck_phase)
                if self.step >= self.total and exported:
                    continue  # the checkpoint is this phase's last step
                out[p] = self.train()
        finally:
            self.cleanup()
        return out
