"""``emmax export``: write any model emmax can load as one self-contained directory that loads
as it is in sentence-transformers, in transformers and in emmax.

Layout (flat: the transformers files at the root, as sentence-transformers saves models)::

    config.json, model.safetensors          the encoder (transformers)
    tokenizer.json, tokenizer_config.json,  the tokenizer (AutoTokenizer)
    special_tokens_map.json
    modules.json, sentence_bert_config.json,        sentence-transformers: Transformer ->
    1_Pooling/, 2_Normalize/,                       Pooling (mean|cls) -> Normalize, with
    config_sentence_transformers.json               emmax's prefix as the default prompt
    emmax.json, gmm_head.safetensors/.json, README.md   emmax (checksums, GMM head, card)

``SentenceTransformer(out).encode(texts)`` gives the vectors of ``emmax embed`` (the tests
check cosine >= 0.9999; in practice the same numbers up to float rounding)."""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from pathlib import Path

from ..errors import InputError, ModelLoadError
from ..io.atomic import atomic_dir
from .config import CONFIG_FILE, ENCODER_DIR, sha256_file, weights_file
from .loading import resolve
from .st_layout import write_sentence_transformers_files
from .tokenizer import TOKENIZER_FILE, load_tokenizer, write_hf_tokenizer_files

log = logging.getLogger(__name__)

# emmax components copied next to the encoder when the source has them
COMPONENTS = ("gmm_head.safetensors", "gmm_head.json", "projection.safetensors", "README.md")


def _check_output(out: Path, source: Path, force: bool) -> None:
    if out.exists() or out.is_symlink():
        if not force:
            raise InputError(f"{out}: already exists", hint="pass --force to replace it")
        if not out.is_dir() or out.is_symlink():
            raise InputError(f"{out}: not a folder", hint="pass a folder name as the output")
    if not out.parent.is_dir():
        raise InputError(f"{out.parent}: output folder does not exist", hint="create it first")
    src, dst = source.resolve(), out.resolve()
    if src == dst or dst in src.parents:
        raise InputError(
            f"{out}: would replace the model being exported ({source})",
            hint="choose another output folder",
        )


def export_model(
    model: str | os.PathLike | None, output: str | os.PathLike, force: bool = False
) -> Path:
    """Export ``model`` as a sentence-transformers / transformers / emmax directory.

    Args:
        model: a built-in name, a model directory, or None for the default model.
        output: the folder to write; it appears whole or not at all.
        force: replace an existing ``output`` folder.

    Returns:
        The output folder.

    Raises:
        InputError: ``output`` exists (without ``force``), is not a folder, has no parent
            folder, or is (or contains) the model being exported.
        ModelLoadError: the model cannot be found or read, or uses a pooling that
            sentence-transformers cannot express.
    """
    rm = resolve(model)
    out = Path(output)
    _check_output(out, rm.root, force)
    cfg = dataclasses.replace(rm.config, files={}, extra=dict(rm.config.extra))
    weights = weights_file(rm.encoder_dir)
    if weights is None:
        raise ModelLoadError(f"{rm.encoder_dir}: no model weights", hint="re-copy the model")
    tok = load_tokenizer(rm.encoder_dir, cfg.max_length)
    digests = {  # the source's verified checksums, by path relative to the encoder folder
        rel.removeprefix(f"{ENCODER_DIR}/"): d for rel, d in rm.config.files.items()
    }
    with atomic_dir(out, replace=force) as tmp:
        shutil.copyfile(rm.encoder_dir / "config.json", tmp / "config.json")
        shutil.copyfile(weights, tmp / weights.name)
        if (rm.encoder_dir / TOKENIZER_FILE).exists():  # byte for byte: its checksum holds
            shutil.copyfile(rm.encoder_dir / TOKENIZER_FILE, tmp / TOKENIZER_FILE)
        else:  # a sentencepiece model converted by transformers
            tok.save(str(tmp / TOKENIZER_FILE))
        write_hf_tokenizer_files(tmp, tok, cfg.max_length)
        for name in COMPONENTS:
            if (rm.root / name).is_file():
                shutil.copyfile(rm.root / name, tmp / name)
        for name in (weights.name, TOKENIZER_FILE, "gmm_head.safetensors", "gmm_head.json"):
            if (tmp / name).exists():
                cfg.files[name] = digests.get(name) or sha256_file(tmp / name)
        cfg.dim = cfg.dim or _hidden_size(tmp)
        cfg.extra["exported_from"] = str(model) if model is not None else rm.config.name
        try:
            write_sentence_transformers_files(tmp, cfg, "")
        except ValueError as e:
            raise ModelLoadError(f"{rm.root}: cannot export ({e})") from None
        cfg.save(tmp / CONFIG_FILE)
        for p in tmp.rglob("*"):
            p.chmod(0o755 if p.is_dir() else 0o644)
        tmp.chmod(0o755)
    log.info("exported %s to %s", cfg.name, out)
    return out


def _hidden_size(encoder_dir: Path) -> int:
    from .modeling import read_config

    return int(read_config(encoder_dir).get("hidden_size", 0))
