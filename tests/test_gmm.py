"""GMMHead: exact likelihood (vs a naive float64 computation), memory-safe evaluation,
posteriors, symmetric scoring, interpolation labels, warm-up fit, and the files."""

from __future__ import annotations

import json
import math

import pytest
import torch

from emmax_cli.errors import ModelLoadError
from emmax_cli.models.gmm import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    GMMHead,
    fit_gmm_interpolation,
    interpolation_labels,
)


def unit(*shape, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(*shape, generator=g), dim=-1)


def random_head(n=4, d=16, seed=0) -> GMMHead:
    """A head with data-scale random parameters (per-dim variance ~ 2/d, mu ~ 0.05)."""
    g = torch.Generator().manual_seed(seed)
    h = GMMHead(n, d)
    with torch.no_grad():
        h.mu.copy_(0.05 * torch.randn(n, d, generator=g))
        h.log_var.copy_(math.log(2 / d) + 0.5 * torch.randn(n, d, generator=g))
        h.prior_logits.copy_(torch.randn(n, generator=g))
    return h


def naive_log_joint(h: GMMHead, q, k) -> torch.Tensor:
    """The reference code's B x K x N x d computation (model.py:L267-281), in float64."""
    q, k = q.double(), k.double()
    mu, lv = h.mu.double(), h.log_var.double().clamp(*h.log_var_bounds)
    z = q[:, None, :] - k[None, :, :]  # (B, K, d)
    diffs = z[:, :, None, :] - mu  # (B, K, N, d)
    quad = (diffs.pow(2) / lv.exp()).sum(-1)
    logprior = torch.log_softmax(h.prior_logits.double(), 0)
    return logprior - 0.5 * (h.dim * math.log(2 * math.pi) + lv.sum(-1) + quad)


@pytest.mark.parametrize("d,chunk", [(16, None), (16, 3), (64, 5)])
def test_log_joint_matches_naive_float64(d, chunk):
    h = random_head(d=d)
    q, k = unit(11, d, seed=1), unit(7, d, seed=2)
    k[0] = q[0]  # q == k: the expansion cancels exactly here, the clamp keeps it >= 0
    got = h.log_joint(q, k, chunk=chunk)
    ref = naive_log_joint(h, q, k)
    assert got.dtype == torch.float32 and got.shape == (11, 7, 4)
    err = ((got.double() - ref).abs() / ref.abs().clamp_min(1)).max().item()
    assert err < 1e-4, err


def test_log_joint_gradients_match_naive():
    h = random_head(d=16)
    q, k = unit(6, 16, seed=3), unit(5, 16, seed=4)
    h.log_joint(q, k).logsumexp(-1).sum().backward()
    got = [p.grad.clone() for p in (h.mu, h.log_var, h.prior_logits)]
    h.zero_grad()
    naive_log_joint(h, q, k).logsumexp(-1).sum().backward()
    for g, p in zip(got, (h.mu, h.log_var, h.prior_logits), strict=False):
        torch.testing.assert_close(g, p.grad, rtol=1e-3, atol=1e-3)


def test_log_joint_is_fp32_under_autocast():
    h = random_head(d=64)
    q, k = unit(8, 64, seed=5), unit(9, 64, seed=6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = h.log_joint(q.bfloat16(), k.bfloat16())
    assert got.dtype == torch.float32
    ref = naive_log_joint(h, q.bfloat16().float(), k.bfloat16().float())
    assert ((got.double() - ref).abs() / ref.abs().clamp_min(1)).max() < 1e-4


def test_log_joint_pairs_is_the_diagonal():
    h = random_head(d=16)
    a, b = unit(9, 16, seed=7), unit(9, 16, seed=8)
    torch.testing.assert_close(h.log_joint_pairs(a, b), h.log_joint(a, b).diagonal().T)


PEAK_SCRIPT = """
import gc, resource, torch
from emmax_cli.models.gmm import GMMHead
torch.set_num_threads(1)
g = torch.Generator().manual_seed(0)
h = GMMHead(4, 384)
q = torch.nn.functional.normalize(torch.randn(2048, 384, generator=g), dim=-1)
k = torch.nn.functional.normalize(torch.randn(2048, 384, generator=g), dim=-1)
gc.collect()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with torch.no_grad():
    out = {op}
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((after - before) / 1024, tuple(out.shape))
"""


def peak_growth_mib(op: str) -> tuple[float, str]:
    """Peak-memory growth of ``op`` (MiB; ru_maxrss is KiB on Linux), measured in a fresh
    interpreter: the lifetime peak of the test process (other tests, the real model) would
    hide any growth, so an assertion on it could never fail."""
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT.replace("{op}", op)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    grown, shape = r.stdout.split(" ", 1)
    return float(grown), shape.strip()


def test_log_joint_memory_safe_at_2048x2048x384():
    """Naive, z alone is 2048*2048*384*4 B = 6.4 GB and diffs 4x that; expanded, the
    (B, K, N) output (64 MiB) dominates."""
    grown_mib, shape = peak_growth_mib("h.log_joint(q, k)")
    assert shape == "(2048, 2048, 4)"
    assert grown_mib < 1024, f"peak memory grew by {grown_mib:.0f} MiB"
    h = GMMHead(4, 384)
    q, k = unit(2048, 384, seed=9), unit(2048, 384, seed=10)
    with torch.no_grad():
        lj = h.log_joint(q, k)
    assert lj.shape == (2048, 2048, 4) and torch.isfinite(lj).all()
    rows = torch.tensor([0, 777, 2047])
    torch.testing.assert_close(
        lj[rows, rows], h.log_joint_pairs(q[rows], k[rows]), rtol=1e-5, atol=1e-2
    )


def test_posterior_sums_to_one():
    h = random_head(d=16)
    p = h.posterior(unit(5, 16, seed=11), unit(6, 16, seed=12))
    assert p.shape == (5, 6, 4) and (p >= 0).all()
    torch.testing.assert_close(p.sum(-1), torch.ones(5, 6))
    pp = h.rank_probs_pairs(unit(5, 16, seed=11), unit(5, 16, seed=12))
    torch.testing.assert_close(pp.sum(-1), torch.ones(5))
    er = GMMHead.expected_rank(pp)
    assert ((er >= 0) & (er <= 3)).all()


def test_symmetric_scoring():
    h = random_head(d=16)  # mu != 0, so one order alone is not symmetric
    a, b = unit(10, 16, seed=13), unit(10, 16, seed=14)
    torch.testing.assert_close(h.rank_probs_pairs(a, b), h.rank_probs_pairs(b, a))
    one_way = h.rank_probs_pairs(a, b, symmetric=False)
    assert not torch.allclose(one_way, h.rank_probs_pairs(b, a, symmetric=False))


def test_interpolation_labels_fixed_uniform_buckets():
    lam = torch.tensor([0.0, 0.2499, 0.25, 0.5, 0.7499, 0.75, 0.9999, 1.0])
    assert interpolation_labels(lam, 4).tolist() == [0, 0, 1, 2, 2, 3, 3, 3]
    assert interpolation_labels(torch.tensor([0.0, 0.49, 0.5, 1.0]), 2).tolist() == [0, 0, 1, 1]


def test_init_from_data_sets_moments():
    g = torch.Generator().manual_seed(0)
    zs = [0.1 * (c + 1) * torch.randn(500, 8, generator=g) + c for c in range(3)]
    h = GMMHead(3, 8)
    h.init_from_data(zs)
    for c, z in enumerate(zs):
        torch.testing.assert_close(h.mu[c], z.mean(0))
        torch.testing.assert_close(h.log_var[c], z.var(0, unbiased=False).log())
    assert (h.prior_logits == 0).all()
    h.init_from_data([zs[0], zs[1][:1], zs[2]])  # a near-empty rank takes the pooled statistics
    assert torch.isfinite(h.log_var).all()


def test_log_var_is_clamped_when_used():
    h = GMMHead(2, 4)
    with torch.no_grad():
        h.log_var.fill_(-40.0)  # would give w = e^40 unclamped (F5)
    lj = h.log_joint(unit(3, 4), unit(3, 4, seed=1))
    ref = naive_log_joint(h, unit(3, 4), unit(3, 4, seed=1))  # naive clamps too
    assert torch.isfinite(lj).all()
    assert ((lj.double() - ref).abs() / ref.abs().clamp_min(1)).max() < 1e-4


def synthetic_pairs(n, d, noise, seed):
    q = unit(n, d, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    t = torch.nn.functional.normalize(q + noise * torch.randn(n, d, generator=g), dim=-1)
    return q, t


def test_fit_gmm_interpolation_separates_translations_from_random_pairs():
    # Translations close relative to the width of the top lambda bucket; with noisier
    # translations (0.15 here) a third of them fall into rank N-2, as on real data.
    q, t = synthetic_pairs(300, 32, 0.05, seed=0)
    head = fit_gmm_interpolation(q, t, steps=30, batch_pairs=1024, seed=0)
    qe, te = synthetic_pairs(100, 32, 0.05, seed=100)  # new pairs
    true = head.rank_probs_pairs(qe, te).argmax(1)
    shuffled = head.rank_probs_pairs(qe, te.roll(1, 0)).argmax(1)
    assert (true == 3).float().mean() > 0.9
    assert (shuffled == 0).float().mean() > 0.9
    assert head.rank_means_ordered() and not head.training
    again = fit_gmm_interpolation(q, t, steps=30, batch_pairs=1024, seed=0)
    torch.testing.assert_close(again.state_dict(), head.state_dict())  # deterministic per seed


def test_fit_gmm_interpolation_rejects_bad_shapes():
    with pytest.raises(ValueError):
        fit_gmm_interpolation(unit(3, 8), unit(3, 8))
    with pytest.raises(ValueError):
        fit_gmm_interpolation(unit(10, 8), unit(9, 8))


def test_rank_means_update_and_nearest_rank(caplog):
    h = GMMHead(3, 4)
    with torch.no_grad():
        h.rank_means.copy_(torch.tensor([0.2, 0.5, 0.8]))
    assert h.rank_from_similarity(torch.tensor([0.1, 0.45, 0.9])).tolist() == [0, 1, 2]
    h.update_rank_means(torch.tensor([0.3, 0.3, 0.9]), torch.tensor([0, 0, 2]), rate=0.5)
    torch.testing.assert_close(h.rank_means, torch.tensor([0.25, 0.5, 0.85]))
    h.update_rank_means(torch.tensor([0.95]), torch.tensor([0]), rate=1.0)
    assert not h.rank_means_ordered() and "no longer ordered" in caplog.text


def test_save_load_roundtrip(tmp_path):
    h = random_head(n=4, d=16)
    with torch.no_grad():
        h.rank_means.copy_(torch.tensor([0.7, 0.8, 0.85, 0.9]))
    h.save(tmp_path)
    cfg = json.loads((tmp_path / CONFIG_FILE).read_text())
    assert cfg["num_ranks"] == 4 and cfg["dim"] == 16 and cfg["log_var_min"] == -12.0
    assert len(cfg["rank_names"]) == 4 and cfg["format_version"] == 1
    h2 = GMMHead.from_dir(tmp_path, dim=16)
    torch.testing.assert_close(h2.state_dict(), h.state_dict())
    assert not list(tmp_path.glob(".*.tmp"))


def test_load_errors_are_one_line(tmp_path):
    with pytest.raises(ModelLoadError, match="GMM head file is missing"):
        GMMHead.from_dir(tmp_path)
    random_head(d=16).save(tmp_path)
    with pytest.raises(ModelLoadError, match="has dim 16 but the encoder has dim 32"):
        GMMHead.from_dir(tmp_path, dim=32)
    cfg = json.loads((tmp_path / CONFIG_FILE).read_text())
    (tmp_path / CONFIG_FILE).write_text(json.dumps({**cfg, "dim": 8}))
    with pytest.raises(ModelLoadError, match="do not match"):
        GMMHead.from_dir(tmp_path)
    (tmp_path / CONFIG_FILE).write_text("{not json")
    with pytest.raises(ModelLoadError, match="unreadable GMM head config"):
        GMMHead.from_dir(tmp_path)
    (tmp_path / CONFIG_FILE).write_text(json.dumps(cfg))
    (tmp_path / WEIGHTS_FILE).write_bytes(b"\x00garbage")
    with pytest.raises(ModelLoadError, match="corrupt GMM head weights") as e:
        GMMHead.from_dir(tmp_path)
    assert "\n" not in str(e.value)
