"""Every result emmax writes as text or as a table (mined pairs: ``io/pairs.py``).

* semantic ranks (``emmax rank``): TSV, JSON lines, or Parquet (``RankParquetWriter``);
* the plain aligned tables of ``emmax eval`` and the TSV of ``emmax calibrate``.

Functions return strings or write to a stream that the caller opens (stdout or an atomic
temporary file); nothing here prints or knows about the command line. Results are duck-typed
(a ``MineResult``, a ``RankedChunk``, an eval result), so this module imports no model code."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from typing import IO, Any

import numpy as np

__all__ = [
    "pct",
    "format_table",
    "format_json",
    "tatoeba_table",
    "bucc_table",
    "xsim_table",
    "geometry_table",
    "calibration_tsv",
    "tsv_header",
    "format_tsv",
    "format_jsonl",
    "write_text",
    "RankParquetWriter",
]


# ---- plain tables ---------------------------------------------------------------------------
def pct(x: float | None) -> str:
    """A fraction as a percentage with two decimals; ``-`` for None."""
    return "-" if x is None else f"{100 * x:.2f}"


def format_table(
    title: str,
    header: Sequence[str],
    rows: Sequence[Sequence[Any]],
    note: str | None = None,
    left: int = 1,
) -> str:
    """Plain aligned text: a title line, the header, a rule, the rows and an optional note.

    Args:
        title: first line.
        header: column names.
        rows: cells (anything ``str()`` can render; None becomes an empty cell).
        note: last line, if any.
        left: the first ``left`` columns are left-aligned, the rest right-aligned.

    Returns:
        The table, one ``\\n``-terminated line per row.
    """
    cells = [[str(h) for h in header]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def line(r: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i < left else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )

    out = [title, line(cells[0]), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells[1:]]
    if note:
        out.append(note)
    return "\n".join(out) + "\n"


def format_json(d: Any) -> str:
    """Indented JSON (UTF-8 kept as is; numpy scalars as floats), newline-terminated."""
    return json.dumps(d, indent=1, ensure_ascii=False, default=float) + "\n"


def _model_name(res: Any) -> str:
    return str((getattr(res, "model", None) or {}).get("model", "?"))


def tatoeba_table(res: Any) -> str:
    """The table of ``emmax eval tatoeba`` for a ``TatoebaResult``."""
    rows = [
        [r.lang, r.n, pct(r.xx2eng), pct(r.eng2xx), pct(r.mean)]
        + [pct(r.xx2eng_text), pct(r.eng2xx_text)]
        for r in res.languages
    ]
    for key, av in res.averages.items():
        if key == "all" and "xtreme36" in res.averages and av["n_langs"] == 36:
            continue  # the same 36 languages as the XTREME-36 row
        rows.append(
            [av["label"].split(" (")[0] + " avg", av["n_langs"]]
            + [pct(av[c]) for c in ("xx2eng", "eng2xx", "mean", "xx2eng_text", "eng2xx_text")]
        )
    retrieval = res.to_dict()["retrieval"]
    return format_table(
        f"Tatoeba accuracy (%), {_model_name(res)}, {retrieval} retrieval, exact search",
        ["lang", "n", "xx->eng", "eng->xx", "mean", "xx->eng(text)", "eng->xx(text)"],
        rows,
        note="averages: unweighted means over languages; (text): a retrieval is correct if "
        "its text equals the gold text",
    )


def bucc_table(res: Any) -> str:
    """The table of ``emmax eval bucc`` for a ``BuccResult``."""
    rows = [
        [p.pair, f"{p.threshold:.4f}", pct(p.tune_f1), pct(p.precision), pct(p.recall)]
        + [pct(p.f1), p.n_pred, "-" if p.n_gold is None else p.n_gold]
        for p in res.pairs
    ]
    if res.average_f1 is not None and len(res.pairs) > 1:
        rows.append(["average", "", "", "", "", pct(res.average_f1), "", ""])
    splits = ", ".join(sorted({f"{p.tune_split} -> {p.test_split}" for p in res.pairs}))
    return format_table(
        f"BUCC 2018 (%), {_model_name(res)}, threshold tuned -> scored: {splits}",
        ["pair", "threshold", "tune F1", "P", "R", "F1", "extracted", "gold"],
        rows,
    )


def xsim_table(res: Any) -> str:
    """The error matrix of ``emmax eval xsim`` for an ``XsimResult`` (rows: source)."""
    rows = [
        [a]
        + ["-" if v is None else f"{v:.1f}" for v in res.matrix[i]]
        + [f"{res.per_lang[a]['as_source']:.2f}"]
        for i, a in enumerate(res.langs)
    ]
    k = "" if res.margin is None else f", k={res.k}"
    n_dir = len(res.langs) * (len(res.langs) - 1)
    return format_table(
        f"xsim error (%), {_model_name(res)}, {res.margin or 'cosine'} margin{k}, n={res.n}, "
        "index-based",
        ["src\\tgt", *res.langs, "avg"],
        rows,
        note=f"average over {n_dir} directions: {res.average:.2f} "
        f"(text-based {res.average_text:.2f})",
    )


def geometry_table(res: Any) -> str:
    """The table of ``emmax eval geometry`` for a ``GeometryResult``."""
    iv, cf, iso = res.invariance, res.canonical, res.isotropy
    pr = cf["lang_probe"]
    rows = [
        ["invariance", "mean cosine of translations", f"{iv['translation_cosine']:.4f}", "higher"],
        [
            "invariance",
            "mean cosine, random cross-lingual pairs",
            f"{iv['random_crosslingual_cosine']:.4f}",
            "",
        ],
        ["invariance", "gap (translations - random)", f"{iv['gap']:.4f}", "higher"],
        ["invariance", f"xsim error, {iv['xsim_margin']} (%)", f"{iv['xsim_error']:.2f}", "lower"],
        [
            "canonical",
            f"language-ID probe accuracy (chance {pr['chance']:.3f})",
            f"{pr['test_accuracy']:.4f}",
            "lower",
        ],
        ["canonical", "Calinski-Harabasz, by meaning", f"{cf['ch_by_meaning']:.2f}", "higher"],
        ["canonical", "Calinski-Harabasz, by language", f"{cf['ch_by_language']:.2f}", "lower"],
        [
            "isotropy",
            "partition ratio min Z(u)/max Z(u), u: eig(VtV)",
            f"{iso['partition_ratio']:.4g}",
            "closer to 1",
        ],
        [
            "isotropy",
            "partition ratio, u: eig(covariance)",
            f"{iso['partition_ratio_cov']:.4g}",
            "closer to 1",
        ],
        [
            "isotropy",
            "mean cosine, random pairs",
            f"{iso['random_pair_cosine']:.4f}",
            "closer to 0",
        ],
    ]
    return format_table(
        f"Geometry, {_model_name(res)}, {len(res.langs)} languages x {res.n} sentences",
        ["property", "metric", "value", "better"],
        rows,
        note="definitions: docs/eval.md",
        left=2,
    )


def calibration_tsv(cal: Any) -> str:
    """``threshold precision recall f1 n_gold``: a header line and one row (``emmax calibrate``)."""
    return (
        "threshold\tprecision\trecall\tf1\tn_gold\n"
        f"{cal.threshold:.4f}\t{cal.precision:.4f}\t{cal.recall:.4f}\t{cal.f1:.4f}\t{cal.n_gold}\n"
    )


# ---- semantic ranks -------------------------------------------------------------------------
def tsv_header(num_ranks: int) -> str:
    """``rank<TAB>p0 ... p{N-1}<TAB>cosine`` header line."""
    return "\t".join(["rank", *(f"p{c}" for c in range(num_ranks)), "cosine"]) + "\n"


def format_tsv(chunk: Any) -> str:
    """``rank<TAB>p0 ... p{N-1}<TAB>cosine`` lines of a ``RankedChunk`` (4 decimals)."""
    cols = (
        [chunk.rank.astype(str)]
        + [np.char.mod("%.4f", p) for p in chunk.probs.T]
        + [np.char.mod("%.4f", chunk.cosine)]
    )
    return "".join("\t".join(row) + "\n" for row in zip(*cols, strict=True))


def format_jsonl(chunk: Any) -> str:
    """One JSON object per pair of a ``RankedChunk``: ``{"rank", "probs", "cosine"}``."""
    probs = np.round(chunk.probs.astype(np.float64), 6).tolist()
    cos = np.round(chunk.cosine.astype(np.float64), 6).tolist()
    return "".join(
        json.dumps({"rank": r, "probs": p, "cosine": c}) + "\n"
        for r, p, c in zip(chunk.rank.tolist(), probs, cos, strict=True)
    )


def write_text(
    chunks: Iterable[Any], out: IO[str], fmt: str = "tsv", header_ranks: int | None = None
) -> int:
    """Write ranked chunks to a text stream as TSV or JSON lines.

    Args:
        chunks: ``RankedChunk`` objects, in output order.
        out: a text stream.
        fmt: ``tsv`` or ``jsonl``.
        header_ranks: write a TSV header line for that many ranks first.

    Returns:
        The number of pairs written.
    """
    n = 0
    if header_ranks and fmt == "tsv":
        out.write(tsv_header(header_ranks))
    for chunk in chunks:
        out.write(format_tsv(chunk) if fmt == "tsv" else format_jsonl(chunk))
        n += len(chunk)
    return n


class RankParquetWriter:
    """Parquet output of ``emmax rank``: ``id`` int64, ``rank`` int8, ``probs``
    fixed_size_list<float32>[N], ``cosine`` float32; one row group per chunk; the schema
    metadata (``emmax`` key) records the number of ranks and ``meta`` (model, rank names).

    Args:
        path: the file to write (the caller makes it atomic).
        num_ranks: N, the width of ``probs``.
        meta: extra JSON-serialisable metadata.
    """

    def __init__(self, path: str | os.PathLike, num_ranks: int, meta: dict | None = None):
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.num_ranks = num_ranks
        emmax = json.dumps({"num_ranks": num_ranks, **(meta or {})}, sort_keys=True)
        self.schema = pa.schema(
            [
                pa.field("id", pa.int64(), nullable=False),
                pa.field("rank", pa.int8(), nullable=False),
                pa.field("probs", pa.list_(pa.float32(), num_ranks), nullable=False),
                pa.field("cosine", pa.float32(), nullable=False),
            ],
            metadata={b"emmax": emmax.encode()},
        )
        self._writer = pq.ParquetWriter(str(path), self.schema, compression="zstd")

    def write(self, chunk: Any) -> None:
        """Append one ``RankedChunk`` as a row group."""
        import pyarrow as pa

        probs = pa.FixedSizeListArray.from_arrays(
            pa.array(chunk.probs.reshape(-1), pa.float32()), self.num_ranks
        )
        cols = [
            pa.array(chunk.ids, pa.int64()),
            pa.array(chunk.rank.astype(np.int8)),
            probs,
            pa.array(chunk.cosine, pa.float32()),
        ]
        self._writer.write_table(pa.Table.from_arrays(cols, schema=self.schema))

    def close(self) -> None:
        """Finish the file (its footer)."""
        self._writer.close()

    def __enter__(self) -> RankParquetWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
