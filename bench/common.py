"""Shared bits of the bench scripts: machine description and the JSON result convention
(``{"title", "machine", "columns", "rows", "notes"}``, rendered by bench/make_report.py)."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def cpu_name() -> str:
    """The CPU model name, with the SIMD features emmax detects (``device.cpu_summary``)."""
    try:
        from emmax_cli.device import cpu_summary

        return cpu_summary()
    except ImportError:
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def git_commit() -> str:
    """The short commit of the checkout, with ``+dirty`` for uncommitted changes."""
    import subprocess

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=REPO,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            cwd=REPO,
        ).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "uncommitted"


def machine() -> str:
    """One line for table headers: CPU, threads, torch, GPU, Python and git commit."""
    cpu = cpu_name()
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{cpu}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"{gpu}, Python {platform.python_version()}, git {git_commit()}"
    )


def print_table(
    title: str, columns: list[str], rows: list[list], notes: str = "", json_path: str | None = None
) -> None:
    """Print a Markdown table under a title and the machine line; optionally save it as JSON."""
    widths = [max(len(str(c)), *(len(str(r[i])) for r in rows)) for i, c in enumerate(columns)]
    print(f"## {title}\n{machine()}\n")
    print("| " + " | ".join(str(c).ljust(w) for c, w in zip(columns, widths, strict=False)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(str(x).ljust(w) for x, w in zip(r, widths, strict=False)) + " |")
    if notes:
        print(f"\n{notes}")
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(
            json.dumps(
                {
                    "title": title,
                    "machine": machine(),
                    "columns": columns,
                    "rows": rows,
                    "notes": notes,
                },
                indent=1,
                ensure_ascii=False,
            )
        )
