"""The em step's labels and losses (shared/docs/emmax-algorithm.md §6), with the fixes of the
EM review (shared/docs/em-diagnosis.md) behind ``[loss]`` switches.

With every switch off this is "EM as it is now" (ablation arm B): the GMM's argmax ranks label
the encoder, every pair the GMM puts at a level 1..N-1 is a positive there, each level is
averaged over the rows that have a positive, the GMM's prior is learned and its CE uses uniform
smoothing and batch-frequency class weights. The fixed EM (arm C, ``configs/emmax-small-v2.toml``):

* ``level_norm = "all"``: each level's sum over rows is divided by all B rows (finding 3).
* ``related_filter``: a positive below the top rank must be cross-lingual, confident
  (P_G >= ``related_min_posterior``) and above that rank's mean cosine (finding 1).
* ``lower_weight``: the weight of levels 1..N-2 (0 = arm C0: the translation level alone).
* ``top_positives = "dup_mnn"``: besides the translation pairs, the top-level positives are the
  multi-way duplicates of the batch (two pairs with the same English side: their sentences are
  translations of each other, which ctl treats as negatives) and the mutual nearest neighbours
  in the batch that the GMM calls translations (finding 5: its top-rank calls are precise).
* ``em_labels = false``: ablation arm A, ctl's labels (translations, and the duplicates with
  ``dup_mnn``) on the same em batches; the GMM is neither used nor trained.
* ``gmm_calibrate``: the GMM's prior is replaced by running label frequencies (an EMA of the
  encoder's ranks, the GMM's targets), its smoothing is spread by those frequencies and its
  class weights come from them, capped (finding 4). The head's own prior is not trained in em,
  so the exported head keeps the warm-up prior for ranking user pairs.

Per-level gradient norms (``run.level_grad_every``) are measured in ``step.optimizer_step``."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from . import distributed as D
from .data import normalize_line
from .losses import gmm_cross_entropy, ranking_levels

if TYPE_CHECKING:
    from ..models.gmm import GMMHead
    from .config import TrainConfig
    from .sampler import Batch

log = logging.getLogger(__name__)


class EMState(nn.Module):
    """State of the em phase kept outside the GMM head (checkpointed with the trainer).

    Buffers: ``label_freq`` (N,) running frequencies of the GMM's targets (all 0 until the
    first em step).

    Args:
        num_ranks: N.
    """

    def __init__(self, num_ranks: int):
        super().__init__()
        self.register_buffer("label_freq", torch.zeros(num_ranks))

    @torch.no_grad()
    def update(self, target: Tensor, rate: float) -> Tensor:
        """Fold one batch's target ranks into the running frequencies.

        Args:
            target: int64 ranks of the pairs (any shape).
            rate: EMA rate; the first batch sets the frequencies.

        Returns:
            (N,) the frequencies to use now: floored at 1e-6 and renormalised.
        """
        n = self.label_freq.numel()
        counts = torch.bincount(target.reshape(-1), minlength=n).float()
        counts = D.average_(counts.to(self.label_freq))
        batch = counts / counts.sum().clamp_min(1.0)
        if float(self.label_freq.sum()) == 0.0:
            self.label_freq.copy_(batch)
        else:
            self.label_freq.mul_(1.0 - rate).add_(batch, alpha=rate)
        f = self.label_freq.clamp_min(1e-6)
        return f / f.sum()


def related_positives(
    sim: Tensor,
    labels: Tensor,
    conf: Tensor,
    rank_means: Tensor,
    lang_q: Tensor,
    lang_c: Tensor,
    min_posterior: float,
) -> Tensor:
    """Which pairs below the top rank may be positives: cross-lingual, confident, and more
    similar than their rank's mean.

    Args:
        sim: (B, C) cosines.
        labels: (B, C) int64 GMM ranks.
        conf: (B, C) the GMM's posterior of its chosen rank.
        rank_means: (N,) running mean cosine per rank.
        lang_q: (B,) int64 language ids of the queries (-1 unknown).
        lang_c: (C,) int64 language ids of the candidates (-1 unknown).
        min_posterior: p_min.

    Returns:
        (B, C) bool: True where a level 1..N-2 pair passes (the top rank and rank 0 are
        always True: this filter does not judge them).
    """
    n = rank_means.numel()
    lower = (labels > 0) & (labels < n - 1)
    cross = (lang_q[:, None] != lang_c[None, :]) & (lang_q[:, None] >= 0) & (lang_c[None, :] >= 0)
    above = sim > rank_means[labels]
    ok = cross & (conf >= min_posterior) & above
    return ~lower | ok


def duplicate_pairs(batch: Batch, num_cand: int, device: Any) -> Tensor:
    """Multi-way duplicates: sentences of the batch that are translations of each other because
    their pairs share the English side (or a monolingual sentence equals that side).

    Args:
        batch: ``[xx_1..xx_P ; eng_1..eng_P ; mono...]``.
        num_cand: C, the number of candidates (batch keys, then queue).
        device: where the mask goes.

    Returns:
        (B, C) bool; True for (row, batch key) of the same meaning group, own key excluded.
        The translation pairs themselves are included. Queue columns are False.
    """
    P, B = batch.num_pairs, len(batch.texts)
    names: dict[str, int] = {}
    group = []
    for i, t in enumerate(batch.texts):
        key = normalize_line(batch.texts[P + i] if i < P else t)
        group.append(names.setdefault(key, len(names)))
    g = torch.tensor(group, device=device)
    dup = torch.zeros(B, num_cand, dtype=torch.bool, device=device)
    dup[:, :B] = g[:, None] == g[None, :]
    dup[torch.arange(B, device=device), torch.arange(B, device=device)] = False
    return dup


def mutual_neighbours(sim: Tensor, blocked: Tensor) -> Tensor:
    """Mutual nearest neighbours among the batch keys.

    Args:
        sim: (B, C) cosines; columns < B are the batch's own keys.
        blocked: (B, C) bool, pairs that may not be neighbours (own key, translation pairs,
            known duplicates).

    Returns:
        (B, C) bool: (b, j) with j < B, j the nearest allowed batch key of b and b that of j.
    """
    B = sim.shape[0]
    s = sim[:, :B].masked_fill(blocked[:, :B], float("-inf"))
    nn_idx = s.argmax(1)
    valid = torch.isfinite(s.max(1).values)
    rows = torch.arange(B, device=sim.device)
    mutual = valid & valid[nn_idx] & (nn_idx[nn_idx] == rows)
    out = torch.zeros_like(blocked)
    out[rows[mutual], nn_idx[mutual]] = True
    return out


def em_terms(
    cfg: TrainConfig,
    gmm: GMMHead,
    em_state: EMState,
    q: Tensor,
    cand: Tensor,
    S: Tensor,
    exclude: Tensor,
    golden: Tensor,
    batch: Batch,
    lang_c: Tensor,
    stats: dict[str, Any],
) -> tuple[dict[int, Tensor], Tensor]:
    """The em losses of one micro-batch (§6 steps 2-5, with the review's fixes by config).

    Args:
        cfg: the config (``[loss]`` switches).
        gmm: the GMM head (trained by the returned GMM loss).
        em_state: running label frequencies (``gmm_calibrate``).
        q: (B, d) query vectors (with gradient).
        cand: (C, d) candidates: batch keys, then the queue.
        S: (B, C) ``q @ cand.T``.
        exclude: (B, C) bool, own keys.
        golden: (B, C) bool, translation pairs.
        batch: the sentences (duplicates, languages).
        lang_c: (C,) int64 language ids of the candidates.
        stats: filled with ``agreement``, ``rank_dist``, ``rank_means``, ``pos_rows``,
            ``loss_gmm`` and, when a switch uses them, ``dup_pos`` / ``mnn_pos``.

    Returns:
        ``(levels, l_gmm)``: {level: weighted ranking-loss term} and the GMM loss.
    """
    lo, N = cfg.loss, cfg.loss.num_ranks
    fixed_top = lo.top_positives == "dup_mnn"
    dup = duplicate_pairs(batch, S.shape[1], S.device) if fixed_top else None
    if not lo.em_labels:  # arm A: ctl's labels on the em batches; the GMM rests
        labels = (golden if dup is None else golden | dup).long() * (N - 1)
        levels, rows = ranking_levels(S, labels, exclude, cfg.taus(), None, lo.level_norm)
        stats["pos_rows"] = rows
        return levels, S.new_zeros((), dtype=torch.float32)
    with torch.no_grad():
        sim = S.detach()
        c_m = gmm.rank_from_similarity(sim).clone()  # encoder's ranks -> GMM targets
        c_m[golden | exclude] = N - 1
        if dup is not None:
            c_m[dup] = N - 1  # known translations (same English side)
    lj = gmm.log_joint(q.detach(), cand)  # (B, C, N), grad into the GMM only
    freq = None
    if lo.gmm_calibrate:
        freq = em_state.update(c_m[~exclude], lo.label_freq_rate)
        # the prior is the label frequencies (the head's own prior is frozen in em: Trainer)
        lj = lj - torch.log_softmax(gmm.prior_logits.float(), 0) + freq.log()
    with torch.no_grad():
        labels, ok = _labels(cfg, gmm, sim, lj, c_m, exclude, golden, dup, batch, lang_c, stats)
    weights = [lo.lower_weight] * (N - 2) + [1.0]
    levels, rows = ranking_levels(S, labels, exclude, cfg.taus(), ok, lo.level_norm, weights)
    l_gmm = gmm_cross_entropy(
        lj, c_m, lo.label_smoothing, lo.class_weight_cap, lo.gmm_anchor / q.shape[1], freq
    )
    stats["loss_gmm"] = float(l_gmm.detach())
    stats["pos_rows"] = rows
    if freq is not None:
        stats["label_freq"] = [round(v, 6) for v in freq.tolist()]
    return levels, l_gmm


def _labels(
    cfg: TrainConfig,
    gmm: GMMHead,
    sim: Tensor,
    lj: Tensor,
    c_m: Tensor,
    exclude: Tensor,
    golden: Tensor,
    dup: Tensor | None,
    batch: Batch,
    lang_c: Tensor,
    stats: dict[str, Any],
) -> tuple[Tensor, Tensor | None]:
    """The GMM's ranks label the encoder; updates the rank means; fills ``stats``.

    Returns (B, C) int64 encoder labels and the optional (B, C) bool positive filter."""
    lo, N = cfg.loss, cfg.loss.num_ranks
    post = torch.softmax(lj.detach(), -1)
    conf, c_g = post.max(-1)
    c_g = c_g.clone()  # GMM's ranks -> encoder labels (clone before fills: F8)
    keep = ~exclude
    gmm.update_rank_means(sim[keep], c_g[keep], lo.rank_mean_rate)
    D.average_(gmm.rank_means)
    labels = c_g.clone()
    labels[golden] = N - 1
    ok = None
    if lo.agree_filter or lo.min_posterior > 0 or lo.related_filter or dup is not None:
        ok = torch.ones_like(exclude)
        if lo.agree_filter:
            ok &= c_g == c_m
        if lo.min_posterior > 0:
            ok &= conf >= lo.min_posterior
        if lo.related_filter:
            lang_q = lang_c[: sim.shape[0]]
            ok &= related_positives(
                sim, labels, conf, gmm.rank_means, lang_q, lang_c, lo.related_min_posterior
            )
        if dup is not None:
            mnn = mutual_neighbours(sim, exclude | golden | dup) & (c_g == N - 1)
            top = labels == N - 1
            ok &= ~top | mnn  # a GMM "translation" call must be a mutual nearest neighbour
            labels[dup] = N - 1
            ok |= dup
            stats["dup_pos"] = int((dup & ~golden).sum())
            stats["mnn_pos"] = int(mnn.sum())
        ok |= golden
    free = keep & ~golden
    stats["agreement"] = float((c_g[free] == c_m[free]).float().mean()) if free.any() else None
    dist_g = torch.bincount(c_g[keep], minlength=N).float()
    stats["rank_dist"] = [round(v, 4) for v in (dist_g / dist_g.sum()).tolist()]
    stats["rank_means"] = [round(v, 4) for v in gmm.rank_means.tolist()]
    return labels, ok
