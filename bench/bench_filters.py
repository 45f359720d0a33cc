"""The cost of `emmax mine`'s filters (rank, copy, length, language ID, repeats, duplicates)
against margin-only mining, on the same embedded inputs.

    python bench/bench_filters.py --n 20000 --json bench/results/filters.json

Inputs: the first N lines of ``train/wmt/deu-eng.tsv`` (real German and English text, so the
text filters see real lengths and scripts), with random unit vectors as embeddings (each
English row a noisy copy of its German row, so that the pairs pass the rank filter and every
later filter sees them) so that the run does not depend on the encoder's speed: mining starts
from embedding Parquet files, as it does after ``emmax embed``, the case where the filters
weigh most. Every source gets a
candidate (``--no-threshold``), so every filter runs on N pairs. Median of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).parent))
from common import SHARED, print_table  # noqa: E402

# synthetic near-copies have margins far above real ones: without the cap every pair reaches
# the text filters, whose cost is measured
NO_CAP = {"margin_cap": None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from emmax_cli.bitext import mine_files
    from emmax_cli.io.parquet import EmbeddingWriter
    from emmax_cli.models.loading import resolve

    rows = (SHARED / "train" / "wmt" / "deu-eng.tsv").read_text("utf-8").splitlines()[: args.n]
    de, en = zip(*(r.split("\t") for r in rows), strict=True)
    rng = np.random.default_rng(0)
    checksum = resolve(None, verify=False).config.checksum
    configs = {
        "margin only (--no-filters)": {"filters": None, "min_rank": None},
        "+ rank filter": {"filters": None, "min_rank": "auto"},
        "+ all filters, no language ID": {"min_rank": "auto", "filters": NO_CAP},
        "+ all filters and language ID (default with --src/--tgt)": {
            "min_rank": "auto",
            "filters": NO_CAP,
            "src_lang": "deu",
            "tgt_lang": "eng",
        },
    }
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        x = rng.standard_normal((len(de), 384), dtype=np.float32)
        y = x + 0.2 * rng.standard_normal(x.shape, dtype=np.float32)  # aligned rows: close
        for name, texts, v in (("de", de, x), ("en", en, y)):
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            p = Path(tmp) / f"{name}.parquet"
            with EmbeddingWriter(p, 384, meta={"model_checksum": checksum}) as w:
                w.write(np.arange(len(texts)), v, list(texts))
            paths.append(p)
        mine_files(*paths, threshold=float("-inf"), min_rank="auto")  # warm-up: imports, model
        table, base = [], None
        for label, kw in configs.items():
            times = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                res = mine_files(*paths, threshold=float("-inf"), **kw)
                times.append(time.perf_counter() - t0)
            secs = statistics.median(times)
            base = base or secs
            sps = 2 * len(de) / secs
            table.append(
                [label, f"{secs:.2f}", f"{sps:,.0f}", f"{base / secs:.2f}", len(res.pairs.score)]
            )
            print(table[-1], file=sys.stderr)
    print_table(
        f"Filter cost: mining {len(de):,} x {len(en):,} embedded sentences (WMT deu-eng text)",
        ["configuration", "seconds", "sentences/s", "throughput vs margin only", "pairs kept"],
        table,
        "Random embeddings, real text; every source has a candidate (no threshold), and the "
        "margin cap is off (the synthetic pairs' margins are far above real ones), so every "
        "filter sees every pair. "
        "End to end from text, embedding dominates (see bench_embed.py), so the filters' share "
        "of a real run is smaller than here.",
        args.json,
    )


if __name__ == "__main__":
    main()
