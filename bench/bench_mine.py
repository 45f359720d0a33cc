"""Time emmax's mining end to end against LASER's pipeline, on the same data.

    python bench/bench_mine.py --n 30000 --dim 384

Data: synthetic clustered unit vectors (seed 0); the first half of the targets are noisy
copies of the sources (true pairs), the rest unrelated. Both implementations mine with
k = 4, ratio margin, max retrieval (LASER's defaults) and must return identical pairs.

* LASER: ``mine_bitexts.py`` as written: ``IndexFlatIP`` k-NN both ways (two exact FAISS
  passes over the similarity matrix), ``score_candidates`` (a Python loop over every
  candidate) and the ``max`` loop with seen-sets.
* emmax: ``emmax_cli.mine.mine`` end to end, on CPU: exact k-NN of both sides in one pass
  over X·Yᵀ (``knn_both``), vectorised margins and retrieval. Its post-k-NN part (margins
  + retrieval) is also timed alone, by ``mine_from_neighbours`` on LASER's neighbour lists;
  emmax's k-NN column is the end-to-end time minus that.

Identical means: the same set of pairs as LASER and as ``mine_from_neighbours`` on LASER's
k-NN lists, with scores within 1e-6. (emmax's GEMM is not FAISS's: similarities can differ
in the last bit, so two pairs whose scores are 1 ulp apart may swap places in the list.)
The machine's load average is printed with the table: timings are only comparable on an
idle machine. Prints a Markdown table; exits 1 if the pairs differ.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from emmax_cli.mine import mine, mine_from_neighbours  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from common import cpu_name, git_commit, machine  # noqa: E402


def make_data(n: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((max(n // 100, 1), dim), dtype=np.float32)
    x = centers[rng.integers(0, len(centers), n)] + 0.8 * rng.standard_normal((n, dim), np.float32)
    y = centers[rng.integers(0, len(centers), n)] + 0.8 * rng.standard_normal((n, dim), np.float32)
    half = n // 2
    y[:half] = x[:half] + 0.5 * rng.standard_normal((half, dim), np.float32)
    faiss.normalize_L2(x)
    faiss.normalize_L2(y)
    return x, y


# ---- LASER mine_bitexts.py, --mode mine --retrieval max --margin ratio (CPU path) ----
def laser_knn(x, y, k):
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(y)
    return index.search(x, k)


def laser_score_candidates(x, y, candidate_inds, fwd_mean, bwd_mean):
    def margin(a, b):
        return a / b

    scores = np.zeros(candidate_inds.shape)
    for i in range(scores.shape[0]):
        for j in range(scores.shape[1]):
            k = candidate_inds[i, j]
            scores[i, j] = margin(x[i].dot(y[k]), (fwd_mean[i] + bwd_mean[k]) / 2)
    return scores


def laser_max(x2y, y2x, x, y):
    (x2y_sim, x2y_ind), (y2x_sim, y2x_ind) = x2y, y2x
    x2y_mean, y2x_mean = x2y_sim.mean(axis=1), y2x_sim.mean(axis=1)
    fwd_scores = laser_score_candidates(x, y, x2y_ind, x2y_mean, y2x_mean)
    bwd_scores = laser_score_candidates(y, x, y2x_ind, y2x_mean, x2y_mean)
    fwd_best = x2y_ind[np.arange(x.shape[0]), fwd_scores.argmax(axis=1)]
    bwd_best = y2x_ind[np.arange(y.shape[0]), bwd_scores.argmax(axis=1)]
    indices = np.stack(
        (
            np.concatenate((np.arange(x.shape[0]), bwd_best)),
            np.concatenate((fwd_best, np.arange(y.shape[0]))),
        ),
        axis=1,
    )
    scores = np.concatenate((fwd_scores.max(axis=1), bwd_scores.max(axis=1)))
    seen_src, seen_trg, out = set(), set(), []
    for i in np.argsort(-scores, kind="stable"):
        src_ind, trg_ind = indices[i]
        if src_ind not in seen_src and trg_ind not in seen_trg:
            seen_src.add(src_ind)
            seen_trg.add(trg_ind)
            out.append((scores[i], int(src_ind), int(trg_ind)))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=30_000, help="sentences per side")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--json", default=None, help="also write the table as JSON (bench/make_report.py)"
    )
    args = ap.parse_args()

    x, y = make_data(args.n, args.dim, args.seed)
    mine(x[:500], y[:500], k=args.k)  # warm-up: imports, BLAS and OpenMP threads

    t0 = time.perf_counter()
    x2y = laser_knn(x, y, min(len(y), args.k))
    y2x = laser_knn(y, x, min(len(x), args.k))
    t1 = time.perf_counter()
    ref = laser_max(x2y, y2x, x, y)
    t2 = time.perf_counter()
    laser_knn_s, laser_post_s = t1 - t0, t2 - t1

    t0 = time.perf_counter()
    got = mine(x, y, k=args.k, margin="ratio", retrieval="max", device="cpu")
    emmax_total_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    post = mine_from_neighbours(x2y, y2x, margin="ratio", retrieval="max")
    emmax_post_s = time.perf_counter() - t0

    ref_scores = {(i, j): s for s, i, j in ref}
    got_pairs = list(zip(got.src_idx.tolist(), got.tgt_idx.tolist(), strict=True))
    post_pairs = list(zip(post.src_idx.tolist(), post.tgt_idx.tolist(), strict=True))
    identical = (
        len(got_pairs) == len(ref_scores)
        and set(got_pairs) == set(ref_scores) == set(post_pairs)
        and np.allclose(got.score, [ref_scores[p] for p in got_pairs], atol=1e-6)
        and np.allclose(got.score, post.score, atol=1e-6)  # the same order, up to 1 ulp ties
    )
    true_pairs = int((got.src_idx == got.tgt_idx).sum())
    load = "/".join(f"{v:.2f}" for v in os.getloadavg())

    print(
        f"# bench_mine: n={args.n} x {args.n}, dim={args.dim}, k={args.k}, ratio margin, "
        f"max retrieval, seed={args.seed}"
    )
    print(
        f"# device: {cpu_name()}, {faiss.omp_get_max_threads()} threads (CPU); "
        f"numpy {np.__version__}, faiss {faiss.__version__}, git {git_commit()}"
    )
    print(f"# load average (1/5/15 min) after the runs: {load}")
    print()
    print("| implementation | kNN both ways (s) | margins + retrieval (s) | total (s) | pairs |")
    print("| --- | ---: | ---: | ---: | ---: |")
    print(
        f"| LASER mine_bitexts.py loops | {laser_knn_s:.2f} | {laser_post_s:.3f} | "
        f"{laser_knn_s + laser_post_s:.2f} | {len(ref_scores)} |"
    )
    print(
        f"| emmax mine() | {emmax_total_s - emmax_post_s:.2f} | {emmax_post_s:.3f} | "
        f"{emmax_total_s:.2f} | {len(got_pairs)} |"
    )
    print()
    print(
        f"speedup, total: {(laser_knn_s + laser_post_s) / emmax_total_s:.2f}x; "
        f"margins + retrieval: {laser_post_s / emmax_post_s:.0f}x"
    )
    print(
        f"identical pairs: {'yes' if identical else 'NO'} "
        f"({true_pairs} of {len(got_pairs)} mined pairs are planted true pairs; "
        f"LASER: {len(ref_scores)} pairs)"
    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of the process: {peak:.0f} MiB")
    if args.json:
        import json as _json

        laser_total = laser_knn_s + laser_post_s
        Path(args.json).write_text(
            _json.dumps(
                {
                    "title": (
                        f"Mining {args.n:,} x {args.n:,} (dim {args.dim}, k={args.k}, "
                        "ratio margin, max retrieval)"
                    ),
                    "machine": machine(),
                    "columns": [
                        "implementation",
                        "kNN both ways (s)",
                        "margins + retrieval (s)",
                        "total (s)",
                        "pairs",
                    ],
                    "rows": [
                        [
                            "LASER mine_bitexts.py loops",
                            f"{laser_knn_s:.2f}",
                            f"{laser_post_s:.3f}",
                            f"{laser_total:.2f}",
                            len(ref_scores),
                        ],
                        [
                            "emmax mine()",
                            f"{emmax_total_s - emmax_post_s:.2f}",
                            f"{emmax_post_s:.3f}",
                            f"{emmax_total_s:.2f}",
                            len(got_pairs),
                        ],
                    ],
                    "notes": (
                        f"Speedup: margins + retrieval {laser_post_s / emmax_post_s:.0f}x, total "
                        f"{laser_total / emmax_total_s:.2f}x (LASER: two exact FAISS kNN "
                        "passes; emmax: one exact pass for both directions, knn_both). "
                        f"Identical pairs: {'yes' if identical else 'NO'}. Peak RSS {peak:.0f} "
                        f"MiB. Load average after the runs: {load}."
                    ),
                },
                indent=1,
            )
        )
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
