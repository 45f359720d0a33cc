"""Atomic outputs: every file or folder emmax writes appears whole or not at all.

``atomic_output(path)`` yields a temporary file beside the target and renames it over the target
on success; ``atomic_dir(path)`` does the same for a folder (models, checkpoints). On any error
or Ctrl-C the temporary is removed. Special targets behave as ``sort -o`` and ``tee`` users
expect: a symlink is followed (the file it points to is replaced, the link stays a link), a FIFO
or character device (``/dev/stdout``, ``/dev/null``, a named pipe) is written into directly, and
anything else that cannot be replaced safely (a folder, a block device, a socket) is refused."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import InputError


def real_target(path: str | os.PathLike) -> Path:
    """The path a write to ``path`` lands on: symlinks are followed (even dangling ones).

    A link that resolves to no path but opens all the same, as ``/dev/stdout`` does through
    ``/proc/self/fd/1`` when that is a pipe (``pipe:[123]``), is kept as it is."""
    p = Path(path)
    if not p.is_symlink():
        return p
    real = Path(os.path.realpath(p))
    return p if not real.exists() and p.exists() else real


def is_stream_target(path: str | os.PathLike) -> bool:
    """True if ``path`` (after links) is a FIFO or character device: written in place."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)


def check_output(path: str | os.PathLike, force: bool = False) -> Path:
    """Refuse to overwrite an existing output unless ``force``; make sure its folder exists.

    FIFOs and character devices are always accepted (nothing is overwritten); folders,
    block devices and sockets are refused.

    Raises:
        InputError: the output exists (without ``force``), cannot be replaced safely, or its
            folder does not exist.
    """
    p = Path(path)
    real = real_target(p)
    if is_stream_target(real):
        return p
    if real.exists():
        if real.is_dir():
            raise InputError(f"{p}: is a folder", hint="pass a file name as the output")
        if not real.is_file():
            raise InputError(
                f"{p}: not a regular file, FIFO or character device",
                hint="write to a regular file instead",
            )
        if not force:
            raise InputError(f"{p}: output already exists", hint="pass --force to replace it")
    if not real.parent.exists():
        raise InputError(f"{real.parent}: output folder does not exist", hint="create it first")
    if not os.access(real.parent, os.W_OK | os.X_OK):
        raise InputError(
            f"{real.parent}: output folder is not writable", hint="choose another output"
        )
    return p


@contextmanager
def atomic_output(
    path: str | os.PathLike, suffix: str = ".tmp", keep_tmp: bool = False
) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path``.

    A symlink target is followed; a FIFO or character device is yielded as itself (written
    in place). On any error or KeyboardInterrupt the temporary file (or folder) is removed,
    unless ``keep_tmp`` (used by ``--resume`` to continue from a partial temporary file).

    Raises:
        InputError: the target is a folder or another file type that cannot be replaced.
    """
    target = real_target(path)
    if is_stream_target(target):
        yield target
        return
    if target.exists() and not target.is_file():
        raise InputError(
            f"{path}: not a regular file, FIFO or character device",
            hint="write to a regular file instead",
        )
    tmp = target.with_name(f".{target.name}{suffix}")
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        if not keep_tmp:
            remove_path(tmp)
        raise


@contextmanager
def atomic_dir(path: str | os.PathLike, replace: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; on success it becomes ``path``.

    With ``replace``, an existing folder at ``path`` is swapped out and removed after the new
    one is in place; without it an existing ``path`` is an error. The temporary folder is
    removed on any error or interrupt.

    Raises:
        InputError: ``path`` exists and ``replace`` is false, or its parent does not exist.
    """
    target = Path(path)
    if not target.parent.exists():
        raise InputError(f"{target.parent}: folder does not exist", hint="create it first")
    if target.exists() and not replace:
        raise InputError(f"{target}: already exists", hint="pass --force to replace it")
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; a model folder is shared like any other
    old: Path | None = None
    try:
        yield tmp
        if target.exists() or target.is_symlink():
            old = target.with_name(f".{target.name}.{os.getpid()}.old")
            remove_path(old)
            os.rename(target, old)
        os.rename(tmp, target)
    except BaseException:
        remove_path(tmp)
        if old is not None and not target.exists():
            os.rename(old, target)  # put the previous folder back
            old = None
        raise
    finally:
        if old is not None:
            remove_path(old)


def remove_path(p: Path) -> None:
    """Remove a file, link or folder tree if it exists."""
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        try:
            p.unlink()
        except FileNotFoundError:
            pass
