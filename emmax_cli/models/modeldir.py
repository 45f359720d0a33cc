"""Model directories on disk: open one (emmax, exported, sentence-transformers or plain
transformers layout), verify its checksums, and write one.

An emmax model directory is ``emmax.json`` + ``encoder/`` (transformers config, weights,
tokenizer with ``tokenizer_config.json``) + the sentence-transformers module files
(``modules.json`` pointing at ``encoder``), so it loads as it is in emmax and in
``SentenceTransformer(path)``. ``emmax export`` writes the flat variant, with the encoder files
at the root, which transformers' ``from_pretrained(path)`` also loads."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from ..errors import ModelLoadError
from ..io.atomic import atomic_output
from .config import (
    CONFIG_FILE,
    ENCODER_DIR,
    ModelConfig,
    ResolvedModel,
    cache_dir,
    quick_fingerprint,
    sha256_file,
    weights_file,
)
from .st_layout import MODULES_FILE, read_sentence_transformers_config
from .st_layout import write_sentence_transformers_files as write_st_files
from .tokenizer import TOKENIZER_CONFIG, TOKENIZER_FILE, save_tokenizer, write_hf_tokenizer_files

log = logging.getLogger(__name__)

VERIFIED_FILE = ".verified.json"


def open_dir(path: str | os.PathLike, verify: bool = True) -> ResolvedModel:
    """Locate the encoder and config of a model directory.

    Args:
        path: an emmax model directory (``emmax.json`` with ``encoder/`` or, exported, with
            the encoder files at the root), a sentence-transformers directory or a plain
            transformers encoder directory.
        verify: check the sha256 of the files listed in ``emmax.json`` (results are remembered
            per file size, mtime, ctime and inode, so an unchanged file is hashed once).

    Returns:
        The resolved model.

    Raises:
        ModelLoadError: not a model directory, missing files, or a checksum mismatch.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelLoadError(f"{p}: no such model directory")
    if (p / CONFIG_FILE).exists():
        cfg = ModelConfig.from_json(p / CONFIG_FILE)
        if (p / ENCODER_DIR / "config.json").exists():
            enc = p / ENCODER_DIR
        elif (p / "config.json").exists():
            enc = p
        else:
            raise ModelLoadError(
                f"{p}: emmax model directory without encoder/config.json",
                hint="re-copy the model directory",
            )
        if verify:
            verify_files(p, cfg)
        return ResolvedModel(p, enc, cfg)
    if (p / "config.json").exists() or (p / MODULES_FILE).exists():
        return _foreign(p)
    raise ModelLoadError(
        f"{p}: not a model directory (no emmax.json or config.json)",
        hint="pass an emmax model directory or a transformers encoder directory",
    )


def _foreign(p: Path) -> ResolvedModel:
    """A directory without ``emmax.json``: sentence-transformers settings if it has them, else
    mean pooling and L2 normalisation."""
    st = read_sentence_transformers_config(p) if (p / MODULES_FILE).exists() else None
    enc, fields = (p / st[0], st[1]) if st else (p, {})
    try:
        hf = json.loads((enc / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ModelLoadError(
            f"{enc}/config.json: unreadable ({e})", hint="re-copy the model directory"
        ) from None
    offset = 2 if hf.get("model_type") in ("xlm-roberta", "roberta", "camembert") else 0
    maxlen = min(512, int(hf.get("max_position_embeddings", 512)) - offset)
    w = weights_file(enc)
    if w is None:
        raise ModelLoadError(
            f"{enc}: no model.safetensors or pytorch_model.bin",
            hint="save the model with save_pretrained",
        )
    fields["max_length"] = min(maxlen, fields.get("max_length", maxlen))
    cfg = ModelConfig(
        name=p.name, dim=int(hf.get("hidden_size", 0)), checksum=quick_fingerprint(w), **fields
    )
    return ResolvedModel(p, enc, cfg)


def _fix_hint(root: Path) -> str:
    if _in_cache(root):
        return f"delete {root} and run again to rebuild it"
    return "re-copy or rebuild the model directory"


def _in_cache(root: Path) -> bool:
    return root.parent == cache_dir() / "models"


def verify_files(root: Path, cfg: ModelConfig) -> None:
    """Check the sha256 of every file in ``cfg.files``.

    In emmax's cache (``<cache>/models/<name>``), a file whose size, mtime, ctime and inode
    are those of its last successful check is not hashed again: the record is
    ``<name>/.verified.json``, written on a best-effort basis. Other directories are hashed on
    every load.

    Args:
        root: the model directory.
        cfg: its ``emmax.json``.

    Raises:
        ModelLoadError: a file is missing or its checksum differs.
    """
    record = root / VERIFIED_FILE if _in_cache(root) else None
    try:
        known = json.loads(record.read_text(encoding="utf-8")) if record else {}
    except (OSError, json.JSONDecodeError):
        known = {}
    changed = False
    for rel, digest in cfg.files.items():
        try:
            st = (root / rel).stat()
        except FileNotFoundError:
            raise ModelLoadError(f"{root}: {rel} is missing", hint=_fix_hint(root)) from None
        stamp = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, digest]
        if known.get(rel) == stamp:
            continue
        if sha256_file(root / rel) != digest:
            raise ModelLoadError(
                f"{root}: checksum mismatch for {rel} (corrupt or modified)", hint=_fix_hint(root)
            )
        known[rel], changed = stamp, True
    if changed and record is not None:
        try:
            with atomic_output(record, suffix=f".{os.getpid()}.tmp") as tmp:
                tmp.write_text(json.dumps(known), encoding="utf-8")
        except OSError as e:  # a read-only cache only costs the hashing next time
            log.debug("cannot record verified checksums in %s: %s", record, e)


def save_model_dir(root: str | os.PathLike, model, tokenizer, config: ModelConfig) -> Path:
    """Write an emmax model directory (``emmax.json``, ``encoder/``, sentence-transformers
    files), recording checksums. Not atomic by itself: callers write into a temporary folder
    (``io.atomic.atomic_dir``) and rename it.

    Args:
        root: the folder to write (created if missing).
        model: a transformers model (``save_pretrained``).
        tokenizer: a ``tokenizers.Tokenizer``.
        config: the model's config; ``checksum``, ``dim`` and ``files`` are filled in. Other
            components (the GMM head) are saved by their owners next to it and listed in
            ``config.files`` by the caller if they must be verified.

    Returns:
        ``root``.
    """
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    root = Path(root)
    enc = root / ENCODER_DIR
    enc.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(enc, safe_serialization=True)
    save_tokenizer(tokenizer, enc, config.max_length)
    config.checksum = sha256_file(enc / "model.safetensors")
    config.dim = config.dim or int(model.config.hidden_size)
    config.files = {
        **config.files,
        f"{ENCODER_DIR}/model.safetensors": config.checksum,
        f"{ENCODER_DIR}/{TOKENIZER_FILE}": sha256_file(enc / TOKENIZER_FILE),
    }
    write_st_files(root, config, ENCODER_DIR)
    config.save(root / CONFIG_FILE)
    return root


def add_missing_ecosystem_files(rm: ResolvedModel) -> None:
    """Add ``tokenizer_config.json`` and the sentence-transformers files to a model directory
    written by emmax 0.1.0, which lacked them (used on emmax's own cache, once per model).

    Each file appears whole (written aside, then renamed); ``modules.json`` comes last.

    Args:
        rm: an emmax model directory.
    """
    enc, root = rm.encoder_dir, rm.root
    if (enc / TOKENIZER_CONFIG).exists() and (root / MODULES_FILE).exists():
        return
    from tokenizers import Tokenizer

    log.info("%s: adding the transformers and sentence-transformers files", root)
    tmp = Path(tempfile.mkdtemp(prefix=".ecosystem.", dir=root))
    try:
        (tmp / ENCODER_DIR).mkdir()
        tok = Tokenizer.from_file(str(enc / TOKENIZER_FILE))
        write_hf_tokenizer_files(tmp / ENCODER_DIR, tok, rm.config.max_length)
        rel_enc = "" if enc == root else enc.relative_to(root).as_posix()
        if rel_enc:
            (tmp / rel_enc).mkdir(parents=True, exist_ok=True)
        written = write_st_files(tmp, rm.config, rel_enc)
        hf = [f"{ENCODER_DIR}/{n}" for n in (TOKENIZER_CONFIG, "special_tokens_map.json")]
        for rel in hf + sorted(written, key=lambda r: r == MODULES_FILE):
            src = tmp / rel
            dst = (enc / Path(rel).name) if rel in hf else root / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
    except OSError as e:  # a read-only directory still works for emmax
        log.debug("cannot add files to %s: %s", root, e)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
