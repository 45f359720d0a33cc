"""EMMA-X losses (shared/docs/emmax-algorithm.md §5): ranking InfoNCE for the encoder, label-
smoothed cross-entropy for the GMM, and an optional MLM term computed at masked positions only."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

NEG = float("-inf")


def ranking_infonce(
    sim: Tensor,
    labels: Tensor,
    exclude: Tensor,
    taus: Sequence[float],
    positive_ok: Tensor | None = None,
) -> tuple[Tensor, dict[int, int]]:
    """Ranking InfoNCE (RINCE; §5.1) over candidates with ranks 0..N-1.

    For each level r = 1..N-1: positives P_r(b) = {j : r_bj = r}, denominator D_r(b) =
    {j : r_bj <= r} (higher ranks are not pushed away), temperature ``taus[r-1]``:
        L_r = mean_b [ logsumexp_{D_r(b)} s/tau - (logsumexp_{P_r(b)} s/tau - log |P_r(b)|) ]
    over the rows b that have a positive at level r (rows without one are dropped, not
    padded with epsilons: fixes F11); L = sum_r L_r over the levels that occur.

    Args:
        sim: (B, C) cosine similarities of queries to candidates (keys, then queue).
        labels: (B, C) int64 ranks; ``exclude`` (B, C) bool marks pairs left out everywhere
            (a query's own key).
        taus: N-1 temperatures for levels 1..N-1.
        positive_ok: optional (B, C) bool; only these pairs may be positives (agreement filter);
            the others stay in the denominators at their rank.
    Returns:
        The loss (0-dim) and, per level, the number of rows that had positives.
    """
    logits_all = sim.float()
    total = sim.new_zeros((), dtype=torch.float32)
    rows: dict[int, int] = {}
    for r, tau in enumerate(taus, start=1):
        pos = (labels == r) & ~exclude
        if positive_ok is not None:
            pos &= positive_ok
        den = (labels <= r) & ~exclude
        has = pos.any(1)
        if not has.any():
            continue
        logits = logits_all[has] / tau
        p, d = pos[has], den[has]
        lse_pos = logits.masked_fill(~p, NEG).logsumexp(1) - p.sum(1).float().log()
        lse_den = logits.masked_fill(~d, NEG).logsumexp(1)
        total = total + (lse_den - lse_pos).mean()
        rows[r] = int(has.sum())
    return total, rows


def gmm_cross_entropy(
    log_joint: Tensor,
    target: Tensor,
    smoothing: float = 0.3,
    weight_cap: float = 10.0,
    anchor: float = 0.0,
) -> Tensor:
    """Label-smoothed CE of the GMM posterior against the encoder's ranks (§5.2).

    Args:
        log_joint: (..., N) log p(z, c), fp32 (from ``GMMHead.log_joint``).
        target: (...) int64 ranks.
        smoothing: eps: target prob 1 - eps, eps / (N - 1) on each other rank.
        weight_cap: each pair weighted by the inverse frequency of its target rank in the batch
            (relative to uniform), capped at this value; 0 disables the weighting.
        anchor: weight of the generative anchor -log p(z, target) (callers pass beta / d),
            which keeps mu and sigma meaningful when a rank is rare; 0 = off.
    Returns:
        Weighted mean loss (0-dim)."""
    n = log_joint.shape[-1]
    lj = log_joint.reshape(-1, n)
    t = target.reshape(-1)
    logp = torch.log_softmax(lj, -1)
    eps = smoothing if n > 1 else 0.0
    soft = torch.full_like(logp, eps / max(n - 1, 1))
    soft.scatter_(1, t[:, None], 1.0 - eps)
    per = -(soft * logp).sum(1)
    if anchor:
        per = per - anchor * lj.gather(1, t[:, None]).squeeze(1)
    if weight_cap and weight_cap > 0:
        counts = torch.bincount(t, minlength=n).float()
        present = (counts > 0).sum()
        w_class = (t.numel() / (present * counts.clamp_min(1))).clamp(max=weight_cap)
        w = w_class[t]
        return (w * per).sum() / w.sum()
    return per.mean()


class MLMHead(nn.Module):
    """BERT-style MLM head (dense, GELU, LayerNorm, decoder tied to the word embeddings).

    The base encoders ship without an MLM head, so this one starts untrained; it is used only
    for the auxiliary loss and is not exported."""

    def __init__(self, dim: int, vocab: int):
        super().__init__()
        self.dense = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.bias = nn.Parameter(torch.zeros(vocab))

    def forward(self, h: Tensor, word_embeddings: Tensor) -> Tensor:
        x = self.norm(nn.functional.gelu(self.dense(h)))
        return x @ word_embeddings.T + self.bias


def mask_tokens(
    ids: Tensor,
    attn: Tensor,
    special: Tensor,
    prob: float,
    mask_id: int,
    vocab: int,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """BERT masking (80% <mask>, 10% random, 10% kept) of ``prob`` of the non-special tokens.

    Returns the masked copy of ``ids`` (B, L) and the (B, L) bool mask of the chosen positions
    (at least one per batch)."""
    cand = attn.bool() & ~special
    r = torch.rand(ids.shape, generator=generator, device="cpu").to(ids.device)
    chosen = cand & (r < prob)
    if not chosen.any() and cand.any():
        first = cand.flatten().nonzero()[0]
        chosen.view(-1)[first] = True
    how = torch.rand(ids.shape, generator=generator, device="cpu").to(ids.device)
    rnd = torch.randint(vocab, ids.shape, generator=generator, device="cpu").to(ids.device)
    out = ids.clone()
    out[chosen & (how < 0.8)] = mask_id
    swap = chosen & (how >= 0.8) & (how < 0.9)
    out[swap] = rnd[swap]
    return out, chosen


def mlm_loss(logits: Tensor, targets: Tensor, smoothing: float = 0.1) -> Tensor:
    """Label-smoothed CE at the masked positions only: (M, V) logits, (M,) targets (fixes F3)."""
    return nn.functional.cross_entropy(logits.float(), targets, label_smoothing=smoothing)
