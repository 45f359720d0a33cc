"""The equal-compute EM ablation of issue 9: does EM beat contrastive-only training?

    # 1. once: ctl + gmm of the recipe (the shared starting point of every arm)
    emmax train --config configs/emmax-small-v2.toml --set phases.em_steps=0 --out runs/abl-base
    # 2. the arms, 3 seeds each, then the table (resumable: finished runs are skipped)
    python bench/ablation_em.py --base runs/abl-base --steps 400 --out runs/ablation
    python bench/ablation_em.py --base runs/abl-base --steps 400 --dry-run   # commands + time

Arms, all from the same ctl checkpoint and GMM warm-up (``--base``: ``ctl/``, ``gmm/`` and
``checkpoints/ctl/`` are copied into every run), the same data stream for a given seed (the em
sampler's stream depends only on ``run.seed`` and the ``[data]`` section, which no arm changes)
and the same number of em steps. Every arm is ``--config`` (configs/emmax-small-v2.toml) plus
the overrides of ``ARMS``:

* A  = ctl continued: the em batches with ctl's labels (``loss.em_labels = false``), with the
  queue, optimiser hand-over and speed settings of C, so that C - A isolates EM's labels;
* B  = EM as it is now: the em settings of configs/emmax-small.toml (per-level mean over the
  rows with a positive, every GMM call a positive, learned prior, smoothing 0.3, class weights
  up to 10, queue 256, a fresh AdamW with a 20-step warm-up);
* C  = the fixed EM, as configured;
* C0 = C with the levels below the top weighted 0 (``loss.lower_weight = 0``).

Each run is evaluated on Tatoeba XTREME-36 in both directions (``emmax eval tatoeba
../shared/data/tatoeba/v1 --langs xtreme --json -m <run>/em``) and on the run's dev pairs (the
last ``dev_acc`` of its log). The table gives mean +- standard deviation over the seeds per arm,
and C - A with its standard error, paired by seed (sd of the per-seed differences / sqrt(n)) and
unpaired (sqrt(var_C/n + var_A/n)); a claim that EM helps needs C - A > 2 standard errors."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# --set overrides per arm, on top of the arm's config file
ARMS: dict[str, list[str]] = {
    "A": ["loss.em_labels=false", 'loss.top_positives="gmm"'],
    "B": [
        'loss.level_norm="present"',
        "loss.related_filter=false",
        'loss.top_positives="gmm"',
        "loss.gmm_calibrate=false",
        "loss.label_smoothing=0.3",
        "loss.class_weight_cap=10.0",
        "run.queue_size=256",
        "optim.em_continue=false",
        "optim.warmup_steps=20",
    ],
    "C": [],
    "C0": ["loss.lower_weight=0.0"],
}
METRICS = ("xx2eng", "eng2xx", "dev_acc")


def run_dir(out: Path, arm: str, seed: int) -> Path:
    """The folder of one arm and seed."""
    return out / f"{arm}-seed{seed}"


def train_command(a: argparse.Namespace, arm: str, seed: int) -> list[str]:
    """The ``emmax train`` command of one arm and seed (em phase only)."""
    sets = ARMS[arm]
    d = run_dir(Path(a.out), arm, seed)
    cmd = [sys.executable, "-m", "emmax_cli", "train", "--config", a.config]
    cmd += ["--phase", "em", "--out", str(d), "--seed", str(seed)]
    overrides = [
        f"phases.em_steps={a.steps}",
        f"run.threads={a.threads}",
        "run.save_every=50",
        *a.set,
        *sets,
    ]
    for s in overrides:
        cmd += ["--set", s]
    if (d / "checkpoints" / "latest").exists():
        cmd.append("--resume")
    return cmd


def prepare(base: Path, d: Path) -> None:
    """Copy the shared starting point (ctl and gmm exports, ctl checkpoints) into a run."""
    for sub in ("ctl", "gmm", "checkpoints/ctl"):
        if (base / sub).exists() and not (d / sub).exists():
            shutil.copytree(base / sub, d / sub)
    if not (d / "gmm" / "emmax.json").exists():
        raise SystemExit(f"{base}: no gmm/ export (run the ctl and gmm phases there first)")


def evaluate(d: Path, threads: int) -> dict[str, float]:
    """Tatoeba XTREME-36 both ways and the last dev accuracy of one finished run."""
    res = d / "tatoeba_xtreme.json"
    if not res.exists():
        cmd = [sys.executable, "-m", "emmax_cli", "eval", "tatoeba", "../shared/data/tatoeba/v1"]
        cmd += ["--langs", "xtreme", "--json", "--quiet", "-m", str(d / "em")]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
        res.write_text(out, encoding="utf-8")
    avg = json.loads(res.read_text(encoding="utf-8"))["averages"]["xtreme36"]
    dev = [
        json.loads(line).get("dev_acc")
        for line in (d / "train_log.jsonl").read_text(encoding="utf-8").splitlines()
        if '"dev_acc"' in line and '"phase": "em"' in line
    ]
    return {"xx2eng": 100 * avg["xx2eng"], "eng2xx": 100 * avg["eng2xx"], "dev_acc": 100 * dev[-1]}


def summarise(results: dict[str, dict[int, dict[str, float]]]) -> str:
    """Markdown: mean +- sd per arm and metric, then C - A with its standard errors."""

    def ms(xs: list[float]) -> str:
        sd = statistics.stdev(xs) if len(xs) > 1 else float("nan")
        return f"{statistics.mean(xs):.2f} +- {sd:.2f}"

    lines = ["| arm | seeds | " + " | ".join(METRICS) + " |", "|---|---|" + "---|" * len(METRICS)]
    for arm, by_seed in results.items():
        cells = [ms([r[m] for r in by_seed.values()]) for m in METRICS]
        lines.append(f"| {arm} | {len(by_seed)} | " + " | ".join(cells) + " |")
    if "A" in results and "C" in results:
        seeds = sorted(set(results["A"]) & set(results["C"]))
        lines += [
            "",
            "| C - A | mean | se (paired) | se (unpaired) | > 2 se? |",
            "|---|---|---|---|---|",
        ]
        for m in METRICS:
            c = [results["C"][s][m] for s in seeds]
            a = [results["A"][s][m] for s in seeds]
            diff = [x - y for x, y in zip(c, a, strict=True)]
            n = len(diff)
            se_p = statistics.stdev(diff) / n**0.5 if n > 1 else float("nan")
            se_u = (
                (statistics.variance(c) / n + statistics.variance(a) / n) ** 0.5
                if n > 1
                else float("nan")
            )
            mean = statistics.mean(diff)
            verdict = "yes" if n > 1 and mean > 2 * max(se_p, se_u) else "no"
            lines.append(f"| {m} | {mean:+.2f} | {se_p:.2f} | {se_u:.2f} | {verdict} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--base", required=True, help="run folder with ctl/, gmm/, checkpoints/ctl/")
    ap.add_argument("--config", default="configs/emmax-small-v2.toml")
    ap.add_argument("--arms", default="A,B,C,C0")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--steps", type=int, default=400, help="em steps of every arm")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="runs/ablation")
    ap.add_argument("--set", action="append", default=[], help="extra override for every arm")
    ap.add_argument("--pairs-per-s", type=float, default=None, help="for the time estimate")
    ap.add_argument("--dry-run", action="store_true", help="print the commands and the estimate")
    ap.add_argument("--json", default=None, help="write the per-run results here")
    a = ap.parse_args()
    os.chdir(REPO)
    arms, seeds = a.arms.split(","), [int(s) for s in a.seeds.split(",")]
    if a.pairs_per_s:
        per_arm = a.steps * 64 / a.pairs_per_s  # batch_pairs 64: 128 sentences a step
        runs = len(arms) * len(seeds)
        print(
            f"one arm x seed: {a.steps} steps ~ {per_arm / 60:.0f} min at {a.pairs_per_s} "
            f"pairs/s (+ ~2 min Tatoeba eval); {runs} runs ~ {runs * per_arm / 3600:.1f} h"
        )
    results: dict[str, dict[int, dict[str, float]]] = {}
    for arm in arms:
        for seed in seeds:
            d = run_dir(Path(a.out), arm, seed)
            cmd = train_command(a, arm, seed)
            if a.dry_run:
                print(shlex.join(cmd))
                continue
            if not (d / "em" / "emmax.json").exists():
                prepare(Path(a.base), d)
                subprocess.run(cmd, check=True)
            results.setdefault(arm, {})[seed] = evaluate(d, a.threads)
    if a.dry_run:
        return
    print(summarise(results))
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
