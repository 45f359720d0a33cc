"""Training throughput per phase (pairs/s) of `emmax train`, on CPU by default.

    python bench/bench_train.py                                  # emmax-small recipe, fp32 and bf16
    python bench/bench_train.py --model tiny --steps 10          # tiny random model (smoke)
    python bench/bench_train.py --json bench/results/train.json

For each precision it runs the recipe's phases for a few steps (the first step is a warm-up and
not counted) and reports the median pairs/s of ctl and em steps (forward + backward of the
query, key forward, queue, GMM in em) and of the gmm warm-up (encoding + fit). A "pair" is
two sentences: em batches mix parallel pairs and monolingual sentences, counted as sentences/2.
The machine is shared: the load average before and after is printed with the table."""

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
from common import cpu_name as _cpu  # noqa: E402
from common import git_commit as _commit  # noqa: E402


def bench(
    config: str,
    model: str | None,
    precision: str,
    steps: int,
    batch_pairs: int | None,
    threads: int,
    device: str,
    gmm_pairs: int,
) -> dict:
    from emmax_cli.train.config import load_config
    from emmax_cli.train.loop import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        ov = [
            f'run.out="{tmp}"',
            f'run.precision="{precision}"',
            f'run.device="{device}"',
            f"run.threads={threads}",
            "run.log_every=1",
            "run.eval_every=100000",
            "run.save_every=100000",
            "data.dev=[]",
            f"phases.ctl_steps={steps + 1}",
            f"phases.em_steps={steps + 1}",
            f"phases.gmm_pairs={gmm_pairs}",
            "phases.gmm_steps=100",
        ]
        if model:
            ov.append(f'model.base="{model}"')
        if batch_pairs:
            ov.append(f"run.batch_pairs={batch_pairs}")
        cfg = load_config(config, ov)
        row = {
            "precision": precision,
            "threads": threads,
            "batch_pairs": cfg.run.batch_pairs,
            "max_length": cfg.model.max_length,
            "train_layers": cfg.model.train_layers,
        }
        for phase in ("ctl", "gmm", "em"):
            tr = Trainer(cfg)
            tr.setup(phase)
            t0 = time.perf_counter()
            tr.train()
            if phase == "gmm":
                row["gmm_pairs_per_s"] = gmm_pairs / (time.perf_counter() - t0)
            else:
                rates = [r["pairs_per_s"] for r in tr.history[1:] if "pairs_per_s" in r]
                row[f"{phase}_pairs_per_s"] = statistics.median(rates)
            tr.cleanup()
    return row


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--config", default=str(REPO / "configs" / "emmax-small.toml"))
    ap.add_argument(
        "--model", default=None, help="model.base override; 'tiny' builds the tiny random model"
    )
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument(
        "--steps", type=int, default=4, help="timed steps per phase (after one warm-up step)"
    )
    ap.add_argument("--batch-pairs", type=int, default=None)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--gmm-pairs", type=int, default=512)
    ap.add_argument("--json", default=None, help="also write the table as JSON to this path")
    a = ap.parse_args()
    os.chdir(REPO)  # data paths in the configs are relative to the repository root

    import torch

    model = a.model
    if model == "tiny":
        from emmax_cli.models.tiny import build_tiny_model

        model = str(build_tiny_model(Path(tempfile.mkdtemp()) / "tiny", seed=0))
    threads = a.threads or torch.get_num_threads()
    load0 = os.getloadavg()[0]
    rows = [
        bench(a.config, model, p, a.steps, a.batch_pairs, threads, a.device, a.gmm_pairs)
        for p in a.precisions.split(",")
    ]
    load1 = os.getloadavg()[0]
    machine = (
        f"{_cpu()}, {os.cpu_count()} cores, torch {torch.__version__}, commit {_commit()}, "
        f"device {a.device}, load average {load0:.1f} -> {load1:.1f}"
    )
    cols = [
        "precision",
        "threads",
        "batch_pairs",
        "max_length",
        "train_layers",
        "ctl_pairs_per_s",
        "gmm_pairs_per_s",
        "em_pairs_per_s",
    ]
    title = f"emmax train throughput ({Path(a.config).name}, model {a.model or 'recipe base'})"
    print(f"## {title}\n\n{machine}\n")
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print(
            "| "
            + " | ".join(f"{r[c]:.1f}" if isinstance(r[c], float) else str(r[c]) for c in cols)
            + " |"
        )
    notes = (
        "pairs/s = sentences/2 per second; median of the timed steps; the first step is a warm-up. "
        "ctl/em: one optimiser step (query forward+backward of the trained layers, frozen trunk "
        "forward, key forward, queue; em adds the GMM). gmm: encoding + interpolation fit. "
        "Shared machine: compare rows taken together only."
    )
    print(f"\n{notes}")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(
            json.dumps(
                {
                    "title": title,
                    "machine": machine,
                    "columns": cols,
                    "rows": [[r[c] for c in cols] for r in rows],
                    "notes": notes,
                },
                indent=2,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
