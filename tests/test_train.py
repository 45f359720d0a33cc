"""emmax train: config, data, losses, queue, the three phases on the tiny model, exact resume,
a two-process gloo run, delta packaging, and the CLI."""

from __future__ import annotations

import json
import math
import os
import socket
from pathlib import Path

import pytest
import torch

from emmax_cli.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
TINY = REPO / "configs" / "train" / "tiny.toml"

needs_data = pytest.mark.skipif(
    not (SHARED / "train").exists(), reason="../shared/data is not available"
)


# ---- fixtures ---------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def vocab_model(tmp_path_factory) -> Path:
    """A tiny random model whose word-level vocabulary covers the tiny config's data slices."""
    from emmax_cli.models.tiny import build_tiny_model
    from emmax_cli.train.config import load_config

    cfg = load_config(TINY)
    texts = []
    for pat in cfg.data.parallel + cfg.data.mono:
        p = REPO / pat
        if p.exists():
            texts += p.read_text(encoding="utf-8").split("\n")[: cfg.data.max_lines]
    return build_tiny_model(tmp_path_factory.mktemp("tinyv") / "tiny", seed=0, vocab_texts=texts)


def tiny_cfg(model: Path, out: Path, *extra: str):
    from emmax_cli.train.config import load_config

    return load_config(TINY, [f'model.base="{model}"', f'run.out="{out}"', *extra])


@pytest.fixture(scope="session")
def tiny_run(vocab_model, tmp_path_factory):
    """All three phases of configs/train/tiny.toml, run once (cwd = repository root)."""
    from emmax_cli.train.loop import Trainer

    if not (SHARED / "train").exists():
        pytest.skip("../shared/data is not available")
    out = tmp_path_factory.mktemp("run") / "tiny"
    old = os.getcwd()
    os.chdir(REPO)
    try:
        tr = Trainer(tiny_cfg(vocab_model, out))
        import time

        t0 = time.perf_counter()
        results = tr.run()
        seconds = time.perf_counter() - t0
    finally:
        os.chdir(old)
    return out, tr.history, results, seconds


# ---- config -------------------------------------------------------------------------------------
def test_config_defaults_are_the_papers():
    from emmax_cli.train.config import TrainConfig

    c = TrainConfig()
    assert (c.loss.num_ranks, c.run.queue_size, c.run.momentum, c.loss.tau_min) == (
        4,
        256,
        0.999,
        0.04,
    )
    assert (c.optim.lr, c.optim.gmm_lr, c.run.batch_pairs) == (5e-4, 3e-5, 512)
    assert c.taus() == pytest.approx([0.08, 0.06, 0.04])
    c.loss.num_ranks = 2
    assert c.taus() == [0.04]  # N = 2 works (F13)


def test_config_unknown_key_and_type(tmp_path):
    from emmax_cli.train.config import load_config

    bad = tmp_path / "bad.toml"
    bad.write_text('[run]\nbogus = 1\n[data]\nparallel = ["x"]\n')
    with pytest.raises(ConfigError, match="run.bogus"):
        load_config(bad)
    with pytest.raises(ConfigError, match="unknown config key 'nope'"):
        load_config(TINY, ["nope.x=1"])
    with pytest.raises(ConfigError, match="run.seed.*expected int"):
        load_config(TINY, ['run.seed="a"'])
    assert load_config(TINY, ["loss.tau_max=0.1"]).loss.tau_max == 0.1


def test_config_roundtrip():
    import tomllib

    from emmax_cli.train.config import config_from_dict, dump_toml, load_config

    c = load_config(TINY)
    c.data.parallel.append({"src": "a.de", "tgt": "a.en", "lang": "deu"})
    assert config_from_dict(tomllib.loads(dump_toml(c))) == c


def test_lr_schedule():
    from emmax_cli.train.loop import lr_at

    lrs = [lr_at(s, 100, 1.0, 10) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False))  # cosine decay
    assert lr_at(100, 100, 1.0, 10) == pytest.approx(0.0)


# ---- losses -------------------------------------------------------------------------------------
def test_ranking_infonce_is_infonce_for_golden_labels():
    from emmax_cli.train.losses import ranking_infonce

    g = torch.Generator().manual_seed(0)
    S = torch.rand(4, 7, generator=g) * 2 - 1
    exclude = torch.zeros(4, 7, dtype=torch.bool)
    exclude[torch.arange(4), torch.arange(4)] = True
    labels = torch.zeros(4, 7, dtype=torch.long)
    labels[0, 2] = labels[2, 0] = labels[1, 3] = 3  # row 3 has no positive: dropped
    loss, rows = ranking_infonce(S, labels, exclude, [0.08, 0.06, 0.04])
    tau = 0.04
    ref = []
    for b, j in [(0, 2), (1, 3), (2, 0)]:
        logits = (S[b] / tau).masked_fill(exclude[b], float("-inf"))
        ref.append(-torch.log_softmax(logits, 0)[j])
    assert rows == {3: 3}
    assert loss.item() == pytest.approx(torch.stack(ref).mean().item(), rel=1e-5)


def test_ranking_infonce_levels_exclude_higher_ranks():
    from emmax_cli.train.losses import ranking_infonce

    S = torch.tensor([[1.0, 0.5, 0.9, 0.1]])
    labels = torch.tensor([[3, 1, 3, 0]])
    exclude = torch.tensor([[True, False, False, False]])
    loss, rows = ranking_infonce(S, labels, exclude, [0.1, 0.1, 0.1])
    # level 1: positive j=1 against {1, 3}; level 3: positive j=2 against {1, 2, 3}
    l1 = -(torch.tensor([0.5, 0.1]) / 0.1).log_softmax(0)[0]
    l3 = -(torch.tensor([0.5, 0.9, 0.1]) / 0.1).log_softmax(0)[1]
    assert rows == {1: 1, 3: 1}
    assert loss.item() == pytest.approx((l1 + l3).item(), rel=1e-5)


def test_gmm_cross_entropy_smoothing_and_weights():
    from emmax_cli.train.losses import gmm_cross_entropy

    lj = torch.log(torch.tensor([[0.7, 0.1, 0.1, 0.1]]))
    t = torch.tensor([0])
    ref = -(0.7 * math.log(0.7) + 0.3 * math.log(0.1))
    assert gmm_cross_entropy(lj, t, 0.3).item() == pytest.approx(ref, rel=1e-5)
    lj = torch.randn(5, 9, 4, requires_grad=True)
    loss = gmm_cross_entropy(lj, torch.randint(4, (5, 9)), 0.3, 10.0)
    loss.backward()
    assert torch.isfinite(loss) and lj.grad is not None


def test_mlm_masks_only_real_tokens():
    from emmax_cli.train.losses import mask_tokens

    ids = torch.tensor([[0, 10, 11, 12, 2, 1], [0, 13, 2, 1, 1, 1]])
    attn = (ids != 1).long()
    special = (ids == 0) | (ids == 2) | (ids == 1)
    out, chosen = mask_tokens(ids, attn, special, 0.5, 99, 50, torch.Generator().manual_seed(0))
    assert chosen.any() and not (chosen & special).any()
    assert (out[~chosen] == ids[~chosen]).all()


# ---- queue --------------------------------------------------------------------------------------
def test_queue_wraps_and_key_copies_query():
    from emmax_cli.train.queue import MomentumQueue

    top = torch.nn.Linear(3, 3)
    mq = MomentumQueue(top, dim=3, size=5, momentum=0.9)
    assert all(torch.equal(a, b) for a, b in zip(mq.key_top.parameters(), top.parameters(), strict=False))
    assert mq.entries().shape == (0, 3)  # starts empty: no random negatives (F7)
    mq.enqueue(torch.ones(3, 3))
    mq.enqueue(2 * torch.ones(4, 3))  # wraps around
    assert int(mq.filled) == 5 and int(mq.ptr) == 2
    assert mq.queue[:, 0].tolist() == [2, 2, 1, 2, 2]
    mq.enqueue(torch.arange(21.0).reshape(7, 3))  # more than K: keeps the last K
    assert sorted(mq.queue[:, 0].tolist()) == [6, 9, 12, 15, 18]
    assert {"queue", "ptr", "filled"} <= set(mq.state_dict())
    with torch.no_grad():
        top.weight.add_(1.0)
    before = mq.key_top.weight.clone()
    mq.momentum_update(top)
    assert torch.allclose(mq.key_top.weight, 0.9 * before + 0.1 * top.weight)


# ---- data ---------------------------------------------------------------------------------------
def test_data_filters_eval_lines_and_is_deterministic(tmp_path):
    from emmax_cli.train.data import BatchSampler, eval_sentence_set, find_sources

    ev = tmp_path / "eval"
    ev.mkdir()
    (ev / "x.txt").write_text("Guten  Morgen\n")
    par = tmp_path / "deu-eng.tsv"
    par.write_text(
        "".join(f"satz {i}\tsentence {i}\n" for i in range(20)) + "guten morgen\tgood morning\n"
    )
    fr = tmp_path / "fra-eng.tsv"
    fr.write_text("".join(f"phrase {i}\tsentence {i}\n" for i in range(5)))
    mono = tmp_path / "deu.txt"
    mono.write_text("".join(f"mono {i}\n" for i in range(8)))
    banned = eval_sentence_set([ev])
    assert banned == {"guten morgen"}
    srcs = find_sources([str(tmp_path / "*-eng.tsv")], "tsv")
    assert sorted(s.lang for s in srcs) == ["deu", "fra"]

    def sampler():
        return BatchSampler(
            srcs,
            find_sources([str(mono)], "mono"),
            4,
            2,
            alpha=0.3,
            seed=1,
            banned=banned,
            shuffle_buffer=4,
        )

    a = sampler()
    batches = [a.next() for _ in range(30)]
    texts = [t for b in batches for t in b.texts]
    assert "guten morgen" not in texts and "good morning" not in texts
    b = batches[0]
    assert b.num_pairs == 4 and b.num_mono == 2 and len(b.texts) == 10
    for i in range(4):  # two-halves layout: row i translates row i + P
        assert b.texts[i].split()[-1] == b.texts[i + 4].split()[-1]
    assert {"deu", "fra"} <= {lang for b in batches for lang in b.langs}
    c = sampler()
    c.skip(29)
    assert c.next().texts == batches[29].texts  # replay = resume position
    sharded = BatchSampler(srcs, [], 4, 0, seed=1, rank=1, world=2, banned=banned)
    nums = {int(t.split()[-1]) for _ in range(20) for t in sharded.next().texts}
    assert nums <= {i for i in range(20) if i % 2 == 1}  # rank 1 of 2 reads odd lines


# ---- the three phases on the tiny model ---------------------------------------------------------
@needs_data
def test_tiny_three_phases(tiny_run):
    from emmax_cli.models.encoder import Encoder
    from emmax_cli.models.gmm import GMMHead

    out, history, results, seconds = tiny_run
    assert seconds < 60, f"tiny run took {seconds:.0f}s"
    assert set(results) == {"ctl", "gmm", "em"}
    ctl = [r["loss_ctl"] for r in history if r["phase"] == "ctl"]
    assert sum(ctl[-4:]) / 4 < sum(ctl[:4]) / 4, ctl  # the encoder's loss falls
    em = [r for r in history if r["phase"] == "em"]
    assert len(em) == 12 and all("agreement" in r and len(r["rank_dist"]) == 4 for r in em)
    assert all(math.isfinite(r["loss"]) for r in history if "loss" in r)
    for p in ("ctl", "gmm", "em"):
        assert (out / p / "emmax.json").exists()
    enc = Encoder.load(out / "em", device="cpu", precision="fp32")
    assert enc.encode(["guten morgen", "good morning"]).shape == (2, 32)
    head = GMMHead.from_dir(out / "em", dim=32)
    assert head.num_ranks == 4
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert {"lr", "loss_ctl", "loss_mlm"} <= set(log[0]) and any("dev_acc" in r for r in log)
    assert (out / "checkpoints" / "latest").read_text().startswith("em/")


@needs_data
@pytest.mark.parametrize("phase", ["ctl", "em"])
def test_resume_is_exact(phase, tiny_run, vocab_model, tmp_path, monkeypatch):
    """N steps straight == N/2 steps, a crash, --resume, the rest: identical losses."""
    import shutil

    from emmax_cli.train.loop import Trainer

    monkeypatch.chdir(REPO)
    src, *_ = tiny_run
    steps = ["phases.ctl_steps=8", "phases.em_steps=8", "run.save_every=4", "run.eval_every=100"]

    def run(out: Path, crash_at=None, resume=False):
        if phase == "em" and not (out / "gmm").exists():
            shutil.copytree(src / "gmm", out / "gmm")
        tr = Trainer(tiny_cfg(vocab_model, out, *steps), crash_at=crash_at)
        try:
            tr.run([phase], resume=resume)
        except RuntimeError as e:
            assert "simulated crash" in str(e)
        return {r["step"]: r["loss"] for r in tr.history}

    straight = run(tmp_path / "a")
    crashed = run(tmp_path / "b", crash_at=6)  # dies after step 6; newest checkpoint: step 4
    resumed = run(tmp_path / "b", resume=True)
    assert sorted(resumed) == [5, 6, 7, 8]
    assert {**crashed, **resumed} == straight


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, model: str, out: str, q) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    os.chdir(REPO)
    torch.set_num_threads(1)
    from emmax_cli.train.loop import Trainer

    tr = Trainer(
        tiny_cfg(
            Path(model), Path(out), "phases.ctl_steps=4", "loss.mlm=false", "run.eval_every=100"
        )
    )
    tr.run(["ctl"])
    w = torch.cat([p.detach().flatten() for p in tr.enc.top.parameters()])
    q.put((rank, float(w.sum()), [r["loss"] for r in tr.history], float(tr.mq.filled)))


@needs_data
def test_two_process_gloo(vocab_model, tmp_path):
    """Two processes (gloo): gradients averaged (identical weights), keys gathered into the queue."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    port = _free_port()
    procs = [
        ctx.Process(target=_worker, args=(r, 2, port, str(vocab_model), str(tmp_path / "run"), q))
        for r in range(2)
    ]
    for p in procs:
        p.start()
    res = sorted(q.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    (_, w0, l0, f0), (_, w1, l1, f1) = res
    assert w0 == pytest.approx(w1, abs=1e-6)  # same weights on both ranks
    assert l0 != l1  # different data shards
    assert f0 == f1 == 40  # queue K=40 filled with keys from both ranks (4 steps x 2 x 32)
    assert (tmp_path / "run" / "ctl" / "emmax.json").exists()


# ---- delta packaging ----------------------------------------------------------------------------
@needs_data
def test_delta_roundtrip(tiny_run, vocab_model, tmp_path):
    from emmax_cli.errors import ModelLoadError
    from emmax_cli.models.delta import ensure_materialized, materialize, package
    from emmax_cli.models.encoder import Encoder
    from emmax_cli.models.gmm import GMMHead
    from emmax_cli.models.tiny import build_tiny_model

    out, *_ = tiny_run
    d = package(out / "em", vocab_model, tmp_path / "delta")
    meta = json.loads((d / "delta.json").read_text())
    assert meta["tensors"] and (d / "gmm_head.safetensors").exists()
    m = materialize(d, vocab_model, tmp_path / "full")
    texts = ["guten morgen", "good morning", "merci"]
    a = Encoder.load(out / "em", device="cpu", precision="fp32").encode(texts)
    b = Encoder.load(m, device="cpu", precision="fp32").encode(texts)
    assert abs(a - b).max() < 1e-3  # fp16 deltas
    assert GMMHead.from_dir(m, dim=32).num_ranks == 4
    rm = ensure_materialized(d, tmp_path / "cached", base=vocab_model)
    mtime = (rm.root / "emmax.json").stat().st_mtime_ns
    assert ensure_materialized(d, tmp_path / "cached", base=vocab_model).root == rm.root
    assert (rm.root / "emmax.json").stat().st_mtime_ns == mtime  # built once
    head = GMMHead.from_dir(d, dim=32)  # a new head alone (same encoder delta) rebuilds it
    with torch.no_grad():
        head.prior_logits += torch.tensor([1.0, 0.0, 0.0, 0.0])
    head.save(d)
    rebuilt = ensure_materialized(d, tmp_path / "cached", base=vocab_model)
    assert torch.allclose(GMMHead.from_dir(rebuilt.root, dim=32).prior_logits, head.prior_logits)
    other = build_tiny_model(tmp_path / "other", seed=1)
    with pytest.raises(ModelLoadError, match="base weights"):
        materialize(d, other, tmp_path / "bad")


# ---- CLI ----------------------------------------------------------------------------------------
@needs_data
def test_cli_train_ctl_and_errors(vocab_model, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from emmax_cli.cli import cli

    monkeypatch.chdir(REPO)
    r = CliRunner().invoke(
        cli,
        [
            "train",
            "--config",
            str(TINY),
            "--phase",
            "ctl",
            "--out",
            str(tmp_path / "o"),
            "--set",
            f'model.base="{vocab_model}"',
            "--set",
            "phases.ctl_steps=2",
            "--set",
            "loss.mlm=false",
            "--seed",
            "3",
        ],
        catch_exceptions=False,
    )
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "o" / "ctl" / "emmax.json").exists()
    r = CliRunner().invoke(cli, ["train", "--config", str(TINY), "--set", "run.bogus=1"])
    assert r.exit_code == 1 and "run.bogus" in r.stderr
    r = CliRunner().invoke(
        cli, ["train", "--config", str(TINY), "--phase", "em", "--out", str(tmp_path / "x")]
    )
    assert r.exit_code == 1 and "run --phase gmm first" in r.stderr
    r = CliRunner().invoke(
        cli, ["train", "--config", str(TINY), "--resume", "--out", str(tmp_path / "y")]
    )
    assert r.exit_code == 1 and "no checkpoint" in r.stderr
