"""The EMMA-X GMM head: a mixture of N diagonal Gaussians over the pair feature
z = e(x) - e(y), one component per semantic rank (0 = unrelated ... N-1 = translation).

Formulas: shared/docs/emmax-algorithm.md §3 (likelihood, memory-safe expansion, variance
clamp) and §4.2 (rank means). Its files: ``gmm_io``. Import it from ``models.gmm``, which adds
the interpolation warm-up (§4.1)."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import ModelLoadError
from .gmm_io import CONFIG_FILE, FIX, HEAD_FORMAT, WEIGHTS_FILE, read_head_files, write_head_files

log = logging.getLogger(__name__)

LOG_VAR_BOUNDS = (-12.0, 2.0)  # §3.5: unit vectors give per-dim variance ~2/d, i.e. log ~ -6
# Elements of one (chunk, K, N) temporary in log_joint: 2**24 fp32 = 64 MiB.
CHUNK_ELEMENTS = 1 << 24
LOG_2PI = math.log(2 * math.pi)


def default_rank_names(num_ranks: int) -> list[str]:
    """Descriptive names (§4): the labels are operational, defined by interpolation buckets.

    Args:
        num_ranks: N.

    Returns:
        N names, from "unrelated" (rank 0) to "translation or near-paraphrase" (rank N-1).
    """
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
        """Set the parameters from statistics.

        Args:
            mean: (N, d) component means (mu).
            var: (N, d) per-dimension variances (log_var = log var, clamped).
            prior: (N,) mixing weights (prior logits = log prior), uniform if None.
        """
        self.mu.copy_(mean)
        self.log_var.copy_(var.clamp_min(1e-12).log().clamp(*self.log_var_bounds))
        self.prior_logits.copy_(prior.clamp_min(1e-12).log() if prior is not None else 0.0)

    @torch.no_grad()
    def init_from_data(self, z_by_rank: Sequence[Tensor]) -> None:
        """Initialise from samples of z per rank (§3.5): mu_c = mean, log_var_c = log of the
        per-dimension variance, prior 0. A rank with fewer than 2 samples takes the pooled
        statistics.

        Args:
            z_by_rank: N tensors of shape (n_c, d).

        Raises:
            ValueError: not N groups.
        """
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
        at 0 against cancellation when q ~ k. Memory O((B+K) N d + B K N).

        Args:
            q: (B, d) queries.
            k: (K, d) keys.
            chunk: rows of q per step (default: ~2**24 elements per temporary).

        Returns:
            (B, K, N) float32.
        """
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
        """log p(z, c) for aligned pairs z_i = a_i - b_i.

        Args:
            a: (B, d).
            b: (B, d).

        Returns:
            (B, N) float32.
        """
        return self.log_joint_z(a.float() - b.float())

    def log_joint_z(self, z: Tensor) -> Tensor:
        """log p(z, c) for given features z (direct, O(B N d)).

        Args:
            z: (B, d).

        Returns:
            (B, N) float32.
        """
        with torch.autocast(device_type=z.device.type, enabled=False):
            mu, w, const = self._params()
            diff = z.float()[:, None, :] - mu  # (B, N, d)
            return const - 0.5 * (diff * diff * w).sum(-1)

    def posterior(self, q: Tensor, k: Tensor, chunk: int | None = None) -> Tensor:
        """P_G(c | q_b - k_j) for every query and key.

        Args:
            q: (B, d) queries.
            k: (K, d) keys.
            chunk: as ``log_joint``.

        Returns:
            (B, K, N); each (b, j) row sums to 1.
        """
        return torch.softmax(self.log_joint(q, k, chunk=chunk), -1)

    def rank_probs_pairs(self, a: Tensor, b: Tensor, symmetric: bool = True) -> Tensor:
        """Rank probabilities of aligned pairs (a_i, b_i): (B, d), (B, d) -> (B, N).

        z is antisymmetric and a Gaussian with mu != 0 is not, so with ``symmetric`` the
        log-posteriors of both orders are averaged, then renormalised (§3.2 emmax choice):
        the score of (x, y) equals that of (y, x).

        Args:
            a: (B, d).
            b: (B, d).
            symmetric: average both orders.

        Returns:
            (B, N) probabilities.
        """
        lp = torch.log_softmax(self.log_joint_pairs(a, b), -1)
        if symmetric:
            lp = 0.5 * (lp + torch.log_softmax(self.log_joint_pairs(b, a), -1))
        return torch.softmax(lp, -1)

    @staticmethod
    def expected_rank(probs: Tensor) -> Tensor:
        """Sum_c c P(c): a graded score, less saturated than the argmax (F6).

        Args:
            probs: (..., N) rank probabilities.

        Returns:
            (...) expected ranks.
        """
        return probs @ torch.arange(probs.shape[-1], dtype=probs.dtype, device=probs.device)

    # ---- rank means (§4.2) --------------------------------------------------------------------
    def rank_from_similarity(self, sim: Tensor) -> Tensor:
        """The encoder's rank estimate: the nearest rank mean to each cosine.

        Args:
            sim: cosines, any shape.

        Returns:
            int64 ranks, the shape of ``sim``.
        """
        return (sim.float()[..., None] - self.rank_means).abs().argmin(-1)

    @torch.no_grad()
    def update_rank_means(self, sim: Tensor, ranks: Tensor, rate: float = 1e-3) -> None:
        """m_c <- (1 - rate) m_c + rate * mean{sim : rank = c}, for ranks present in ``ranks``;
        warns when the means stop being ordered m_0 < ... < m_{N-1}.

        Args:
            sim: cosines of pairs.
            ranks: their int64 ranks, the shape of ``sim``.
            rate: the moving-average rate.
        """
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
        """True while m_0 < m_1 < ... < m_{N-1}."""
        return bool((self.rank_means[1:] > self.rank_means[:-1]).all())

    # ---- files ----------------------------------------------------------------------------------
    def config_dict(self) -> dict:
        """The ``gmm_head.json`` object (format, ranks, dim, log-variance bounds, names)."""
        return {
            "format_version": HEAD_FORMAT,
            "num_ranks": self.num_ranks,
            "dim": self.dim,
            "log_var_min": self.log_var_bounds[0],
            "log_var_max": self.log_var_bounds[1],
            "rank_names": self.rank_names,
        }

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``gmm_head.safetensors`` and ``gmm_head.json`` into ``directory``.

        Args:
            directory: the model directory (created if missing); each file is atomic.

        Returns:
            The weights path.
        """
        tensors = {k: v.detach().float().cpu().contiguous() for k, v in self.state_dict().items()}
        return write_head_files(directory, tensors, self.config_dict())

    @classmethod
    def from_dir(cls, directory: str | os.PathLike, dim: int | None = None) -> GMMHead:
        """Load a head saved by ``save``.

        Args:
            directory: the model directory.
            dim: the encoder's width, if known; it must match the head's.

        Returns:
            The head in eval mode on the CPU.

        Raises:
            ModelLoadError: a missing, unreadable or inconsistent file, or a dimension mismatch.
        """
        cfg, tensors = read_head_files(directory)
        n, hd = cfg["num_ranks"], cfg["dim"]
        lo, hi = cfg["log_var_min"], cfg["log_var_max"]
        bounds = (LOG_VAR_BOUNDS[0] if lo is None else lo, LOG_VAR_BOUNDS[1] if hi is None else hi)
        head = cls(n, hd, log_var_bounds=bounds, rank_names=cfg["rank_names"])
        expected = {k: tuple(v.shape) for k, v in head.state_dict().items()}
        found = {k: tuple(v.shape) for k, v in tensors.items()}
        if found != expected:
            raise ModelLoadError(
                f"{Path(directory) / WEIGHTS_FILE}: tensors {found} do not match {CONFIG_FILE} "
                f"(num_ranks {n}, dim {hd})",
                hint=FIX,
            )
        if dim is not None and hd != dim:
            raise ModelLoadError(
                f"{directory}: GMM head has dim {hd} but the encoder has dim {dim}",
                hint="use the head trained with this encoder",
            )
        head.load_state_dict(tensors)
        return head.eval()

    def extra_repr(self) -> str:
        """Shown by ``print(head)``."""
        return f"num_ranks={self.num_ranks}, dim={self.dim}, log_var_bounds={self.log_var_bounds}"
