"""A trained emmax model packaged as what differs from its base (small enough to ship in git).

A delta directory holds:

    delta.safetensors        fp16 differences (trained - base) of every encoder tensor that
                             changed (e.g. the top layers when only those were trained)
    gmm_head.safetensors/.json  the GMM head (weights, rank means)
    cross_head.safetensors/.json  the cross-attention pair scorer, if the model has one
    projection.safetensors   the optional linear projection (if the model has one)
    delta.json               format, base name and weight checksum, the trained model's
                             emmax.json fields, tensor list
    README.md                model card

``package(model_dir, base, delta_dir)`` writes one from a trained model directory;
``materialize(delta_dir, base, out_dir)`` rebuilds the full emmax model directory from the
base, checking that the base weights are the ones the delta was made against."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from ..errors import ModelLoadError
from ..io.atomic import atomic_dir
from .config import CONFIG_FILE, ModelConfig, ResolvedModel, sha256_file
from .cross import CONFIG_FILE as CROSS_CONFIG
from .cross import WEIGHTS_FILE as CROSS_WEIGHTS
from .modeldir import open_dir, save_model_dir
from .tokenizer import load_tokenizer

log = logging.getLogger(__name__)

DELTA_FORMAT = 1
DELTA_FILE = "delta.safetensors"
META_FILE = "delta.json"
HEAD_FILES = ("gmm_head.safetensors", "gmm_head.json")
CROSS_FILES = (CROSS_WEIGHTS, CROSS_CONFIG)  # the cross scorer, shipped as it is (small)
PROJECTION = "projection.safetensors"


def _load_encoder(rm: ResolvedModel):
    from .modeling import load_transformers_model

    return load_transformers_model(rm.encoder_dir)


def _as_resolved(m: ResolvedModel | str | os.PathLike) -> ResolvedModel:
    """A model directory (built-in names are resolved by the caller: ``loading.resolve``)."""
    return m if isinstance(m, ResolvedModel) else open_dir(m)


def package(
    model_dir: str | os.PathLike,
    base: ResolvedModel | str | os.PathLike,
    delta_dir: str | os.PathLike,
    atol: float = 0.0,
) -> Path:
    """Write the delta of the trained emmax model ``model_dir`` against ``base``.

    Tensors whose largest absolute change is <= ``atol`` are left out (frozen parameters).
    Other files already in ``delta_dir`` (model card, evaluation results) are kept. The folder
    is replaced atomically; its size is logged.

    Args:
        model_dir: the trained emmax model directory.
        base: the base model (``ResolvedModel`` or directory) it was trained from.
        delta_dir: the folder to write.
        atol: changes up to this are treated as none.

    Returns:
        ``delta_dir``.

    Raises:
        ModelLoadError: the model's tensors are not the base's.
    """
    from safetensors.torch import save_file

    trained_rm, base_rm = open_dir(model_dir), _as_resolved(base)
    trained, ref = _load_encoder(trained_rm).state_dict(), _load_encoder(base_rm).state_dict()
    if set(trained) != set(ref):
        raise ModelLoadError(
            f"{model_dir}: its encoder does not have the base's tensors",
            hint="package against the base the model was trained from",
        )
    deltas = {}
    for name, w in trained.items():
        d = w.float() - ref[name].float()
        if d.abs().max() > atol:
            deltas[name] = d.half().contiguous()
    out = Path(delta_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    cfg = json.loads((trained_rm.root / CONFIG_FILE).read_text(encoding="utf-8"))
    for k in ("checksum", "files"):
        cfg.pop(k, None)
    meta = {
        "format_version": DELTA_FORMAT,
        "base_model": base_rm.config.name,
        "base_checksum": base_rm.config.checksum
        or sha256_file(base_rm.encoder_dir / "model.safetensors"),
        "dtype": "float16",
        "tensors": sorted(deltas),
        "num_parameters": int(sum(v.numel() for v in deltas.values())),
        "model_config": cfg,
    }
    with atomic_dir(out, replace=True) as tmp:
        meta_ = {"format": "emmax-delta", "dtype": "float16"}
        save_file(deltas, str(tmp / DELTA_FILE), metadata=meta_)
        for f in (*HEAD_FILES, *CROSS_FILES, PROJECTION):
            if (trained_rm.root / f).exists():
                shutil.copy2(trained_rm.root / f, tmp / f)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        if out.is_dir():  # keep what else lives there (model card, evaluation files)
            for f in out.iterdir():
                if (tmp / f.name).exists() or f.name in (*HEAD_FILES, *CROSS_FILES, PROJECTION):
                    continue
                if f.is_dir():
                    shutil.copytree(f, tmp / f.name)
                else:
                    shutil.copy2(f, tmp / f.name)
        for f in (DELTA_FILE, META_FILE, *HEAD_FILES, *CROSS_FILES, PROJECTION):
            if (tmp / f).exists():
                (tmp / f).chmod(
                    0o644
                )  # safetensors writes 0600; the folder ships in the repository
        tmp.chmod(0o755)
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    log.info(
        "packaged %d tensors (%d parameters) into %s: %.1f MB",
        len(deltas),
        meta["num_parameters"],
        out,
        size / 1e6,
    )
    return out


def read_meta(delta_dir: str | os.PathLike) -> dict:
    """The ``delta.json`` of a delta folder.

    Args:
        delta_dir: a folder written by ``package``.

    Returns:
        The metadata (format, base name and checksum, tensors, the model's emmax.json fields).

    Raises:
        ModelLoadError: unreadable, or a newer format than this emmax reads.
    """
    p = Path(delta_dir) / META_FILE
    try:
        meta = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ModelLoadError(
            f"{p}: unreadable delta metadata ({e})", hint="re-copy the model folder"
        ) from None
    if int(meta.get("format_version", 0)) > DELTA_FORMAT:
        raise ModelLoadError(
            f"{p}: delta format {meta['format_version']} is newer than this emmax supports",
            hint="upgrade emmax",
        )
    return meta


def materialize(
    delta_dir: str | os.PathLike,
    base: ResolvedModel | str | os.PathLike,
    out_dir: str | os.PathLike,
    extra: dict | None = None,
) -> Path:
    """Rebuild the full emmax model directory ``out_dir`` = base + delta (+ GMM head).

    Args:
        delta_dir: a folder written by ``package`` (e.g. ``models/emmax-small``).
        base: the base model, a ``ResolvedModel`` or a model directory; for a built-in name
            pass ``loading.resolve("multilingual-e5-small")``.
        out_dir: where to write the model directory (replaced atomically).
        extra: more entries for ``emmax.json``'s ``extra``.

    Returns:
        ``out_dir``.

    Raises:
        ModelLoadError: missing files, or a base whose weights differ from the delta's base.
    """
    import torch
    from safetensors.torch import load_file

    d = Path(delta_dir)
    meta = read_meta(d)
    base_rm = _as_resolved(base)
    have = base_rm.config.checksum or sha256_file(base_rm.encoder_dir / "model.safetensors")
    if have != meta["base_checksum"]:
        raise ModelLoadError(
            f"{d}: made against base weights {meta['base_checksum'][:12]}, "
            f"but {base_rm.root} has {have[:12]}",
            hint=f"use the base {meta['base_model']!r} built by this emmax version",
        )
    if not (d / DELTA_FILE).exists():
        raise ModelLoadError(f"{d / DELTA_FILE}: missing", hint="re-copy the model folder")
    model = _load_encoder(base_rm)
    deltas = load_file(str(d / DELTA_FILE))
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    with torch.no_grad():
        for name, delta in deltas.items():
            t = params.get(name, buffers.get(name))
            if t is None:
                raise ModelLoadError(
                    f"{d}: tensor {name} is not in the base model", hint="wrong base"
                )
            t.copy_((t.float() + delta.float()).to(t.dtype))
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(out, replace=True) as tmp:
        files = {}
        for f in (*HEAD_FILES, *CROSS_FILES, PROJECTION):
            if (d / f).exists():
                shutil.copy2(d / f, tmp / f)
                files[f] = sha256_file(tmp / f)
        for f in ("README.md",):
            if (d / f).exists():
                shutil.copy2(d / f, tmp / f)
        known = set(ModelConfig.__dataclass_fields__)
        mc = {k: v for k, v in meta["model_config"].items() if k in known}
        mc["extra"] = {
            **mc.get("extra", {}),
            "materialized_from": str(d),
            "delta_base": meta["base_model"],
            **(extra or {}),
        }
        cfg = ModelConfig(**{**mc, "files": files})
        tok = load_tokenizer(base_rm.encoder_dir, int(cfg.max_length))
        save_model_dir(tmp, model, tok, cfg)
        tmp.chmod(0o755)
    return out


def delta_stamp(delta_dir: str | os.PathLike) -> str:
    """One sha256 over the files that make up a delta (weights, metadata, head, projection).

    Args:
        delta_dir: a folder written by ``package``.

    Returns:
        The hex digest.
    """
    d = Path(delta_dir)
    h = hashlib.sha256()
    for f in (DELTA_FILE, META_FILE, *HEAD_FILES, *CROSS_FILES, PROJECTION):
        if (d / f).exists():
            h.update(f"{f}:{sha256_file(d / f)}\n".encode())
    return h.hexdigest()


def ensure_materialized(
    delta_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    base: ResolvedModel | str | os.PathLike | Callable[[], ResolvedModel],
) -> ResolvedModel:
    """The full model for ``delta_dir`` at ``out_dir``, built once.

    It is built again only when the delta changes: the sha256 of its files is stamped into
    ``emmax.json``, so a new GMM head or threshold alone also rebuilds it. This is what a
    built-in name such as ``emmax-small`` resolves to (``loading.resolve``).

    Args:
        delta_dir: a folder written by ``package``.
        out_dir: where the full model lives (a cache folder).
        base: the base model, a ``ResolvedModel`` or a model directory, or a function that
            returns it, called only if a rebuild needs the base (``loading`` passes one, so
            that loading a built model does not resolve and verify the base).

    Returns:
        The materialised model.

    Raises:
        ModelLoadError: as ``materialize``, or a damaged materialised model.
    """
    d, out = Path(delta_dir), Path(out_dir)
    stamp = delta_stamp(d)
    if (out / CONFIG_FILE).exists():
        cfg = ModelConfig.from_json(out / CONFIG_FILE)
        if cfg.extra.get("delta_sha256") == stamp:
            return open_dir(out)
    materialize(d, base() if callable(base) else base, out, extra={"delta_sha256": stamp})
    return open_dir(out)
