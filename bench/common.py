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
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def git_commit() -> str:
    import subprocess

    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=REPO,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "uncommitted"


def machine() -> str:
    cpu = cpu_name()
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{cpu}, {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"{gpu}, Python {platform.python_version()}"
    )


def print_table(
    title: str, columns: list[str], rows: list[list], notes: str = "", json_path: str | None = None
) -> None:
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
