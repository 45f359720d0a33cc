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
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, machine, print_table  # noqa: E402

FLORES = SHARED / "flores200" / "devtest"
LANGS = ("eng", "deu", "fra", "rus", "cmn", "ara", "hin", "swh")


def clustered(n: int, d: int = 384, centres: int = 2000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, d)).astype(np.float32)
    x = c[rng.integers(0, centres, n)] + 0.6 * rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def timed(f):
    t = time.perf_counter()
    out = f()
    return time.perf_counter() - t, out


def embed_units(per_lang: int) -> dict:
    import torch

    from emmax_cli.embed_shards import embed_shard
    from emmax_cli.models.encoder import Encoder
    from emmax_cli.shards import file_digest  # noqa: F401  (hashing is part of the cost)

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
    return {
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


def index_units(n: int, sample: int = 16_384, nlists=(128, 512)) -> dict:
    import faiss

    from emmax_cli.index_meta import new_index

    faiss.omp_set_num_threads(1)
    x = clustered(n)
    q = clustered(2000, seed=1)
    out, fits, t_train, t_add = {}, [], {}, {}
    for nlist in nlists:
        idx = new_index(f"OPQ64,IVF{nlist},PQ64", x.shape[1])  # as `emmax index` builds it
        t_train[nlist], _ = timed(lambda idx=idx: idx.train(x[:sample]))
        t_add[nlist], _ = timed(lambda idx=idx: idx.add(x))
        ivf = faiss.extract_index_ivf(idx)
        for nprobe in (8, 64):
            ivf.nprobe = nprobe
            t_s, _ = timed(lambda idx=idx: idx.search(q, 4))
            fits.append((nlist, nprobe * n / nlist, t_s / len(q)))
        out[f"train_s_nlist{nlist}"] = t_train[nlist]
    a, b = nlists
    # train = OPQ + PQ (fixed for a sample size; faiss caps PQ at 65536 points) + k-means
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
    return out


def knn_units(n: int) -> dict:
    from threadpoolctl import threadpool_limits

    from emmax_cli.knn_both import knn_both

    x, y = clustered(n), clustered(n, seed=2)
    with threadpool_limits(limits=1):
        t, _ = timed(lambda: knn_both(x, y, 4))
    return {"exact_pair_s": t / (n * n)}


def project(u: dict, sizes=(10**7, 10**8, 10**9), workers=(16, 64, 256)) -> list[list]:
    from emmax_cli.index import choose_factory

    rows = []
    for n, w in zip(sizes, workers, strict=True):
        factory = choose_factory(n, 384)
        nlist = int(factory.split("IVF")[1].split(",")[0])
        train_n = min(n, 40_000_000, 256 * max(nlist, 256))
        emb_h = n / u["embed_sps_1thread"] / w / 3600
        pq_s = u["train_pq_s"] * min(train_n, 65_536) / u["train_sample"]
        train_h = (pq_s + train_n * nlist * u["train_per_vec_list"]) / 3600  # 1 thread
        add_cpu_h = n * (u["add_fixed"] + nlist * u["add_per_list"]) / 3600
        scanned = 128 * n / nlist
        q_s = u["search_fixed"] + nlist * u["search_per_list"] + scanned * u["search_per_scanned"]
        mine_cpu_h = 2 * n * q_s / 3600
        disk_gb = n * u["bytes_per_row_f16"] / 1e9
        index_gb = n * (64 + 8) / 1e9
        quant_mb = nlist * 384 * 4 / 1e6
        exact_days = n * n * u["exact_pair_s"] / 86400 / w
        rows.append(
            [
                f"{n:.0e}",
                w,
                factory,
                f"{emb_h:.1f}",
                f"{disk_gb:.0f}",
                f"{train_h:.1f}",
                f"{add_cpu_h / w:.1f}",
                f"{index_gb:.0f} (RAM {quant_mb:.0f} MB)",
                f"{mine_cpu_h / w:.1f}",
                f"{exact_days:.0f}",
            ]
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--per-lang", type=int, default=250, help="FLORES sentences per language")
    ap.add_argument("--index-rows", type=int, default=50_000)
    ap.add_argument("--knn-rows", type=int, default=8000)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    u = {**embed_units(a.per_lang), **index_units(a.index_rows), **knn_units(a.knn_rows)}
    try:
        u.update(ray_units())
    except ImportError:
        pass
    units = [[k, f"{v:.4g}" if isinstance(v, float) else v] for k, v in u.items()]
    print_table("Measured units (1 thread)", ["unit", "value"], units)
    cols = [
        "sentences/lang",
        "CPU workers",
        "index",
        "embed h",
        "shards GB (fp16)",
        "train h (1 thread)",
        "add h",
        "index on disk GB",
        "mine h (2N queries)",
        "exact mine days",
    ]
    print()
    print_table(
        "Projected wall time per language (CPU workers of 1 thread)",
        cols,
        project(u),
        notes=f"units: {machine()}",
        json_path=a.json,
    )


if __name__ == "__main__":
    main()
