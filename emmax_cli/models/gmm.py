"""The EMMA-X GMM classifier: a mixture of N diagonal Gaussians over the pair feature
z = e(x) - e(y), one component per semantic rank (0 = unrelated ... N-1 = translation).

Formulas: shared/docs/emmax-algorithm.md §3 (likelihood, memory-safe expansion, variance
clamp), §4.1 (interpolation warm-up, fixed uniform lambda buckets) and §4.2 (rank means).
Files in a model directory: ``gmm_head.safetensors`` (weights) + ``gmm_head.json`` (shape)."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import ModelLoadError

log = logging.getLogger(__name__)

WEIGHTS_FILE = "gmm_head.safetensors"
CONFIG_FILE = "gmm_head.json"
HEAD_FORMAT = 1
LOG_VAR_BOUNDS = (-12.0, 2.0)  # §3.5: unit vectors give per-dim variance ~2/d, i.e. log ~ -6
# Elements of one (chunk, K, N) temporary in log_joint: 2**24 fp32 = 64 MiB.
CHUNK_ELEMENTS = 1 << 24
LOG_2PI = math.log(2 * math.pi)


def default_rank_names(num_ranks: int) -> list[str]:
    """Descriptive names (§4): the labels are operational, defined by interpolation buckets."""
    if num_ranks == 4:
        return [
            "unrelated",
            "topically related",
            "close paraphrase or partial overlap",
            "translation or near-paraphrase",
        ]
    names = [f"rank {c}" for c in range(num_ranks)]
    names[0], names[-1] = "unrelated", "translation or near-paraphrase"
    return names


def interpolation_labels(lam: Tensor, num_ranks: int) -> Tensor:
    """Rank of an interpolation coefficient: fixed uniform buckets with edges 1/N, 2/N, ...

    ``lam`` in [0, 1] -> int64 labels in [0, N-1]; lam = 1 (the translation itself) is the top
    rank N-1 (§4.1 emmax choice; fixes F10, whose edges drift with the prior and send lam = 1
    to rank 0)."""
    return (lam * num_ranks).floor().long().clamp_(0, num_ranks - 1)


class GMMHead(nn.Module):
    """N diagonal Gaussians over z = q - k (d-dimensional), with mixing logits.

    Parameters: ``mu`` (N, d), ``log_var`` (N, d) = log sigma^2, clamped to ``log_var_bounds``
    when used, ``prior_logits`` (N,). Buffer: ``rank_means`` (N,), the running mean cosine of
    the pairs assigned to each rank (§4.2), saved with the head."""

    def __init__(
        self,
        num_ranks: int = 4,
        dim: int = 1024,
        log_var_bounds: tuple[float, float] = LOG_VAR_BOUNDS,
        rank_names: Sequence[str] | None = None,
    ):
        super().__init__()
        if num_ranks < 2:
            raise ValueError("a GMM head needs at least 2 ranks")
        self.num_ranks, self.dim = int(num_ranks), int(dim)
        self.log_var_bounds = (float(log_var_bounds[0]), float(log_var_bounds[1]))
        self.rank_names = list(rank_names or default_rank_names(num_ranks))
        # Data scale, not randn (F5): mu = 0, sigma^2 = 2/d (unit vectors), uniform prior.
        self.mu = nn.Parameter(torch.zeros(num_ranks, dim))
        self.log_var = nn.Parameter(torch.full((num_ranks, dim), math.log(2.0 / dim)))
        self.prior_logits = nn.Parameter(torch.zeros(num_ranks))
        self.register_buffer("rank_means", torch.linspace(0.0, 1.0, num_ranks))

    # ---- initialisation -------------------------------------------------------------------
    @torch.no_grad()
    def init_from_stats(self, mean: Tensor, var: Tensor, prior: Tensor | None = None) -> None:
        """Set mu = ``mean`` (N, d), log_var = log ``var`` (N, d) (clamped), and the prior
        logits to log ``prior`` (N,) (uniform if None)."""
        self.mu.copy_(mean)
        self.log_var.copy_(var.clamp_min(1e-12).log().clamp(*self.log_var_bounds))
        self.prior_logits.copy_(prior.clamp_min(1e-12).log() if prior is not None else 0.0)

    @torch.no_grad()
    def init_from_data(self, z_by_rank: Sequence[Tensor]) -> None:
        """Initialise from samples of z per rank (§3.5): mu_c = mean, log_var_c = log of the
        per-dimension variance, prior 0. A rank with fewer than 2 samples takes the pooled
        statistics."""
        if len(z_by_rank) != self.num_ranks:
            raise ValueError(f"expected {self.num_ranks} groups of z, got {len(z_by_rank)}")
        pooled = torch.cat([z.reshape(-1, self.dim).float() for z in z_by_rank])
        means, variances = [], []
        for z in z_by_rank:
            z = z.reshape(-1, self.dim).float() if len(z) >= 2 else pooled
            means.append(z.mean(0))
            variances.append(z.var(0, unbiased=False))
        self.init_from_stats(torch.stack(means), torch.stack(variances))

    # ---- likelihood -------------------------------------------------------------------------
    def _params(self) -> tuple[Tensor, Tensor, Tensor]:
        """(mu, precision w = exp(-log_var), constant per rank) in fp32; constant (N,) is
        log softmax(prior) - (d log 2pi + sum log_var) / 2."""
        lv = self.log_var.float().clamp(*self.log_var_bounds)
        logprior = torch.log_softmax(self.prior_logits.float(), 0)
        const = logprior - 0.5 * (self.dim * LOG_2PI + lv.sum(1))
        return self.mu.float(), torch.exp(-lv), const

    def log_joint(self, q: Tensor, k: Tensor, chunk: int | None = None) -> Tensor:
        """log p(z, c) for every z = q_b - k_j: (B, d), (K, d) -> (B, K, N) fp32.

        Never builds B x K x d: the quadratic sum_j w_cj (q_j - k_j - mu_cj)^2 is expanded
        into A[b,c] - 2 (Q~_c k^T)[b,j] + C[j,c] (§3.4), in fp32 even under autocast, clamped
        at 0 against cancellation when q ~ k. Rows of q are processed ``chunk`` at a time
        (default: ~2**24 elements per temporary). Memory O((B+K) N d + B K N)."""
        with torch.autocast(device_type=q.device.type, enabled=False):
            q, k = q.float(), k.float()
            mu, w, const = self._params()
            n, K = self.num_ranks, k.shape[0]
            C = (k * k) @ w.T  # (K, N)
            chunk = chunk or max(1, CHUNK_ELEMENTS // max(K * n, 1))
            out = []
            for qb in q.split(chunk):
                qm = qb[:, None, :] - mu  # (b, N, d)
                A = (qm * qm * w).sum(-1)  # (b, N)
                cross = ((qm * w).reshape(-1, self.dim) @ k.T).reshape(len(qb), n, K)  # (b, N, K)
                quad = (A[:, :, None] - 2.0 * cross + C.T[None]).clamp_min(0.0)  # (b, N, K)
                out.append(const - 0.5 * quad.transpose(1, 2))  # (b, K, N)
            return torch.cat(out) if out else q.new_zeros(0, K, n)

    def log_joint_pairs(self, a: Tensor, b: Tensor) -> Tensor:
        """log p(z, c) for aligned pairs z_i = a_i - b_i: (B, d), (B, d) -> (B, N) fp32."""
        return self.log_joint_z(a.float() - b.float())

    def log_joint_z(self, z: Tensor) -> Tensor:
        """log p(z, c) for given features z: (B, d) -> (B, N) fp32 (direct, O(B N d))."""
        with torch.autocast(device_type=z.device.type, enabled=False):
            mu, w, const = self._params()
            diff = z.float()[:, None, :] - mu  # (B, N, d)
            return const - 0.5 * (diff * diff * w).sum(-1)

    def posterior(self, q: Tensor, k: Tensor, chunk: int | None = None) -> Tensor:
        """P_G(c | q_b - k_j): (B, d), (K, d) -> (B, K, N), rows sum to 1."""
        return torch.softmax(self.log_joint(q, k, chunk=chunk), -1)

    def rank_probs_pairs(self, a: Tensor, b: Tensor, symmetric: bool = True) -> Tensor:
        """Rank probabilities of aligned pairs (a_i, b_i): (B, d), (B, d) -> (B, N).

        z is antisymmetric and a Gaussian with mu != 0 is not, so with ``symmetric`` the
        log-posteriors of both orders are averaged, then renormalised (§3.2 emmax choice):
        the score of (x, y) equals that of (y, x)."""
        lp = torch.log_softmax(self.log_joint_pairs(a, b), -1)
        if symmetric:
            lp = 0.5 * (lp + torch.log_softmax(self.log_joint_pairs(b, a), -1))
        return torch.softmax(lp, -1)

    @staticmethod
    def expected_rank(probs: Tensor) -> Tensor:
        """Sum_c c P(c): a graded score, less saturated than the argmax (F6). (..., N) -> (...)."""
        return probs @ torch.arange(probs.shape[-1], dtype=probs.dtype, device=probs.device)

    # ---- rank means (§4.2) --------------------------------------------------------------------
    def rank_from_similarity(self, sim: Tensor) -> Tensor:
        """The encoder's rank estimate: the nearest rank mean to each cosine; (...) -> (...)."""
        return (sim.float()[..., None] - self.rank_means).abs().argmin(-1)

    @torch.no_grad()
    def update_rank_means(self, sim: Tensor, ranks: Tensor, rate: float = 1e-3) -> None:
        """m_c <- (1 - rate) m_c + rate * mean{sim : rank = c}, for ranks present in ``ranks``;
        warns when the means stop being ordered m_0 < ... < m_{N-1}."""
        sim, ranks = sim.reshape(-1).float(), ranks.reshape(-1)
        counts = torch.bincount(ranks, minlength=self.num_ranks).to(sim)
        sums = torch.zeros(self.num_ranks, device=sim.device).index_add_(0, ranks, sim)
        seen = counts > 0
        batch_mean = sums / counts.clamp_min(1)
        self.rank_means[seen] = (1 - rate) * self.rank_means[seen] + rate * batch_mean[seen]
        if not self.rank_means_ordered():
            log.warning(
                "GMM rank means are no longer ordered: %s",
                ", ".join(f"{m:.3f}" for m in self.rank_means.tolist()),
            )

    def rank_means_ordered(self) -> bool:
        return bool((self.rank_means[1:] > self.rank_means[:-1]).all())

    # ---- files ----------------------------------------------------------------------------------
    def config_dict(self) -> dict:
        return {
            "format_version": HEAD_FORMAT,
            "num_ranks": self.num_ranks,
            "dim": self.dim,
            "log_var_min": self.log_var_bounds[0],
            "log_var_max": self.log_var_bounds[1],
            "rank_names": self.rank_names,
        }

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``gmm_head.safetensors`` and ``gmm_head.json`` into ``directory``
        (atomically, each file); returns the weights path."""
        from safetensors.torch import save_file

        from ..io.atomic import atomic_output

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().float().cpu().contiguous() for k, v in self.state_dict().items()}
        with atomic_output(d / WEIGHTS_FILE) as tmp:
            save_file(tensors, str(tmp), metadata={"format": "emmax-gmm-head"})
        with atomic_output(d / CONFIG_FILE) as tmp:
            tmp.write_text(json.dumps(self.config_dict(), indent=2) + "\n", encoding="utf-8")
        return d / WEIGHTS_FILE

    @classmethod
    def from_dir(cls, directory: str | os.PathLike, dim: int | None = None) -> GMMHead:
        """Load a head saved by ``save``. ``dim``, if given, must match the head's.

        Raises:
            ModelLoadError: a missing, unreadable or inconsistent file, or a dimension mismatch.
        """
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        d = Path(directory)
        wpath, cpath = d / WEIGHTS_FILE, d / CONFIG_FILE
        fix = "re-copy the model directory or retrain the head with `emmax train`"
        for p in (wpath, cpath):
            if not p.exists():
                raise ModelLoadError(f"{p}: GMM head file is missing", hint=fix)
        try:
            cfg = json.loads(cpath.read_text(encoding="utf-8"))
            n, hd = int(cfg["num_ranks"]), int(cfg["dim"])
            bounds = (
                float(cfg.get("log_var_min", LOG_VAR_BOUNDS[0])),
                float(cfg.get("log_var_max", LOG_VAR_BOUNDS[1])),
            )
            version = int(cfg.get("format_version", HEAD_FORMAT))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ModelLoadError(
                f"{cpath}: unreadable GMM head config ({type(e).__name__}: {e})", hint=fix
            ) from None
        if version > HEAD_FORMAT:
            raise ModelLoadError(
                f"{cpath}: GMM head format {version} is newer than this emmax "
                f"supports ({HEAD_FORMAT})",
                hint="upgrade emmax",
            )
        try:
            tensors = load_file(str(wpath))
        except (SafetensorError, OSError, ValueError) as e:
            raise ModelLoadError(
                f"{wpath}: corrupt GMM head weights ({str(e).splitlines()[0]})", hint=fix
            ) from None
        head = cls(n, hd, log_var_bounds=bounds, rank_names=cfg.get("rank_names"))
        expected = {k: tuple(v.shape) for k, v in head.state_dict().items()}
        found = {k: tuple(v.shape) for k, v in tensors.items()}
        if found != expected:
            raise ModelLoadError(
                f"{wpath}: tensors {found} do not match {CONFIG_FILE} (num_ranks {n}, dim {hd})",
                hint=fix,
            )
        if dim is not None and hd != dim:
            raise ModelLoadError(
                f"{d}: GMM head has dim {hd} but the encoder has dim {dim}",
                hint="use the head trained with this encoder",
            )
        head.load_state_dict(tensors)
        return head.eval()

    def extra_repr(self) -> str:
        return f"num_ranks={self.num_ranks}, dim={self.dim}, log_var_bounds={self.log_var_bounds}"


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
        q, t: (m, d) translation pairs (row i of t translates row i of q), m >= 2.
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
        q_emb, t_emb: (n, d) float, L2-normalised embeddings of n >= 4 translation pairs
            (tensors or arrays); the negatives of row i are the other rows.
        num_ranks: N. steps, lr, batch_pairs: the Adam fit (pseudo-pairs per step).
        val_fraction: rows held out for early stopping (checked every ``eval_every`` steps;
            stop after ``patience`` checks without improvement).
        symmetric: also sample pairs in the reverse order (t as query).
        golden: share of the samples that are the translation pairs themselves (rank N-1).
        seed: seeds the sampling; the result is deterministic for a seed.
    Returns:
        A ``GMMHead`` in eval mode on the CPU.
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
