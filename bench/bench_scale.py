"""Measure the per-unit costs behind docs/scale.md, and project them to 10M, 100M and 1B
sentences per language.

    python bench/bench_scale.py --json bench/results/scale.json

Units, each measured here on one CPU thread unless said otherwise:

* embed: sentences/s of emmax-small (fp32 or what ``--precision auto`` picks) on FLORES-200
  devtest sentences (news/wiki, 8 languages x 250), through ``embed_shard`` as a Ray worker
  runs it, and Ray's fixed costs: starting a local instance, a worker loading the model.
* disk: bytes per row of an embedding Parquet shard (float32 and float16, with text).
* index (IVF-PQ as ``emmax index`` picks for large sides, OPQ64 + PQ64 codes): k-means
  training cost per (sample vector x list), add cost per (vector x list) for the coarse
  assignment plus PQ encoding, search cost per query split into the coarse part
  (x lists) and the scan part (x probed vectors), fitted on two list counts. Vectors:
  synthetic clustered unit vectors of dim 384 (the cost depends on shape, not content).
* exact k-NN: seconds per query x database pair of the one-pass exact search.

Projection: per language, with W CPU workers (1 thread each) and the stopes list counts
(``index.choose_factory``). Both sides of a mining job have N sentences; mining searches
2N queries. GPU units are not measured unless a GPU is present.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, print_table  # noqa: E402

FLORES = SHARED / "flores200" / "devtest"
LANGS = ("eng", "deu", "fra", "rus", "cmn", "ara", "hin", "swh")


def clustered(n: int, d: int = 384, centres: int = 2000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, d)).astype(np.float32)
    x = c[rng.integers(0, centres, n)] + 0.6 * rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def say(unit: str, value) -> None:
    """Print a unit as soon as it is measured (a long run that dies keeps what it had)."""
    print(
        f"# {unit}: {value:.4g}" if isinstance(value, float) else f"# {unit}: {value}", flush=True
    )


def timed(f):
    t = time.perf_counter()
    out = f()
    return time.perf_counter() - t, out


def embed_units(per_lang: int) -> dict:
    import torch

    from emmax_cli.embed_shards import embed_shard
    from emmax_cli.models.encoder import Encoder

    torch.set_num_threads(1)
    lines = []
    for lang in LANGS:
        lines += (FLORES / f"{lang}.txt").read_text(encoding="utf-8").splitlines()[:per_lang]
    load_s, enc = timed(lambda: Encoder.load(None, device="cpu", precision="auto"))
    with tempfile.TemporaryDirectory() as d:
        inp = Path(d) / "in.txt"
        inp.write_text("\n".join(lines) + "\n", encoding="utf-8")
        opts = dict(
            lang=None,
            with_text=True,
            on_bad_line="error",
            encoding="utf-8",
            chunk_lines=16_384,
            batch_tokens=8192,
        )
        enc.encode(lines[:64])  # warm-up
        shard = {
            "name": "p.parquet",
            "input": 0,
            "start_line": 0,
            "end_line": None,
            "start_byte": None,
        }
        secs, entry = timed(
            lambda: embed_shard(enc, str(inp), shard, Path(d), {**opts, "dtype": "float32"})
        )
        f16 = embed_shard(
            enc, str(inp), {**shard, "name": "h.parquet"}, Path(d), {**opts, "dtype": "float16"}
        )
    n = len(lines)
    say("embed sentences/s, 1 thread", n / secs)
    import resource

    return {
        "embed_worker_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "precision": enc.precision,
        "sentences": n,
        "embed_sps_1thread": n / secs,
        "model_load_s": load_s,
        "bytes_per_row_f32": entry["bytes"] / n,
        "bytes_per_row_f16": f16["bytes"] / n,
    }


def ray_units() -> dict:
    import ray

    t, _ = timed(lambda: ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False))

    @ray.remote
    def nothing(i):
        return i

    ray.get([nothing.remote(i) for i in range(4)])
    t_task, _ = timed(lambda: ray.get([nothing.remote(i) for i in range(200)]))
    ray.shutdown()
    return {"ray_init_s": t, "ray_task_overhead_s": t_task / 200}


def index_units(n: int, sample: int = 8192, nlists=(64, 256)) -> dict:
    import faiss

    from emmax_cli.index_meta import new_index

    faiss.omp_set_num_threads(1)
    x = clustered(n)
    q = clustered(1000, seed=1)
    out, fits, t_train, t_add = {}, [], {}, {}
    for nlist in nlists:
        idx = new_index(f"IVF{nlist},PQ64", x.shape[1])  # as `emmax index` builds it
        t_train[nlist], _ = timed(lambda idx=idx: idx.train(x[:sample]))
        t_add[nlist], _ = timed(lambda idx=idx: idx.add(x))
        ivf = faiss.extract_index_ivf(idx)
        for nprobe in (4, 32):
            ivf.nprobe = nprobe
            t_s, _ = timed(lambda idx=idx: idx.search(q, 4))
            fits.append((nlist, nprobe * n / nlist, t_s / len(q)))
        out[f"train_s_nlist{nlist}"] = t_train[nlist]
        say(f"IVF{nlist},PQ64", out[f"train_s_nlist{nlist}"])
    a, b = nlists
    # train = PQ (fixed for a sample size; faiss caps it at 65536 points) + k-means
    # (x sample x lists); add per vector = encode + coarse assignment (x lists)
    out["train_per_vec_list"] = (t_train[b] - t_train[a]) / (sample * (b - a))
    out["train_pq_s"] = t_train[a] - out["train_per_vec_list"] * sample * a
    out["train_sample"] = sample
    out["add_per_list"] = (t_add[b] - t_add[a]) / n / (b - a)
    out["add_fixed"] = t_add[a] / n - a * out["add_per_list"]
    # search time per query = coarse (x lists) + scan (x probed vectors) + fixed, least squares
    m = np.array([[r[0], r[1], 1.0] for r in fits])
    coef = np.linalg.lstsq(m, np.array([r[2] for r in fits]), rcond=None)[0]
    out["search_per_list"], out["search_per_scanned"], out["search_fixed"] = map(float, coef)
    # the OPQ64 rotation `emmax index` puts in front: trained once, on at most 65536 points
    opq = faiss.OPQMatrix(x.shape[1], 64)
    opq.niter = 10
    t_opq, _ = timed(lambda: opq.train(x[:2048]))
    out["opq_train_s_per_point_iter"] = t_opq / 2048 / opq.niter  # emmax trains 50 iterations
    for k in ("add_fixed", "add_per_list", "search_per_list", "search_per_scanned"):
        say(k, out[k])
    return out


def knn_units(n: int) -> dict:
    from threadpoolctl import threadpool_limits

    from emmax_cli.knn_both import knn_both

    x, y = clustered(n), clustered(n, seed=2)
    with threadpool_limits(limits=1):
        t, _ = timed(lambda: knn_both(x, y, 4))
    return {"exact_pair_s": t / (n * n)}


def project(u: dict, sizes=(10**7, 10**8, 10**9), workers=(16, 64, 256)) -> list[list]:
    """Per language side of N sentences, W workers of one thread. The parts that grow with
    the number of IVF lists (k-means, coarse assignment, coarse search) are GEMMs at scale:
    their flops over the measured one-thread GEMM rate of the exact search; the per-vector
    parts (PQ encoding, scanning codes) and the PQ/OPQ training are the measured units."""
    from emmax_cli.index import choose_factory

    d = 384
    gemm = 2 * d / u["exact_pair_s"]  # flop/s of one thread (X·Yᵀ)
    rows = []
    for n, w in zip(sizes, workers, strict=True):
        factory = choose_factory(n, d)
        nlist = int(factory.split("IVF")[1].split(",")[0])
        train_n = min(n, 40_000_000, 256 * max(nlist, 256))
        per_point = u["train_pq_s"] / u["train_sample"] + 50 * u["opq_train_s_per_point_iter"]
        kmeans_s = 25 * train_n * nlist * 2 * d / gemm  # faiss: 25 iterations
        train_h = (per_point * 65_536 + kmeans_s) / 3600  # one thread
        add_h = n * (u["add_fixed"] + nlist * 2 * d / gemm) / 3600 / w
        scanned = 128 * n / nlist  # nprobe 128, the emmax default
        q_s = u["search_fixed"] + nlist * 2 * d / gemm + scanned * u["search_per_scanned"]
        mine_h = 2 * n * q_s / 3600 / w
        rows.append(
            [
                f"{n:.0e}",
                w,
                f"{n / u['embed_sps_1thread'] / w / 3600:.1f}",
                f"{n * u['bytes_per_row_f32'] / 1e9:.0f} / {n * u['bytes_per_row_f16'] / 1e9:.0f}",
                factory,
                f"{train_h:.0f} ({train_h / 16:.1f} on 16)",
                f"{add_h:.1f}",
                f"{n * (64 + 8) / 1e9:.1f} + quantizer {nlist * d * 4 / 1e6:.0f} MB",
                f"{mine_h:.1f}",
                f"{n * d * 4 * 2 / 1e9:.0f}",
                f"{n * n * u['exact_pair_s'] / 86400 / w:.1f}",
            ]
        )
    return rows


COLUMNS = [
    "sentences / language",
    "workers",
    "embed h",
    "shards GB f32 / f16",
    "index type",
    "train h, 1 thread (16 threads)",
    "add h",
    "index GB on disk",
    "mine h (IVF, nprobe 128)",
    "mine driver GB (both sides)",
    "exact mine days",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--per-lang", type=int, default=250, help="FLORES sentences per language")
    ap.add_argument("--index-rows", type=int, default=30_000)
    ap.add_argument("--knn-rows", type=int, default=8000)
    ap.add_argument("--units", default=None, help="write (or with --project-only, read) units")
    ap.add_argument("--project-only", action="store_true", help="project from --units")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if a.project_only:
        u = {r[0]: r[1] for r in json.loads(Path(a.units).read_text())["rows"]}
    else:
        u = {**embed_units(a.per_lang), **index_units(a.index_rows), **knn_units(a.knn_rows)}
        try:
            u.update(ray_units())
        except ImportError:
            pass
        units = [[k, round(v, 12) if isinstance(v, float) else v] for k, v in u.items()]
        print_table("Scale units (one thread)", ["unit", "value"], units, json_path=a.units)
        print()
    print_table(
        "Projected cost per language, CPU workers of one thread",
        COLUMNS,
        project(u),
        notes="From bench/results/scale_units.json (bench/bench_scale.py). Hours are wall "
        "time with the given workers; train is one k-means (one machine). GPU units: not "
        "measured (no GPU in the measuring session).",
        json_path=a.json,
    )


if __name__ == "__main__":
    main()
