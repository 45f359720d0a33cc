"""stderr console, progress reporting and logging setup. Library code never prints: it logs,
and reports progress through an optional callable ``progress(n)``."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

Progress = Callable[[int], None]


def null_progress(n: int = 1) -> None:  # same interface as a real progress callback
    return None


def get_console():
    from rich.console import Console

    return Console(stderr=True)


def setup_logging(verbose: bool = False, quiet: bool = False) -> None:
    """Configure the root logger to write to stderr (CLI only; the library never calls this)."""
    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    from rich.logging import RichHandler

    handler = RichHandler(console=get_console(), show_path=False, show_time=False)
    logging.basicConfig(level=level, format="%(message)s", handlers=[handler], force=True)
    for noisy in ("transformers", "faiss", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


@contextmanager
def progress_bar(
    description: str, total: int | None = None, unit: str = "sent", enabled: bool = True
) -> Iterator[Progress]:
    """A rich progress bar on stderr showing items/s; yields ``advance(n)``.

    Disabled (a no-op callable) when ``enabled`` is false or stderr is not a terminal."""
    if not enabled or not sys.stderr.isatty():
        yield null_progress
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.progress import (
        Progress as RichProgress,
    )

    cols = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    with RichProgress(*cols, console=get_console(), transient=False) as bar:
        task = bar.add_task(description, total=total, rate="")
        import time

        t0 = time.perf_counter()
        done = 0

        def advance(n: int = 1) -> None:
            nonlocal done
            done += n
            dt = max(time.perf_counter() - t0, 1e-9)
            bar.update(task, advance=n, rate=f"{done / dt:,.0f} {unit}/s")

        yield advance
