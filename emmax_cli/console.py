"""stderr console, progress reporting and logging setup. Library code never prints: it logs,
and reports progress through an optional callable ``progress(n)`` (low-level functions) or an
optional factory ``progress(description, total)`` (the file-level entry points behind the
commands: a context manager per stage, yielding its ``advance(n)``)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

Progress = Callable[[int], None]
ProgressFactory = Callable[[str, "int | None"], AbstractContextManager[Progress]]


def null_progress(n: int = 1) -> None:  # same interface as a real progress callback
    """A progress callback that does nothing."""
    return None


@contextmanager
def no_progress(description: str = "", total: int | None = None, **_: object) -> Iterator[Progress]:
    """A progress factory that shows nothing (the default of every entry point)."""
    yield null_progress


def get_console():
    """A rich console on stderr (stdout is for results)."""
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


@contextmanager
def step_progress(enabled: bool = True) -> Iterator[Callable | None]:
    """A rich progress bar per training phase on stderr; yields ``on_step(phase, step, total,
    record)`` for ``train()``, or None when disabled or stderr is not a terminal."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
    from rich.progress import Progress as RichProgress

    tasks: dict[str, int] = {}
    cols = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeRemainingColumn(),
    ]
    with RichProgress(*cols, console=get_console()) as bar:

        def on_step(phase: str, step: int, total: int, rec: dict) -> None:
            if phase not in tasks:
                tasks[phase] = bar.add_task(f"train {phase}", total=total, info="")
            shown = ("loss", "dev_acc", "agreement")
            info = " ".join(f"{k} {rec[k]:.3f}" for k in shown if isinstance(rec.get(k), float))
            bar.update(tasks[phase], completed=step, info=info)

        yield on_step
