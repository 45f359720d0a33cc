"""Check every input path of a training config before a run writes anything: a missing file
is a one-line ``ConfigError`` that names the config key, not a half-made run folder."""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .config import TrainConfig


def check_paths(cfg: TrainConfig, start_from_base: bool = True) -> None:
    """Check every input path of a config, before a run writes anything.

    Checked: each ``data.parallel`` glob (or ``{src, tgt}`` table), ``data.mono`` and
    ``data.dev`` glob, and ``model.base`` where it names a path (a built-in model name is
    resolved, and checked, by the model loader). ``data.exclude`` folders may be missing: the
    run then warns that it cannot filter their sentences out.

    Args:
        cfg: the resolved config. Relative paths are relative to the current folder.
        start_from_base: whether the run loads ``model.base`` (phases after the first start
            from the previous phase's export instead).

    Raises:
        ConfigError: a path matches no file (or no model directory); the message names the
            config key and the path.
    """
    d = cfg.data
    for i, e in enumerate(d.parallel, 1):
        if isinstance(e, dict):
            if not {"src", "tgt"} <= set(e) or set(e) - {"src", "tgt", "lang"}:
                raise ConfigError(
                    f"data.parallel entry {i} {e!r}: use {{src, tgt, lang}}",
                    hint='e.g. {src = "a.de", tgt = "a.en", lang = "deu"}',
                )
            for side in ("src", "tgt"):
                if not Path(e[side]).expanduser().is_file():
                    raise ConfigError(
                        f"data.parallel entry {i}: {side} file {e[side]} does not exist",
                        hint=_path_hint("data.parallel"),
                    )
        else:
            _check_glob("data.parallel", e)
    for key, entries in (("data.mono", d.mono), ("data.dev", d.dev)):
        for e in entries:
            _check_glob(key, e)
    if start_from_base:
        _check_model(cfg.model.base)


def _path_hint(key: str) -> str:
    return f"paths are relative to {Path.cwd()}; fix {key} in the config or pass --set {key}=[...]"


def _check_glob(key: str, pattern: Any) -> None:
    hits = glob.glob(os.path.expanduser(str(pattern)))
    if not any(Path(h).is_file() for h in hits):
        raise ConfigError(f"{key}: {pattern} matches no file", hint=_path_hint(key))


def _check_model(base: str) -> None:
    p = Path(base).expanduser()
    if p.exists():
        if not (p.is_dir() and ((p / "emmax.json").exists() or (p / "config.json").exists())):
            raise ConfigError(
                f"model.base: {base} is not a model directory (no emmax.json or config.json)",
                hint="point model.base at an emmax or transformers model directory",
            )
    elif "/" in base or os.sep in base or base.startswith((".", "~")):
        raise ConfigError(
            f"model.base: {base}: no such directory",
            hint=f"paths are relative to {Path.cwd()}; fix model.base or pass --set model.base=...",
        )
