"""One training step of the ctl and em phases, and the gmm phase's single fit
(shared/docs/emmax-algorithm.md §4-§6).

``optimizer_step`` is one optimiser step: momentum update of the key encoder, ``grad_accum``
micro-batches (``forward_loss`` + backward each), gradients averaged over ranks, clipping,
AdamW (and, in em, the GMM's Adam) step. ``forward_loss`` is one micro-batch:

1. q = query(x) with gradient, k = key(x) without (``encoding.py``: tokenised once, optionally
   in length-sorted sub-batches); candidates [k ; queue]; S = q [k ; queue]^T (B x (B+K));
   the query's own key is excluded.
2. ctl: labels = N-1 for the translation, 0 otherwise (plain InfoNCE at tau_min).
   em (``em.py``): the encoder's ranks (nearest rank mean of S) label the GMM; the GMM's
   posteriors on z = sg(q) - candidate label the encoder; translation pairs are forced to N-1
   in both; the rank means follow the GMM's assignments (EMA); the review's fixes by config.
3. loss = L_CTL (+ L_GMM) (+ L_MLM); k and its language (gathered from all ranks) are enqueued.
   Every ``run.level_grad_every`` steps each ranking level's gradient norm is measured.

The functions read the modules of a set-up trainer (``loop.Trainer``), described by
``StepHost``; the trainer keeps the loop, logging and checkpoints."""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor, nn

from ..device import autocast
from ..errors import ConfigError
from . import distributed as D
from .config import OptimSection, TrainConfig
from .em import EMState, em_terms
from .encoding import EncodedBatch, mlm_hidden, query_key, tokenize
from .losses import MLMHead, mask_tokens, mlm_loss, ranking_infonce
from .queue import MomentumQueue, SplitEncoder, lang_ids
from .sampler import Batch, BatchSampler

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from ..models.gmm import GMMHead

log = logging.getLogger(__name__)


class StepHost(Protocol):
    """What a step reads from a set-up trainer (attributes set by ``Trainer.setup``).

    A protocol rather than the ``Trainer`` class, so that this module does not import the
    trainer that imports it."""

    cfg: TrainConfig
    phase: str
    N: int  # number of semantic ranks
    dim: int
    device: str
    precision: str
    tok: Tokenizer  # training tokenizer (truncates at model.max_length)
    prefix: str  # the base model's input prefix ("" for none)
    pad_id: int
    model: nn.Module  # the whole base encoder (the MLM head is tied to its word embeddings)
    enc: SplitEncoder
    mq: MomentumQueue
    gmm: GMMHead | None  # em only
    em_state: EMState | None  # em only: running label frequencies
    key_prec: str  # precision of the key encoder's forward (``encoding.key_precision``)
    trunk_prec: str  # precision of the frozen trunk's forward
    step: int  # optimiser steps done in this phase
    mlm: MLMHead | None
    mask_id: int
    special_ids: Tensor
    mask_gen: torch.Generator
    opt: torch.optim.Optimizer
    gmm_opt: torch.optim.Optimizer | None
    scaler: torch.amp.GradScaler
    sampler: BatchSampler

    def embed(self, texts: list[str], batch_size: int = 128) -> Tensor:
        """Query-encoder embeddings in eval mode (``queue.embed_texts``).

        Args:
            texts: the sentences.
            batch_size: sentences per forward pass.

        Returns:
            (n, d) float32 embeddings, in input order.
        """
        ...


def lr_at(step: int, total: int, peak: float, warmup: int, floor: float = 0.0) -> float:
    """The encoder's learning rate at ``step``: linear warm-up, then cosine decay.

    A pure function of the step, so resuming needs only the step (nanoGPT ``get_lr``).

    Args:
        step: 0-based optimiser step.
        total: steps of the phase; the rate reaches ``floor`` there.
        peak: the rate at the end of the warm-up.
        warmup: warm-up steps (linear from ``peak / warmup`` to ``peak``); 0 for none.
        floor: the rate at ``total`` (``optim.min_lr``).

    Returns:
        The learning rate.
    """
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    span = max(1, total - warmup)
    t = min(1.0, (step - warmup) / span)
    return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * t))


def trainable_params(top: nn.Module, mlm: MLMHead | None) -> list[nn.Parameter]:
    """The encoder parameters the optimiser updates: the trainable top, then the MLM head.

    Args:
        top: the query encoder's trainable top (``SplitEncoder.top``).
        mlm: the MLM head, or None.

    Returns:
        The parameters, in a fixed order (the optimiser state depends on it).
    """
    return list(top.parameters()) + (list(mlm.parameters()) if mlm else [])


def build_mlm(model: nn.Module, tok: Tokenizer, device: str) -> tuple[MLMHead, int, Tensor]:
    """The MLM head of the auxiliary loss, tied to the base model's word embeddings.

    Args:
        model: the transformers encoder.
        tok: the training tokenizer.
        device: where the head goes.

    Returns:
        ``(head, mask_id, special_ids)``: an untrained ``MLMHead``, the id of the mask token
        and a 1-D tensor of the special-token ids (never masked).

    Raises:
        ConfigError: the tokenizer has no ``<mask>`` or ``[MASK]`` token.
    """
    we = model.embeddings.word_embeddings.weight
    dim = int(model.config.hidden_size)
    head = MLMHead(dim, we.shape[0]).to(device)
    mask_id = tok.token_to_id("<mask>") or tok.token_to_id("[MASK]")
    if mask_id is None:
        raise ConfigError(
            "loss.mlm needs a <mask> token in the tokenizer", hint="set loss.mlm = false"
        )
    specials = [tok.token_to_id(t) for t in ("<s>", "</s>", "<pad>", "[CLS]", "[SEP]", "[PAD]")]
    special_ids = torch.tensor([s for s in specials if s is not None], device=device)
    return head, mask_id, special_ids


def build_optimizers(
    o: OptimSection, top: nn.Module, mlm: MLMHead | None, gmm: nn.Module | None
) -> tuple[torch.optim.AdamW, torch.optim.Adam | None]:
    """AdamW for the encoder (decay on 2-D parameters only, nanoGPT), Adam for the GMM.

    Args:
        o: the ``[optim]`` section.
        top: the query encoder's trainable top.
        mlm: the MLM head, or None.
        gmm: the GMM head (em phase), or None.

    Returns:
        ``(encoder optimiser, GMM optimiser or None)``.
    """
    params = trainable_params(top, mlm)
    decay = [p for p in params if p.ndim >= 2]
    rest = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": o.weight_decay}, {"params": rest, "weight_decay": 0.0}],
        lr=o.lr,
        betas=tuple(o.betas),
        eps=o.eps,
    )
    gmm_opt = (
        torch.optim.Adam(gmm.parameters(), lr=o.gmm_lr, betas=tuple(o.betas))
        if gmm is not None
        else None
    )
    return opt, gmm_opt


def optimizer_step(tr: StepHost, lr: float) -> tuple[dict[str, Any], int]:
    """One optimiser step: ``optim.grad_accum`` micro-batches, then the update.

    Args:
        tr: a set-up trainer of the ctl or em phase.
        lr: the encoder's learning rate for this step (``lr_at``).

    Returns:
        ``(stats, sentences)``: ``grad_norm`` and the micro-batch statistics (losses averaged
        over micro-batches, the last micro-batch's lists; ``grad_norm_level{r}`` on the steps
        ``run.level_grad_every`` picks), and the number of sentences this rank encoded.
    """
    o = tr.cfg.optim
    for g in tr.opt.param_groups:
        g["lr"] = lr
    tr.mq.momentum_update(tr.enc.top)
    sums: dict[str, Any] = {}
    sents = 0
    params = [p for p in trainable_params(tr.enc.top, tr.mlm) if p.requires_grad]
    every = tr.cfg.run.level_grad_every
    for micro in range(o.grad_accum):
        batch = tr.sampler.next()
        sents += len(batch.texts)
        loss, stats, levels = forward_loss(tr, batch)
        if every and (tr.step + 1) % every == 0 and micro == o.grad_accum - 1:
            stats.update(level_grad_norms(tr, levels, params))
        tr.scaler.scale(loss / o.grad_accum).backward()
        for key, v in stats.items():
            if isinstance(v, float):
                sums[key] = sums.get(key, 0.0) + v / o.grad_accum
            else:
                sums[key] = v
        sums["loss"] = sums.get("loss", 0.0) + float(loss.detach()) / o.grad_accum
    D.average_gradients(params)
    tr.scaler.unscale_(tr.opt)
    gnorm = torch.nn.utils.clip_grad_norm_(params, o.grad_clip if o.grad_clip > 0 else float("inf"))
    tr.scaler.step(tr.opt)
    tr.scaler.update()
    tr.opt.zero_grad(set_to_none=True)
    if tr.gmm_opt is not None:
        D.average_gradients(list(tr.gmm.parameters()))
        tr.gmm_opt.step()
        tr.gmm_opt.zero_grad(set_to_none=True)
    return {"grad_norm": float(gnorm), **sums}, sents


def level_grad_norms(
    tr: StepHost, levels: dict[int, Tensor], params: list[nn.Parameter]
) -> dict[str, float]:
    """The gradient norm of each ranking level's loss term with respect to the encoder's
    trainable parameters (one micro-batch, before clipping), and a warning (at most once per
    ``run.level_grad_warn_every`` steps) when the levels below the top outweigh it.

    Each level costs one extra backward pass through the trained layers (the graph is kept
    for the step's own backward); no random numbers are drawn, so the run is unchanged.

    Args:
        tr: a set-up trainer.
        levels: {level: weighted 0-dim loss term} of the micro-batch (``forward_loss``).
        params: the trainable parameters.

    Returns:
        ``{"grad_norm_level{r}": norm}`` for r = 1..N-1 (0.0 for a level without a term).
    """
    out = {}
    for r in range(1, tr.N):
        t = levels.get(r)
        if t is None or not t.requires_grad:
            out[f"grad_norm_level{r}"] = 0.0
            continue
        grads = torch.autograd.grad(t, params, retain_graph=True, allow_unused=True)
        sq = sum(float(g.detach().float().pow(2).sum()) for g in grads if g is not None)
        out[f"grad_norm_level{r}"] = sq**0.5
    lower = sum(out[f"grad_norm_level{r}"] for r in range(1, tr.N - 1))
    top = out[f"grad_norm_level{tr.N - 1}"]
    last = getattr(tr, "_level_warned", None)
    step = tr.step + 1
    if lower > top and (last is None or step - last >= tr.cfg.run.level_grad_warn_every):
        tr._level_warned = step
        log.warning(
            "%s step %d: levels 1..%d have gradient norm %.3g, the translation level %.3g: "
            "the positives below the top rank steer the update (loss.related_filter, "
            "loss.lower_weight)",
            tr.phase,
            step,
            tr.N - 2,
            lower,
            top,
        )
    return out


def forward_loss(tr: StepHost, batch: Batch) -> tuple[Tensor, dict[str, Any], dict[int, Tensor]]:
    """The loss of one micro-batch (steps 1-3 of the module docstring); enqueues the keys.

    Args:
        tr: a set-up trainer of the ctl or em phase.
        batch: ``[xx_1..xx_P ; eng_1..eng_P ; mono...]`` sentences.

    Returns:
        ``(loss, stats, levels)``: the 0-dim loss to back-propagate, the per-term values
        (``loss_ctl``; em: ``loss_gmm``, ``agreement``, ``rank_dist``, ``rank_means``,
        ``pos_rows``; with MLM: ``loss_mlm``), and the ranking loss's weighted terms per level.
    """
    cfg, N, mq = tr.cfg, tr.N, tr.mq
    eb = tokenize(tr, batch.texts)
    q, k = query_key(tr, eb)  # (B, d) each; k without gradient
    cand = torch.cat([k, mq.entries()])  # (B + K', d)
    S = q @ cand.T  # (B, B + K') cosines
    B, C, P = S.shape[0], S.shape[1], batch.num_pairs
    rows = torch.arange(B, device=S.device)
    exclude = torch.zeros(B, C, dtype=torch.bool, device=S.device)
    exclude[rows, rows] = True  # own key
    golden = torch.zeros_like(exclude)
    prow = torch.arange(2 * P, device=S.device)
    golden[prow, (prow + P) % (2 * P)] = True  # translation pairs (two-halves layout)
    langs = lang_ids(batch.langs, S.device) if batch.langs else torch.full((B,), -1)
    stats: dict[str, Any] = {}
    if tr.phase == "ctl":
        labels = golden.long() * (N - 1)
        l_ctl, _ = ranking_infonce(S, labels, exclude, [cfg.loss.tau_min] * (N - 1))
        levels = {N - 1: l_ctl}
        loss = l_ctl
    else:
        lang_c = torch.cat([langs.to(S.device), mq.entry_langs()])
        levels, l_gmm = em_terms(
            cfg, tr.gmm, tr.em_state, q, cand, S, exclude, golden, batch, lang_c, stats
        )
        l_ctl = S.new_zeros((), dtype=torch.float32)
        for t in levels.values():
            l_ctl = l_ctl + t
        loss = l_ctl + l_gmm
    stats["loss_ctl"] = float(l_ctl.detach())
    if tr.mlm is not None:
        l_mlm = mlm_term(tr, eb)
        stats["loss_mlm"] = float(l_mlm.detach())
        loss = loss + cfg.loss.mlm_weight * l_mlm
    mq.enqueue(D.all_gather_cat(k), D.all_gather_cat(langs.to(k.device)))
    return loss, stats, levels


def mlm_term(tr: StepHost, eb: EncodedBatch) -> Tensor:
    """Masked-LM loss on a masked copy of the batch; logits only at the masked positions.

    Args:
        tr: a set-up trainer with an MLM head.
        eb: the encoded batch; the masks are drawn on its (B, L) padded ids, so the random
            numbers do not depend on ``run.sub_batches``.

    Returns:
        The 0-dim label-smoothed cross-entropy (fixes F3, F17).
    """
    we = tr.model.embeddings.word_embeddings.weight
    special = torch.isin(eb.x, tr.special_ids)
    xm, chosen = mask_tokens(
        eb.x, eb.mask, special, tr.cfg.loss.mlm_prob, tr.mask_id, we.shape[0], tr.mask_gen
    )
    hs, targets = mlm_hidden(tr, eb, xm, chosen)  # (M, d), (M,)
    with autocast(tr.device, tr.precision):
        logits = tr.mlm(hs, we)
    return mlm_loss(logits, targets, tr.cfg.loss.mlm_smoothing)


def gmm_warmup(tr: StepHost) -> tuple[GMMHead, dict[str, Any]]:
    """The gmm phase (§4.1): encode parallel pairs with the frozen encoder and fit the head on
    interpolations toward the translation (fixed uniform lambda buckets).

    Args:
        tr: a set-up trainer of the gmm phase.

    Returns:
        ``(head, record)``: the fitted GMM head and the phase's log record (time taken,
        training-pair accuracy of the top rank, of rank 0 on shuffled pairs, the rank means).
    """
    from ..models.gmm import fit_gmm_interpolation

    cfg = tr.cfg
    t0 = time.perf_counter()
    want = cfg.phases.gmm_pairs
    xx: list[str] = []
    en: list[str] = []
    while len(xx) < want:
        b = tr.sampler.next()
        xx += b.texts[: b.num_pairs]
        en += b.texts[b.num_pairs : 2 * b.num_pairs]
    xx, en = xx[:want], en[:want]
    q, t = tr.embed(xx), tr.embed(en)
    q, t = D.all_gather_cat(q), D.all_gather_cat(t)
    gmm = fit_gmm_interpolation(
        q,
        t,
        tr.N,
        steps=cfg.phases.gmm_steps,
        lr=cfg.phases.gmm_warmup_lr,
        seed=cfg.run.seed,
        golden=cfg.phases.gmm_golden,
    )
    with torch.no_grad():
        probs = gmm.rank_probs_pairs(q, t)
        shuffled = t[torch.roll(torch.arange(len(t)), 1)]
        rprobs = gmm.rank_probs_pairs(q, shuffled)
    rec = {
        "phase": "gmm",
        "step": 1,
        "pairs": len(q),
        "elapsed_s": round(time.perf_counter() - t0, 2),
        "train_top_rank": float((probs.argmax(-1) == tr.N - 1).float().mean()),
        "train_random_rank0": float((rprobs.argmax(-1) == 0).float().mean()),
        "rank_means": [round(v, 4) for v in gmm.rank_means.tolist()],
    }
    return gmm, rec
