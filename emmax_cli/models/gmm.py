"""The EMMA-X GMM classifier: a mixture of N diagonal Gaussians over the pair feature
z = e(x) - e(y), one component per semantic rank (0 = unrelated ... N-1 = translation).

The head itself is ``gmm_head.GMMHead`` (re-exported here, with its file names), its files
``gmm_io``; this module adds the interpolation warm-up of the emma-gmm phase. Formulas:
shared/docs/emmax-algorithm.md §3 (likelihood), §4.1 (interpolation warm-up, fixed uniform
lambda buckets) and §4.2 (rank means). Files in a model directory: ``gmm_head.safetensors``
(weights) + ``gmm_head.json`` (shape)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import Tensor

from .gmm_head import (  # noqa: F401  (re-exported: callers import the head from here)
    CHUNK_ELEMENTS,
    LOG_VAR_BOUNDS,
    GMMHead,
    default_rank_names,
)
from .gmm_io import CONFIG_FILE, HEAD_FORMAT, WEIGHTS_FILE  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)


def interpolation_labels(lam: Tensor, num_ranks: int) -> Tensor:
    """Rank of an interpolation coefficient: fixed uniform buckets with edges 1/N, 2/N, ...

    lam = 1 (the translation itself) is the top rank N-1 (§4.1 emmax choice; fixes F10, whose
    edges drift with the prior and send lam = 1 to rank 0).

    Args:
        lam: coefficients in [0, 1], any shape.
        num_ranks: N.

    Returns:
        int64 labels in [0, N-1], the shape of ``lam``.
    """
    return (lam * num_ranks).floor().long().clamp_(0, num_ranks - 1)


# ---- GMM warm-up by interpolation (§4.1, the emma-gmm phase) ------------------------------------
def sample_interpolations(
    q: Tensor,
    t: Tensor,
    n: int,
    num_ranks: int,
    generator: torch.Generator,
    symmetric: bool = True,
    golden: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Pseudo-pairs at a known distance from the translation (§4.1 emmax choice).

    For random rows b, random other rows j != b and lambda ~ U(0, 1):
    y~ = lambda t_b + (1 - lambda) t_j and z = q_b - y~, labelled by the fixed lambda bucket.
    With ``symmetric`` half the samples swap the roles of the two sides (z(x, y) = -z(y, x)).
    A share ``golden`` of the samples are the translation pairs themselves (lambda = 1, rank
    N-1), as the reference warm-up overwrites its golden pairs with N-1 (§4.1, L675-677):
    with lambda ~ U(0, 1) alone a real translation only ever lies at the edge of the top bucket.

    Args:
        q: (m, d) sentences, m >= 2.
        t: (m, d) their translations (row i of t translates row i of q).
        n: samples to draw.
        num_ranks: N.
        generator: the torch generator that seeds the sampling.
        symmetric: let half the samples query from the other side.
        golden: share of samples that are the translation pairs themselves.

    Returns:
        z (n, d), labels (n,) int64, cosine(q_b, y~) (n,).
    """
    m = q.shape[0]
    b = torch.randint(m, (n,), generator=generator)
    j = (b + 1 + torch.randint(m - 1, (n,), generator=generator)) % m  # any row but b
    lam = torch.rand(n, generator=generator)
    if golden > 0:
        lam = torch.where(torch.rand(n, generator=generator) < golden, torch.ones_like(lam), lam)
    qb, tb, tj = q[b], t[b], t[j]
    if symmetric:  # half the rows query from the other side
        flip = (torch.rand(n, generator=generator) < 0.5)[:, None]
        qb, tb, tj = (
            torch.where(flip, tb, qb),
            torch.where(flip, qb, tb),
            torch.where(flip, q[j], tj),
        )
    y = lam[:, None] * tb + (1 - lam[:, None]) * tj
    z = qb - y
    cos = torch.nn.functional.cosine_similarity(qb, y, dim=1)
    return z, interpolation_labels(lam, num_ranks), cos


def fit_gmm_interpolation(
    q_emb,
    t_emb,
    num_ranks: int = 4,
    steps: int = 200,
    lr: float = 3e-3,
    batch_pairs: int = 2048,
    val_fraction: float = 0.1,
    eval_every: int = 10,
    patience: int = 5,
    symmetric: bool = True,
    seed: int = 0,
    rank_names: Sequence[str] | None = None,
    golden: float = 0.0,
) -> GMMHead:
    """Warm up a GMM head on a parallel sample, encoder frozen (the emma-gmm phase, §4.1).

    1. Interpolate toward the translation (``sample_interpolations``), labels from fixed uniform
       lambda buckets; 2. initialise mu / log_var per label from the data (§3.5); 3. a short
       Adam fit of the cross-entropy of the posterior against the labels; early stopping on
       posterior accuracy over interpolations of held-out rows; the best state is kept;
       4. rank means = mean cosine(q, y~) per label (§4.1, L679).

    Args:
        q_emb: (n, d) float, L2-normalised embeddings of n >= 4 sentences (tensor or array).
        t_emb: (n, d) their translations; the negatives of row i are the other rows.
        num_ranks: N.
        steps: Adam steps at most.
        lr: Adam learning rate.
        batch_pairs: pseudo-pairs per step.
        val_fraction: rows held out for early stopping.
        eval_every: steps between held-out checks.
        patience: checks without improvement before stopping.
        symmetric: also sample pairs in the reverse order (t as query).
        seed: seeds the sampling; the result is deterministic for a seed.
        rank_names: names of the ranks (default ``default_rank_names``).
        golden: share of the samples that are the translation pairs themselves (rank N-1).

    Returns:
        A ``GMMHead`` in eval mode on the CPU.

    Raises:
        ValueError: arrays of different shapes, or fewer than 4 pairs.
    """
    q = torch.as_tensor(q_emb).float().cpu()
    t = torch.as_tensor(t_emb).float().cpu()
    if q.shape != t.shape or q.ndim != 2 or q.shape[0] < 4:
        raise ValueError(
            f"need two (n, d) arrays of equal shape with n >= 4, got "
            f"{tuple(q.shape)} and {tuple(t.shape)}"
        )
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(q.shape[0], generator=g)
    n_val = int(round(val_fraction * q.shape[0])) if q.shape[0] >= 20 else 0
    val, train = perm[:n_val], perm[n_val:]
    qt, tt = q[train], t[train]
    qv, tv = (q[val], t[val]) if n_val >= 2 else (qt, tt)

    head = GMMHead(num_ranks, q.shape[1], rank_names=rank_names)
    z, y, _ = sample_interpolations(qt, tt, 4 * batch_pairs, num_ranks, g, symmetric, golden)
    head.init_from_data([z[y == c] for c in range(num_ranks)])
    zv, yv, _ = sample_interpolations(qv, tv, batch_pairs, num_ranks, g, symmetric, golden)

    def val_acc() -> float:
        with torch.no_grad():
            return float((head.log_joint_z(zv).argmax(-1) == yv).float().mean())

    opt = torch.optim.Adam(head.parameters(), lr=lr)
    best, best_state, stale = val_acc(), {k: v.clone() for k, v in head.state_dict().items()}, 0
    log.debug("GMM warm-up: held-out interpolation accuracy %.3f after data init", best)
    for step in range(1, steps + 1):
        z, y, _ = sample_interpolations(qt, tt, batch_pairs, num_ranks, g, symmetric, golden)
        loss = torch.nn.functional.cross_entropy(head.log_joint_z(z), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % eval_every == 0 or step == steps:
            acc = val_acc()
            if acc > best:
                best, stale = acc, 0
                best_state = {k: v.clone() for k, v in head.state_dict().items()}
            else:
                stale += 1
            log.debug(
                "GMM warm-up step %d: loss %.4f, held-out accuracy %.3f", step, loss.item(), acc
            )
            if stale >= patience:
                break
    head.load_state_dict(best_state)
    with torch.no_grad():
        z, y, cos = sample_interpolations(qt, tt, 4 * batch_pairs, num_ranks, g, symmetric, golden)
        counts = torch.bincount(y, minlength=num_ranks).clamp_min(1)
        head.rank_means.copy_(torch.zeros(num_ranks).index_add_(0, y, cos) / counts)
    log.info("GMM warm-up: held-out interpolation accuracy %.3f", best)
    return head.eval()
