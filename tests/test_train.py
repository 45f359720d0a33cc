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

# the issue-9 features on the tiny recipe (configs/emmax-small-v2.toml's switches)
V2 = [
    "run.sub_batches=3",
    'run.key_precision="auto"',
    'run.trunk_precision="auto"',
    "run.queue_size=64",
    'loss.level_norm="all"',
    "loss.related_filter=true",
    'loss.top_positives="dup_mnn"',
    "loss.gmm_calibrate=true",
    "loss.label_smoothing=0.05",
    "loss.class_weight_cap=3.0",
    "optim.em_continue=true",
]

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


def log_records(out: Path) -> list[tuple]:
    """(phase, step, record without timings) of every line of <out>/train_log.jsonl."""
    lines = (out / "train_log.jsonl").read_text(encoding="utf-8").splitlines()
    recs = [json.loads(x) for x in lines]
    timing = {"pairs_per_s", "elapsed_s"}
    return [(r["phase"], r["step"], {k: v for k, v in r.items() if k not in timing}) for r in recs]


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
        results = tr.run()
    finally:
        os.chdir(old)
    return out, tr.history, results


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
    from emmax_cli.train.step import lr_at

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
    assert all(
        torch.equal(a, b) for a, b in zip(mq.key_top.parameters(), top.parameters(), strict=False)
    )
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
    from emmax_cli.train.data import eval_sentence_set, find_sources
    from emmax_cli.train.sampler import BatchSampler

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
    assert a.distinct_pairs() == 25  # 120 draws: every usable pair (20 deu + 5 fra) seen
    c = sampler()
    c.skip(29)
    assert c.next().texts == batches[29].texts  # replay = resume position
    assert c.distinct_pairs() == 25
    sharded = BatchSampler(srcs, [], 4, 0, seed=1, rank=1, world=2, banned=banned)
    nums = {int(t.split()[-1]) for _ in range(20) for t in sharded.next().texts}
    assert nums <= {i for i in range(20) if i % 2 == 1}  # rank 1 of 2 reads odd lines


# ---- the three phases on the tiny model ---------------------------------------------------------
@needs_data
def test_tiny_three_phases(tiny_run):
    from emmax_cli.models.encoder import Encoder
    from emmax_cli.models.gmm import GMMHead

    out, history, results = tiny_run
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
@pytest.mark.parametrize("variant", ["ctl", "em", "ctl-v2", "em-v2"])
def test_resume_is_exact(variant, tiny_run, vocab_model, tmp_path, monkeypatch):
    """N steps straight == N/2 steps, a crash, --resume, the rest: identical losses (also with
    the issue-9 features on: sub-batches, bf16 no-grad forwards where native, the fixed EM,
    em continuing ctl's optimiser, per-level gradient norms)."""
    import shutil

    from emmax_cli.train.loop import Trainer

    monkeypatch.chdir(REPO)
    src, *_ = tiny_run
    phase = variant.split("-")[0]
    steps = ["phases.ctl_steps=8", "phases.em_steps=8", "run.save_every=4", "run.eval_every=100"]
    if variant.endswith("v2"):
        steps += [*V2, "run.level_grad_every=2"]

    def run(out: Path, crash_at=None, resume=False):
        if phase == "em" and not (out / "gmm").exists():
            shutil.copytree(src / "gmm", out / "gmm")
            if variant == "em-v2":
                shutil.copytree(src / "checkpoints" / "ctl", out / "checkpoints" / "ctl")
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
    # the log of the crashed + resumed run is the uninterrupted run's: steps 5, 6 not twice
    assert log_records(tmp_path / "b") == log_records(tmp_path / "a")


@needs_data
def test_resume_log_has_no_repeated_steps(tiny_run, vocab_model, tmp_path, monkeypatch):
    """All phases, killed at ctl step 6 (after its log line, before the step-8 checkpoint),
    then --resume: train_log.jsonl has each (phase, step) once, equal to the straight run's."""
    from emmax_cli.train.loop import Trainer

    monkeypatch.chdir(REPO)
    straight, *_ = tiny_run
    out = tmp_path / "b"
    with pytest.raises(RuntimeError, match="simulated crash"):
        Trainer(tiny_cfg(vocab_model, out), crash_at=6).run()
    assert [s for p, s, _ in log_records(out)] == [1, 2, 3, 4, 5, 6]
    Trainer(tiny_cfg(vocab_model, out)).run(resume=True)
    got = log_records(out)
    pairs = [(p, s) for p, s, _ in got]
    assert len(pairs) == len(set(pairs))
    assert got == log_records(straight)  # same steps, same losses, bit for bit


def test_find_resume(tmp_path):
    """One lookup: the checkpoint ``latest`` names; without ``latest`` the newest complete one;
    errors for an incomplete pointer, another phase, or nothing at all."""
    from emmax_cli.train.checkpoint import STATE, find_resume

    with pytest.raises(ConfigError, match="no checkpoint to resume from"):
        find_resume(tmp_path)
    root = tmp_path / "checkpoints"
    for rel in ("ctl/step-000004", "ctl/step-000016", "em/step-000004", "em/step-000008"):
        (root / rel).mkdir(parents=True)
        (root / rel / STATE).write_bytes(b"")
    (root / "em" / "step-000012").mkdir()  # incomplete: no trainer state
    (root / "em" / ".step-000012.x.tmp").mkdir()  # a temporary folder
    p = find_resume(tmp_path)
    assert (p.phase, p.step, p.path) == ("em", 8, root / "em" / "step-000008")
    (root / "latest").write_text("ctl/step-000016\n")
    p = find_resume(tmp_path, "ctl")
    assert (p.phase, p.step, p.path) == ("ctl", 16, root / "ctl" / "step-000016")
    with pytest.raises(ConfigError, match="from phase ctl, not em"):
        find_resume(tmp_path, "em")
    (root / "latest").write_text("em/step-000012\n")
    with pytest.raises(ConfigError, match="incomplete or missing") as e:
        find_resume(tmp_path)
    assert "delete" in str(e.value) and "\n" not in str(e.value)


def test_truncate_log(tmp_path):
    from emmax_cli.train.runlog import append_record, read_log, truncate_log

    for phase, step in [("ctl", 1), ("ctl", 2), ("ctl", 3), ("gmm", 1), ("em", 1), ("em", 2)]:
        append_record(tmp_path, {"phase": phase, "step": step})
    with open(tmp_path / "train_log.jsonl", "a") as f:
        f.write('{"phase": "em", "st')  # a write cut short by a kill
    assert truncate_log(tmp_path, "em", 1) == 2
    assert [(r["phase"], r["step"]) for r in read_log(tmp_path)] == [
        ("ctl", 1),
        ("ctl", 2),
        ("ctl", 3),
        ("gmm", 1),
        ("em", 1),
    ]
    assert truncate_log(tmp_path, "ctl", 2) == 3
    assert [(r["phase"], r["step"]) for r in read_log(tmp_path)] == [("ctl", 1), ("ctl", 2)]
    assert truncate_log(tmp_path, "ctl", 2) == 0
    assert sorted(os.listdir(tmp_path)) == ["train_log.jsonl"]  # no temporary file left


def test_checkpoint_save_failure_leaves_nothing(tmp_path):
    """A checkpoint that fails half-way leaves no folder behind, and ``latest`` still names
    the previous one; a temporary left by a killed process is cleaned by the next save."""
    from emmax_cli.train.checkpoint import find_resume, load_checkpoint, save_checkpoint

    w = {"w": torch.ones(2, 2)}
    save_checkpoint(tmp_path, "ctl", 4, w, {"step": 4}, "[run]\n")

    class FailingHead:
        def save(self, d):
            (Path(d) / "gmm_head.safetensors").write_bytes(b"half")
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        save_checkpoint(tmp_path, "ctl", 8, w, {"step": 8}, "[run]\n", gmm=FailingHead())
    phase_dir = tmp_path / "checkpoints" / "ctl"
    assert sorted(os.listdir(phase_dir)) == ["step-000004"]
    assert find_resume(tmp_path).step == 4
    assert load_checkpoint(find_resume(tmp_path).path)[1] == {"step": 4}
    (phase_dir / ".step-000008.abc.tmp").mkdir()  # left by a SIGKILL
    save_checkpoint(tmp_path, "ctl", 8, w, {"step": 8}, "[run]\n", keep=1)
    assert sorted(os.listdir(phase_dir)) == ["step-000008"]


def test_export_failure_keeps_previous_export(tiny_encoder, tmp_path, monkeypatch):
    """A failed export leaves the previous model directory as it was and no temporary."""
    import emmax_cli.models.loading as loading
    from emmax_cli.train.config import TrainConfig
    from emmax_cli.train.export import export_model

    enc = tiny_encoder
    top = torch.nn.ModuleDict()
    root = export_model(
        tmp_path / "ctl", enc.model, enc.tokenizer, enc.config, top, TrainConfig(), "ctl"
    )
    before = (root / "emmax.json").read_bytes()
    real = loading.save_model_dir

    def failing(path, *a, **k):
        real(path, *a, **k)  # writes everything, then the disk fills up
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(loading, "save_model_dir", failing)
    with pytest.raises(OSError, match="No space"):
        export_model(root, enc.model, enc.tokenizer, enc.config, top, TrainConfig(), "em")
    assert os.listdir(tmp_path) == ["ctl"]
    assert (root / "emmax.json").read_bytes() == before


@pytest.fixture
def small_data(tmp_path) -> dict[str, str]:
    """--set overrides pointing every data key at small files that exist."""
    d = tmp_path / "data"
    d.mkdir()
    (d / "deu-eng.tsv").write_text("".join(f"satz {i}\tsentence {i}\n" for i in range(40)))
    (d / "deu.txt").write_text("".join(f"mono {i}\n" for i in range(20)))
    return {
        "data.parallel": f'["{d / "deu-eng.tsv"}"]',
        "data.mono": f'["{d / "deu.txt"}"]',
        "data.dev": f'["{d / "deu-eng.tsv"}"]',
        "data.exclude": "[]",
    }


@pytest.mark.parametrize(
    "key, value",
    [
        ("data.parallel", '["no/such/*-eng.tsv"]'),
        ("data.parallel", '[{src = "no/such.de", tgt = "no/such.en"}]'),
        ("data.mono", '["no/such/deu.txt"]'),
        ("data.dev", '["no/such/dev.tsv"]'),
        ("model.base", '"./no/such/model"'),
    ],
)
def test_missing_path_is_config_error_and_writes_nothing(
    key, value, small_data, tiny_model_dir, tmp_path
):
    """Every configured path is checked before the run writes anything (no dev.tsv left)."""
    from emmax_cli.train.loop import Trainer

    out = tmp_path / "run"
    sets = [f"{k}={v}" for k, v in {**small_data, key: value}.items()]
    cfg = tiny_cfg(tiny_model_dir, out, *sets)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as e:
        Trainer(cfg).run()
    assert "\n" not in str(e.value) and "no/such" in str(e.value)
    assert not out.exists() or not any(out.rglob("*"))


def test_cli_train_missing_data_is_one_line_and_writes_nothing(
    small_data, tiny_model_dir, tmp_path
):
    from click.testing import CliRunner
    from conftest import one_line_error

    from emmax_cli.cli import cli

    sets = {**small_data, "data.mono": '["no/such/deu.txt"]'}
    args = ["train", "--config", str(TINY), "--out", str(tmp_path / "o")]
    args += ["--set", f'model.base="{tiny_model_dir}"']
    for k, v in sets.items():
        args += ["--set", f"{k}={v}"]
    r = CliRunner().invoke(cli, args)
    one_line_error(r, "data.mono", "no/such/deu.txt")
    assert not (tmp_path / "o").exists()


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
    """Two processes (gloo): gradients averaged (identical weights), keys gathered (queue)."""
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


# ---- issue 9: faster step -----------------------------------------------------------------------
def test_length_buckets_partition_and_padding():
    import numpy as np

    from emmax_cli.train.encoding import length_buckets

    rng = np.random.default_rng(0)
    lengths = rng.integers(4, 49, 128)
    assert length_buckets(lengths, 1)[0].tolist() == list(range(128))  # one group: batch order
    padded = [128 * lengths.max()]
    for k in (2, 4, 6):
        groups = length_buckets(lengths, k)
        assert 1 < len(groups) <= k
        assert sorted(np.concatenate(groups).tolist()) == list(range(128))  # each row once
        assert all(lengths[g].tolist() == sorted(lengths[g].tolist()) for g in groups)
        assert max(lengths[groups[0]]) <= min(lengths[groups[-1]])  # shortest first
        padded.append(sum(len(g) * lengths[g].max() for g in groups))
    assert padded == sorted(padded, reverse=True) and padded[-1] < 0.8 * padded[0]
    assert len(length_buckets([7, 7, 7], 4)) == 1  # equal lengths: no point in cutting


def test_key_precision_auto_follows_the_cpu(monkeypatch):
    import importlib

    E = importlib.import_module("emmax_cli.train.encoding")

    monkeypatch.setattr(E, "cpu_has_bf16", lambda: False)
    assert E.key_precision("auto", "fp32", "cpu") == "fp32"  # AVX2 only: bf16 is ~7x slower
    monkeypatch.setattr(E, "cpu_has_bf16", lambda: True)
    assert E.key_precision("auto", "fp32", "cpu") == "bf16"
    assert E.key_precision("same", "fp32", "cpu") == "fp32"
    assert E.key_precision("fp32", "bf16", "cpu") == "fp32"


@needs_data
def test_sub_batches_change_only_summation_order(vocab_model, tmp_path, monkeypatch):
    """Dropout off: the loss and the vectors of sub-batched steps equal the single padded
    batch's to float rounding (pooling is per sentence, padding is masked)."""
    from emmax_cli.train.encoding import query_key, tokenize
    from emmax_cli.train.loop import Trainer
    from emmax_cli.train.step import forward_loss

    monkeypatch.chdir(REPO)
    out = {}
    for n in (1, 4):
        tr = Trainer(tiny_cfg(vocab_model, tmp_path / str(n), f"run.sub_batches={n}"))
        tr.setup("ctl")
        tr.enc.top.train(False)
        batch = tr.sampler.next()
        eb = tokenize(tr, batch.texts)
        assert len(eb.groups) == min(n, len(eb.groups)) and sum(map(len, eb.groups)) == 32
        q, k = query_key(tr, eb)
        loss, _, _ = forward_loss(tr, batch)
        out[n] = (q.detach(), k, float(loss.detach()))
    assert len(tokenize(tr, batch.texts).groups) > 1
    assert torch.allclose(out[1][0], out[4][0], atol=1e-5)
    assert torch.allclose(out[1][1], out[4][1], atol=1e-5)
    assert out[1][2] == pytest.approx(out[4][2], rel=1e-5)


# ---- issue 9: the EM fixes ----------------------------------------------------------------------
def test_level_norm_all_rows_hand_made():
    """Level 1 has a positive in one row of three, level 3 in every row: "present" averages
    each level over its rows (level 1 weighs as much as level 3), "all" divides by B = 3."""
    from emmax_cli.train.losses import ranking_infonce, ranking_levels

    S = torch.tensor([[0.9, 0.6, 0.2, 0.1], [0.8, 0.3, 0.7, 0.1], [0.2, 0.1, 0.5, 0.9]])
    labels = torch.tensor([[3, 1, 0, 0], [0, 0, 3, 0], [0, 0, 0, 3]])
    exclude = torch.zeros(3, 4, dtype=torch.bool)
    taus = [0.1, 0.1, 0.1]
    l1 = -(torch.tensor([0.6, 0.2, 0.1]) / 0.1).log_softmax(0)[0]  # row 0: {1} vs {1, 2, 3}
    l3 = [
        -(S[0] / 0.1).log_softmax(0)[0],
        -(S[1] / 0.1).log_softmax(0)[2],
        -(S[2] / 0.1).log_softmax(0)[3],
    ]
    present, rows = ranking_infonce(S, labels, exclude, taus)
    assert rows == {1: 1, 3: 3}
    assert present.item() == pytest.approx((l1 + sum(l3) / 3).item(), rel=1e-5)
    all_rows, _ = ranking_infonce(S, labels, exclude, taus, level_norm="all")
    assert all_rows.item() == pytest.approx((l1 / 3 + sum(l3) / 3).item(), rel=1e-5)
    terms, _ = ranking_levels(S, labels, exclude, taus, level_norm="all", level_weights=[0.5, 1, 1])
    assert terms[1].item() == pytest.approx(0.5 * l1.item() / 3, rel=1e-5)


def test_lower_weight_zero_gives_no_gradient_from_lower_levels():
    """C0: levels 1..N-2 weighted 0 are not computed, so their gradient is exactly 0."""
    from emmax_cli.train.losses import ranking_levels

    g = torch.Generator().manual_seed(1)
    S = (torch.rand(6, 9, generator=g) * 2 - 1).requires_grad_(True)
    labels = torch.randint(0, 4, (6, 9), generator=g)
    labels[torch.arange(6), torch.arange(6) + 1] = 3
    exclude = torch.zeros(6, 9, dtype=torch.bool)
    taus = [0.08, 0.06, 0.04]
    terms, rows = ranking_levels(S, labels, exclude, taus, level_weights=[0.0, 0.0, 1.0])
    assert set(terms) == {3} and {1, 2} <= set(rows)  # rows still counted for the log
    (g_c0,) = torch.autograd.grad(sum(terms.values()), S)
    top_only = labels.masked_fill((labels == 1) | (labels == 2), 0)  # level 3 alone
    t3, _ = ranking_levels(S, top_only, exclude, taus)
    (g_top,) = torch.autograd.grad(t3[3], S)
    assert torch.equal(g_c0, g_top)
    full, _ = ranking_levels(S, labels, exclude, taus)
    (g_full,) = torch.autograd.grad(sum(full.values()), S)
    assert not torch.allclose(g_full, g_top)  # the lower levels do move S when weighted


def test_related_filter_hand_made():
    """Levels 1..N-2 pass only cross-lingual, confident and above their rank's mean; rank 0 and
    the top rank are not judged."""
    from emmax_cli.train.em import related_positives

    rank_means = torch.tensor([0.1, 0.4, 0.6, 0.9])
    lang_q = torch.tensor([0, 1])
    lang_c = torch.tensor([0, 1, 0, 2, -1])  # candidate 4: language unknown (queue)
    sim = torch.tensor([[1.0, 0.5, 0.5, 0.3, 0.5], [0.5, 1.0, 0.7, 0.65, 0.7]])
    labels = torch.tensor([[3, 1, 1, 1, 1], [1, 3, 2, 2, 2]])
    conf = torch.tensor([[1.0, 0.95, 0.95, 0.95, 0.95], [0.95, 1.0, 0.95, 0.5, 0.95]])
    ok = related_positives(sim, labels, conf, rank_means, lang_q, lang_c, 0.9)
    expect = torch.tensor(
        [
            # (0,0) top rank; (0,1) passes; (0,2) same language; (0,3) 0.3 < mean 0.4;
            # (0,4) unknown language
            [True, True, False, False, False],
            # (1,0) passes; (1,1) top; (1,2) passes (0.7 > 0.6); (1,3) P_G 0.5 < 0.9;
            # (1,4) unknown language
            [True, True, True, False, False],
        ]
    )
    assert torch.equal(ok, expect)


def test_duplicates_and_mutual_neighbours():
    from emmax_cli.train.em import duplicate_pairs, mutual_neighbours
    from emmax_cli.train.sampler import Batch

    # pairs 0 and 2 share their English side: deu_0, fra_2, and both English rows are one group
    texts = [
        "hallo welt",
        "guten tag",
        "bonjour le monde",
        "Hello  world",
        "good day",
        "hello world",
    ]
    dup = duplicate_pairs(Batch(texts, 3, ["deu", "deu", "fra", "eng", "eng", "eng"]), 8, "cpu")
    groups = [{0, 2, 3, 5}, {1, 4}]  # the translation pair 1-4 is its own group
    for b in range(6):
        for j in range(8):
            same = any({b, j} <= g for g in groups)
            assert bool(dup[b, j]) == (b != j and j < 6 and same), (b, j)
    sim = torch.tensor(
        [
            [1.0, 0.9, 0.2, 0.1],
            [0.9, 1.0, 0.3, 0.8],
            [0.2, 0.3, 1.0, 0.6],
            [0.1, 0.8, 0.6, 1.0],
        ]
    )
    blocked = torch.eye(4, dtype=torch.bool)
    mnn = mutual_neighbours(sim, blocked)
    # 0 <-> 1 mutual; 2 -> 3 but 3 -> 1: not mutual
    assert mnn.nonzero().tolist() == [[0, 1], [1, 0]]
    blocked[0, 1] = blocked[1, 0] = True  # e.g. a translation pair: not a neighbour candidate
    assert mutual_neighbours(sim, blocked).nonzero().tolist() == [[1, 3], [3, 1]]


def test_gmm_cross_entropy_calibrated():
    """Smoothing spread in proportion to the label frequencies; weights (f_max/f_c)^0.5, capped."""
    from emmax_cli.train.losses import gmm_cross_entropy

    freq = torch.tensor([0.9, 0.06, 0.01, 0.03])
    lj = torch.log(torch.tensor([[0.7, 0.1, 0.1, 0.1], [0.1, 0.1, 0.1, 0.7]]))
    t = torch.tensor([0, 3])
    eps = 0.1
    soft0 = [1 - eps, eps * 0.6, eps * 0.1, eps * 0.3]  # others 0.06 : 0.01 : 0.03
    soft3 = [eps * 0.9 / 0.97, eps * 0.06 / 0.97, eps * 0.01 / 0.97, 1 - eps]
    logp = torch.log_softmax(lj, -1)
    per = [-(torch.tensor(s) * logp[i]).sum() for i, s in enumerate([soft0, soft3])]
    w = [1.0, min(3.0, (0.9 / 0.03) ** 0.5)]
    ref = (w[0] * per[0] + w[1] * per[1]) / (w[0] + w[1])
    got = gmm_cross_entropy(lj, t, eps, 3.0, freq=freq)
    assert got.item() == pytest.approx(ref.item(), rel=1e-5)


def test_level_grad_norms_and_rate_limited_warning(caplog):
    from types import SimpleNamespace

    from emmax_cli.train.config import TrainConfig
    from emmax_cli.train.step import level_grad_norms

    cfg = TrainConfig()
    cfg.run.level_grad_warn_every = 10
    w = torch.nn.Parameter(torch.ones(3))
    tr = SimpleNamespace(cfg=cfg, N=4, phase="em", step=0)
    levels = {1: (4.0 * w).sum(), 3: w.sum()}
    with caplog.at_level("WARNING", logger="emmax_cli.train.step"):
        for step in range(12):
            tr.step = step
            out = level_grad_norms(tr, levels, [w])
    assert out == pytest.approx(
        {"grad_norm_level1": 4 * 3**0.5, "grad_norm_level2": 0.0, "grad_norm_level3": 3**0.5}
    )
    warned = [
        r for r in caplog.records if "outweigh" in r.getMessage() or "steer" in r.getMessage()
    ]
    assert len(warned) == 2  # steps 1 and 11: at most once per 10 steps
    assert w.grad is None  # measuring does not touch the gradients of the step


def test_queue_keeps_entry_languages_and_loads_old_state():
    from emmax_cli.train.queue import MomentumQueue, lang_ids

    mq = MomentumQueue(torch.nn.Linear(2, 2), dim=2, size=3)
    ids = lang_ids(["deu", "eng", "deu", ""])
    assert ids[0] == ids[2] != ids[1] and ids[3] == -1
    assert torch.equal(lang_ids(["deu"]), lang_ids(["deu"]))  # stable across calls/processes
    mq.enqueue(torch.ones(2, 2), ids[:2])
    mq.enqueue(torch.ones(2, 2))  # languages unknown
    assert mq.entry_langs().tolist() == [-1, int(ids[1]), -1]
    old = {k: v for k, v in mq.state_dict().items() if k != "lang"}  # pre-issue-9 checkpoint
    mq2 = MomentumQueue(torch.nn.Linear(2, 2), dim=2, size=3)
    mq2.load_state_dict(old)
    assert mq2.entry_langs().tolist() == [-1, -1, -1]


@needs_data
def test_em_v2_logs_level_norms_c0_and_continues_ctl(tiny_run, vocab_model, tmp_path, monkeypatch):
    """The fixed EM on the tiny model: per-level gradient norms in the log, C0's lower levels
    at 0, em starting from ctl's AdamW state without a warm-up; arm A leaves the GMM as it was."""
    import shutil

    from emmax_cli.models.gmm import GMMHead
    from emmax_cli.train.loop import Trainer

    monkeypatch.chdir(REPO)
    src, *_ = tiny_run
    v2 = [*V2, "run.level_grad_every=1", "phases.em_steps=3"]
    logs = {}
    arms = (("C", []), ("C0", ["loss.lower_weight=0.0"]), ("A", ["loss.em_labels=false"]))
    for arm, extra in arms:
        out = tmp_path / arm
        for d in ("ctl", "gmm", "checkpoints/ctl"):
            shutil.copytree(src / d, out / d)
        tr = Trainer(tiny_cfg(vocab_model, out, *v2, *extra))
        tr.setup("em")
        assert tr.warmup == 0 and tr.opt.state  # ctl's AdamW moments, no second warm-up
        steps = {int(s["step"]) for s in tr.opt.state_dict()["state"].values()}
        assert steps == {16}  # ctl ran 16 steps
        tr.train()
        logs[arm] = [r for r in tr.history if r["phase"] == "em"]
    head = GMMHead.from_dir(src / "gmm", dim=32).state_dict()
    assert all(torch.equal(v, head[k]) for k, v in tr.gmm.state_dict().items())  # A: GMM rests
    assert all("loss_gmm" not in r and r["grad_norm_level1"] == 0.0 for r in logs.pop("A"))
    for recs in logs.values():
        assert all({f"grad_norm_level{r}" for r in (1, 2, 3)} <= set(rec) for rec in recs)
        assert all(rec["grad_norm_level3"] > 0 and len(rec["label_freq"]) == 4 for rec in recs)
    assert all(rec["grad_norm_level1"] == rec["grad_norm_level2"] == 0.0 for rec in logs["C0"])
