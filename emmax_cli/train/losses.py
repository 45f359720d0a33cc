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
    level_norm: str = "present",
    level_weights: Sequence[float] | None = None,
) -> tuple[Tensor, dict[int, int]]:
    """Ranking InfoNCE (RINCE; §5.1) over candidates with ranks 0..N-1: the sum of
    ``ranking_levels``.

    Args:
        sim: (B, C) cosine similarities of queries to candidates (keys, then queue).
        labels: (B, C) int64 ranks; ``exclude`` (B, C) bool marks pairs left out everywhere
            (a query's own key).
        taus: N-1 temperatures for levels 1..N-1.
        positive_ok: optional (B, C) bool; only these pairs may be positives (agreement filter);
            the others stay in the denominators at their rank.
        level_norm: ``present`` (mean over the rows with a positive) or ``all`` (sum over
            those rows divided by B).
        level_weights: N-1 weights of levels 1..N-1 (default all 1; a level weighted 0 is not
            computed at all).

    Returns:
        The loss (0-dim) and, per level, the number of rows that had positives.
    """
    terms, rows = ranking_levels(sim, labels, exclude, taus, positive_ok, level_norm, level_weights)
    total = sim.new_zeros((), dtype=torch.float32)
    for t in terms.values():
        total = total + t
    return total, rows


def ranking_levels(
    sim: Tensor,
    labels: Tensor,
    exclude: Tensor,
    taus: Sequence[float],
    positive_ok: Tensor | None = None,
    level_norm: str = "present",
    level_weights: Sequence[float] | None = None,
) -> tuple[dict[int, Tensor], dict[int, int]]:
    """The weighted per-level terms of the ranking InfoNCE (RINCE; §5.1).

    For each level r = 1..N-1: positives P_r(b) = {j : r_bj = r}, denominator D_r(b) =
    {j : r_bj <= r} (higher ranks are not pushed away), temperature ``taus[r-1]``:
        l_r(b) = logsumexp_{D_r(b)} s/tau - (logsumexp_{P_r(b)} s/tau - log |P_r(b)|)
    over the rows b that have a positive at level r (rows without one contribute nothing:
    fixes F11). ``level_norm = "present"`` averages l_r over those rows, so a level with one
    row weighs as much as the translation level (the review's finding 3); ``"all"`` divides
    their sum by all B rows (the reference code), so a level weighs by how many rows have it.
    Each term is multiplied by its level weight.

    Args:
        sim: (B, C) cosine similarities.
        labels: (B, C) int64 ranks.
        exclude: (B, C) bool, pairs left out everywhere.
        taus: N-1 temperatures.
        positive_ok: optional (B, C) bool positive filter.
        level_norm: ``present`` or ``all``.
        level_weights: N-1 weights (default 1 each); levels weighted 0 are skipped.

    Returns:
        ``(terms, rows)``: {level: weighted 0-dim loss} for the levels that occur (and have
        a non-zero weight), and {level: rows with a positive} for every level that occurs.
    """
    logits_all = sim.float()
    B = sim.shape[0]
    weights = list(level_weights) if level_weights is not None else [1.0] * len(taus)
    terms: dict[int, Tensor] = {}
    rows: dict[int, int] = {}
    for r, tau in enumerate(taus, start=1):
        pos = (labels == r) & ~exclude
        if positive_ok is not None:
            pos &= positive_ok
        has = pos.any(1)
        if not has.any():
            continue
        rows[r] = int(has.sum())
        w = float(weights[r - 1])
        if w == 0.0:
            continue  # not in the graph: no gradient at all from this level (arm C0)
        den = (labels <= r) & ~exclude
        logits = logits_all[has] / tau
        p, d = pos[has], den[has]
        lse_pos = logits.masked_fill(~p, NEG).logsumexp(1) - p.sum(1).float().log()
        lse_den = logits.masked_fill(~d, NEG).logsumexp(1)
        per = lse_den - lse_pos
        term = per.mean() if level_norm == "present" else per.sum() / B
        terms[r] = term * w if w != 1.0 else term
    return terms, rows


def gmm_cross_entropy(
    log_joint: Tensor,
    target: Tensor,
    smoothing: float = 0.3,
    weight_cap: float = 10.0,
    anchor: float = 0.0,
    freq: Tensor | None = None,
) -> Tensor:
    """Label-smoothed CE of the GMM posterior against the encoder's ranks (§5.2).

    Args:
        log_joint: (..., N) log p(z, c), fp32 (from ``GMMHead.log_joint``).
        target: (...) int64 ranks.
        smoothing: eps: target prob 1 - eps; the rest goes to the other ranks, evenly, or in
            proportion to ``freq`` when given.
        weight_cap: class weights are capped at this value; 0 disables the weighting. Without
            ``freq``: inverse frequency of the target rank in the batch, relative to uniform.
            With ``freq``: (f_max / f_c) ** 0.5, from the running label frequencies.
        anchor: weight of the generative anchor -log p(z, target) (callers pass beta / d),
            which keeps mu and sigma meaningful when a rank is rare; 0 = off.
        freq: optional (N,) label frequencies (positive, summing to 1): calibrated smoothing
            and class weights (``loss.gmm_calibrate``).

    Returns:
        Weighted mean loss (0-dim)."""
    n = log_joint.shape[-1]
    lj = log_joint.reshape(-1, n)
    t = target.reshape(-1)
    logp = torch.log_softmax(lj, -1)
    eps = smoothing if n > 1 else 0.0
    if freq is None:
        soft = torch.full_like(logp, eps / max(n - 1, 1))
    else:  # eps spread over the other ranks in proportion to how often they occur
        other = freq.to(logp)[None].expand(len(t), n).clone()
        other.scatter_(1, t[:, None], 0.0)
        soft = eps * other / other.sum(1, keepdim=True).clamp_min(1e-12)
    soft.scatter_(1, t[:, None], 1.0 - eps)
    per = -(soft * logp).sum(1)
    if anchor:
        per = per - anchor * lj.gather(1, t[:, None]).squeeze(1)
    if weight_cap and weight_cap > 0:
        if freq is None:
            counts = torch.bincount(t, minlength=n).float()
            present = (counts > 0).sum()
            w_class = (t.numel() / (present * counts.clamp_min(1))).clamp(max=weight_cap)
        else:
            f = freq.to(logp)
            w_class = (f.max() / f.clamp_min(1e-12)).sqrt().clamp(max=weight_cap)
        w = w_class[t]
        return (w * per).sum() / w.sum()
    return per.mean()


class MLMHead(nn.Module):
    """BERT-style MLM head (dense, GELU, LayerNorm, decoder tied to the word embeddings).

    The base encoders ship without an MLM head, so this one starts untrained; it is used only
    for the auxiliary loss and is not exported.

    Args:
        dim: hidden size d.
        vocab: vocabulary size V.
    """

    def __init__(self, dim: int, vocab: int):
        super().__init__()
        self.dense = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.bias = nn.Parameter(torch.zeros(vocab))

    def forward(self, h: Tensor, word_embeddings: Tensor) -> Tensor:
        """Token logits.

        Args:
            h: (M, d) hidden states at the masked positions.
            word_embeddings: (V, d) the encoder's word embeddings (the tied decoder).

        Returns:
            (M, V) logits.
        """
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

    Args:
        ids: (B, L) int64 token ids.
        attn: (B, L) attention mask.
        special: (B, L) bool, tokens never masked.
        prob: the share of tokens chosen.
        mask_id: the mask token's id.
        vocab: vocabulary size (random replacements).
        generator: a CPU generator (its state is checkpointed, so resume is exact).

    Returns:
        The masked copy of ``ids`` (B, L) and the (B, L) bool mask of the chosen positions
        (at least one per batch).
    """
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
    """Label-smoothed cross-entropy at the masked positions only (fixes F3).

    Args:
        logits: (M, V) logits.
        targets: (M,) int64 original token ids.
        smoothing: label smoothing.

    Returns:
        The mean loss (0-dim, fp32).
    """
    return nn.functional.cross_entropy(logits.float(), targets, label_smoothing=smoothing)
