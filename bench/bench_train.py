"""Training throughput (pairs/s) of the current recipe against the new one, per phase, in one
run with the steps of the two recipes interleaved (the machine is shared: both see the same load).

    python bench/bench_train.py                                  # emmax-small vs emmax-small-v2
    python bench/bench_train.py --precisions fp32,auto --threads 1 --steps 8 \\
        --json bench/results/train.json
    python bench/bench_train.py --model tiny --steps 3           # tiny random model (smoke)

"old" is ``--old-config`` (default configs/emmax-small.toml: one padded batch, trunk in fp32,
key encoder at the run's precision, queue 256); "new" is ``--new-config`` (default
configs/emmax-small-v2.toml: length-sorted sub-batches, trunk and key encoder in bf16 where
the CPU computes bf16 natively, queue 4096, the fixed EM, 128 pairs a batch). Both run at the
precision of the row (``auto`` resolves per machine: bf16 only with AVX-512 BF16 or AMX), from
the same base model, each with its own batch size (``--batch-pairs`` sets both).

Per phase each recipe takes one untimed warm-up step, then ``--steps`` timed optimiser steps,
alternating old/new (and which goes first). A "pair" is two sentences (em batches mix parallel
pairs and monolingual sentences, counted as sentences/2). The gmm warm-up (encoding + fit, the
same code in both recipes) is timed once per recipe. The table gives the median pairs/s, and
the header the CPU model and flags, threads, torch version, commit and the load average."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).parent))
from common import git_commit as _commit  # noqa: E402


def _config(
    path: str,
    out: Path,
    precision: str,
    a: argparse.Namespace,
    model: str | None,
    extra: list[str] = (),
):
    from emmax_cli.train.config import load_config

    ov = [
        f'run.out="{out}"',
        f'run.precision="{precision}"',
        f'run.device="{a.device}"',
        f"run.threads={a.threads}",
        "run.eval_every=100000",
        "run.save_every=100000",
        "data.dev=[]",
        f"phases.gmm_pairs={a.gmm_pairs}",
        "phases.gmm_steps=100",
    ]
    if model:
        ov.append(f'model.base="{model}"')
    if a.batch_pairs:
        ov.append(f"run.batch_pairs={a.batch_pairs}")
    return load_config(path, [*ov, *extra])


def _interleaved(trainers: dict, steps: int) -> dict[str, list[float]]:
    """Alternate optimiser steps of the trainers; pairs/s of every timed step per trainer."""
    from emmax_cli.train.step import lr_at, optimizer_step

    rates: dict[str, list[float]] = {k: [] for k in trainers}
    names = list(trainers)
    for i in range(steps + 1):
        for name in names if i % 2 == 0 else names[::-1]:
            tr = trainers[name]
            o = tr.cfg.optim
            lr = lr_at(tr.step, tr.total, o.lr, tr.warmup, o.min_lr)
            t0 = time.perf_counter()
            _, sents = optimizer_step(tr, lr)
            dt = time.perf_counter() - t0
            tr.step += 1
            if i > 0:  # the first step is a warm-up
                rates[name].append(sents / 2 / dt)
    return rates


def bench(precision: str, a: argparse.Namespace, model: str | None) -> list[dict]:
    """Both recipes through ctl, gmm and em at one precision; one row per phase."""
    from emmax_cli.train.loop import Trainer

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cfgs = {
            "old": _config(a.old_config, Path(tmp) / "old", precision, a, model),
            "new": _config(a.new_config, Path(tmp) / "new", precision, a, model, a.new_set),
        }
        for phase in ("ctl", "gmm", "em"):
            trainers = {}
            for name, cfg in cfgs.items():
                cfg.phases.ctl_steps = cfg.phases.em_steps = a.steps + 1
                tr = Trainer(cfg)
                tr.setup(phase)
                trainers[name] = tr
            if phase == "gmm":
                rates = {}
                for name, tr in trainers.items():
                    t0 = time.perf_counter()
                    tr.train()
                    rates[name] = [a.gmm_pairs / (time.perf_counter() - t0)]
            else:
                for tr in trainers.values():
                    tr.enc.top.train(tr.cfg.model.dropout)
                rates = _interleaved(trainers, a.steps)
                for tr in trainers.values():
                    tr.save()  # the ctl checkpoint em_continue starts from
                    tr.export(tr.out / phase)
            any_tr = trainers["new"]
            old, new = (statistics.median(rates[n]) for n in ("old", "new"))
            rows.append(
                {
                    "precision": f"{precision} ({any_tr.precision})"
                    if precision == "auto"
                    else precision,
                    "phase": phase,
                    "threads": a.threads,
                    "batch_pairs": f"{cfgs['old'].run.batch_pairs}/{cfgs['new'].run.batch_pairs}",
                    "steps": len(rates["new"]),
                    "old_pairs_per_s": round(old, 2),
                    "new_pairs_per_s": round(new, 2),
                    "ratio": round(new / old, 2),
                    "new_nograd": f"trunk {any_tr.trunk_prec}, key {any_tr.key_prec}, "
                    f"{any_tr.cfg.run.sub_batches} sub-batches",
                }
            )
            for tr in trainers.values():
                tr.cleanup()
    return rows


COLUMNS = [
    "precision",
    "phase",
    "threads",
    "batch_pairs",
    "steps",
    "old_pairs_per_s",
    "new_pairs_per_s",
    "ratio",
    "new_nograd",
]


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--old-config", default=str(REPO / "configs" / "emmax-small.toml"))
    ap.add_argument("--new-config", default=str(REPO / "configs" / "emmax-small-v2.toml"))
    ap.add_argument("--model", default=None, help="model.base; 'tiny' builds the tiny model")
    ap.add_argument("--precisions", default="fp32,auto")
    ap.add_argument("--steps", type=int, default=6, help="timed steps per phase and recipe")
    ap.add_argument("--batch-pairs", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (both recipes)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--gmm-pairs", type=int, default=512)
    ap.add_argument(
        "--new-set", action="append", default=[], help="override for the new recipe only"
    )
    ap.add_argument("--json", default=None, help="also write the table as JSON to this path")
    a = ap.parse_args()
    os.chdir(REPO)  # data paths in the configs are relative to the repository root

    import torch

    from emmax_cli.device import cpu_summary

    model = a.model
    if model == "tiny":
        from emmax_cli.models.tiny import build_tiny_model

        model = str(build_tiny_model(Path(tempfile.mkdtemp()) / "tiny", seed=0))
    load0 = os.getloadavg()
    rows = [r for p in a.precisions.split(",") for r in bench(p, a, model)]
    load1 = os.getloadavg()
    machine = (
        f"{cpu_summary()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"commit {_commit()} + working tree, device {a.device}, {a.threads} thread(s), "
        f"load average (1/5/15 min) {'/'.join(f'{x:.1f}' for x in load0)} before, "
        f"{'/'.join(f'{x:.1f}' for x in load1)} after"
    )
    title = (
        f"emmax train throughput: {Path(a.old_config).name} (old) vs "
        f"{Path(a.new_config).name} (new), model {a.model or 'recipe base'}"
    )
    command = "python bench/bench_train.py " + " ".join(sys.argv[1:])
    print(f"## {title}\n\n{machine}\n\n`{command}`\n")
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in COLUMNS) + " |")
    notes = (
        "pairs/s = sentences/2 per second; median of the timed optimiser steps, the two recipes "
        "interleaved step by step in one process (same load), after one warm-up step each. "
        "ctl/em: frozen trunk, query forward+backward, key forward, loss (em: GMM, EM labels), "
        "AdamW, momentum update, queue. The new em also measures per-level gradient norms every "
        "run.level_grad_every steps (three extra backward passes; not among these steps). "
        "gmm: the warm-up's encoding + fit (same code in both). Shared machine: compare the two "
        "columns of a row, not rows taken at other times."
    )
    print(f"\n{notes}")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(
            json.dumps(
                {
                    "title": title,
                    "machine": machine,
                    "columns": COLUMNS,
                    "rows": [[r[c] for c in COLUMNS] for r in rows],
                    "notes": notes,
                    "command": command,
                    "date": time.strftime("%Y-%m-%d"),
                },
                indent=2,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
