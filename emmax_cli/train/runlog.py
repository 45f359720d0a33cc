"""``<out>/train_log.jsonl``: one JSON object per logged step (``phase``, ``step``, losses, lr,
...), appended by rank zero.

A resumed run continues from a checkpoint that may be older than the last logged step (a run
killed between checkpoints logged steps that it then redoes), so ``--resume`` first cuts the
log back to the checkpoint with ``truncate_log``: every (phase, step) appears once, and the log
of an interrupted and resumed run equals that of an uninterrupted one."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from ..io.atomic import atomic_output
from .config import PHASES

log = logging.getLogger(__name__)

LOG_FILE = "train_log.jsonl"


def log_path(out: str | os.PathLike) -> Path:
    """The log file of a run.

    Args:
        out: the run folder (``run.out``).

    Returns:
        ``<out>/train_log.jsonl``.
    """
    return Path(out) / LOG_FILE


def append_record(out: str | os.PathLike, rec: dict[str, Any]) -> None:
    """Append one record as a JSON line (creating the run folder if needed).

    Args:
        out: the run folder.
        rec: a JSON-serialisable record with ``phase`` and ``step``.
    """
    Path(out).mkdir(parents=True, exist_ok=True)
    with open(log_path(out), "a", encoding="utf-8") as f:
        f.write(json.dumps(rec) + "\n")


def read_log(out: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a run's log; a torn last line (a killed write) is skipped.

    Args:
        out: the run folder.

    Returns:
        The records in file order; an empty list if there is no log.
    """
    p = log_path(out)
    if not p.exists():
        return []
    recs = []
    for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            log.warning("%s line %d: not JSON (an interrupted write), dropped", p, i)
            continue
        if isinstance(rec, dict):
            recs.append(rec)
    return recs


def truncate_log(out: str | os.PathLike, phase: str, step: int) -> int:
    """Cut the log back to a checkpoint: keep the records of earlier phases and those of
    ``phase`` with step <= ``step``; drop the rest (later steps, later phases).

    The file is rewritten atomically, and only if something is dropped.

    Args:
        out: the run folder.
        phase: the checkpoint's phase.
        step: the checkpoint's step.

    Returns:
        The number of records dropped.
    """
    p = log_path(out)
    if not p.exists():
        return 0
    lines = p.read_text(encoding="utf-8").splitlines()
    keep = [line for line in lines if _before(line, phase, step)]
    if len(keep) == len(lines):
        return 0
    with atomic_output(p) as tmp:
        tmp.write_text("".join(line + "\n" for line in keep), encoding="utf-8")
    dropped = len(lines) - len(keep)
    log.info("%s: dropped %d record(s) after %s step %d (resume)", p, dropped, phase, step)
    return dropped


def _before(line: str, phase: str, step: int) -> bool:
    """True if a log line belongs before the checkpoint (phase, step)."""
    try:
        rec = json.loads(line)
        rank, at = PHASES.index(rec["phase"]), PHASES.index(phase)
        return rank < at or (rank == at and int(rec["step"]) <= step)
    except (ValueError, KeyError, TypeError):
        return False  # a torn or foreign line: dropped
