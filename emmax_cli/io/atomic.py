"""Atomic file outputs: write to a temporary file beside the target, rename on success."""
from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..errors import InputError


def check_output(path: str | os.PathLike, force: bool = False) -> Path:
    """Refuse to overwrite an existing output unless ``force``; make sure its folder exists."""
    p = Path(path)
    if p.exists() and not force:
        raise InputError(f"{p}: output already exists", hint="pass --force to replace it")
    if not p.parent.exists():
        raise InputError(f"{p.parent}: output folder does not exist", hint="create it first")
    return p


@contextmanager
def atomic_output(path: str | os.PathLike, suffix: str = ".tmp", keep_tmp: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path``.

    On any error or KeyboardInterrupt the temporary file (or folder) is removed, unless
    ``keep_tmp`` (used by ``--resume`` to continue from a partial temporary file)."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}{suffix}")
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        if not keep_tmp:
            remove_path(tmp)
        raise


def remove_path(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        try:
            p.unlink()
        except FileNotFoundError:
            pass
