"""The sentence-transformers files of a model directory, written and read.

A directory with ``modules.json`` loads in ``SentenceTransformer(path)`` as Transformer ->
Pooling (mean or cls, as emmax) -> Normalize (if the model normalises), with emmax's text
prefix as the default prompt. The module type names are the classic ``sentence_transformers.
models.*`` ones, which every release since 2.x resolves (6.x maps them to its new modules)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .config import ModelConfig

MODULES_FILE = "modules.json"
ST_CONFIG = "config_sentence_transformers.json"
TRANSFORMER_CONFIG = "sentence_bert_config.json"
POOLING_DIR = "1_Pooling"
NORMALIZE_DIR = "2_Normalize"
PROMPT_NAME = "emmax"  # the name under which emmax's prefix is the default prompt


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def write_sentence_transformers_files(
    root: str | os.PathLike, config: ModelConfig, transformer_path: str = ""
) -> list[str]:
    """Write ``modules.json`` and the module configs that make ``root`` a sentence-transformers
    model giving the same vectors as emmax.

    Args:
        root: the model directory (usually a temporary folder about to be renamed).
        config: the model's ``emmax.json`` (pooling, normalize, prefix, max_length, dim).
        transformer_path: the transformers folder relative to ``root`` (``""`` for a flat
            export, ``"encoder"`` inside an emmax model directory).

    Returns:
        The paths written, relative to ``root``.

    Raises:
        ValueError: a pooling that sentence-transformers cannot express.
    """
    if config.pooling not in ("mean", "cls"):
        raise ValueError(f"pooling {config.pooling!r} has no sentence-transformers equivalent")
    root = Path(root)
    kinds = [(transformer_path, "Transformer"), (POOLING_DIR, "Pooling")]
    if config.normalize:
        kinds.append((NORMALIZE_DIR, "Normalize"))
    modules = [
        {"idx": i, "name": str(i), "path": path, "type": f"sentence_transformers.models.{kind}"}
        for i, (path, kind) in enumerate(kinds)
    ]
    _write_json(root / MODULES_FILE, modules)
    written = [MODULES_FILE]
    rel = f"{transformer_path}/{TRANSFORMER_CONFIG}" if transformer_path else TRANSFORMER_CONFIG
    _write_json(root / rel, {"max_seq_length": int(config.max_length), "do_lower_case": False})
    (root / POOLING_DIR).mkdir(exist_ok=True)
    _write_json(
        root / POOLING_DIR / "config.json",
        {
            "word_embedding_dimension": int(config.dim),
            "pooling_mode_cls_token": config.pooling == "cls",
            "pooling_mode_mean_tokens": config.pooling == "mean",
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
            "pooling_mode_weightedmean_tokens": False,
            "pooling_mode_lasttoken": False,
            "include_prompt": True,  # emmax pools over its prefix's tokens too
        },
    )
    written += [rel, f"{POOLING_DIR}/config.json"]
    if config.normalize:
        (root / NORMALIZE_DIR).mkdir(exist_ok=True)
        _write_json(root / NORMALIZE_DIR / "config.json", {})
        written.append(f"{NORMALIZE_DIR}/config.json")
    st = {"prompts": {}, "default_prompt_name": None, "similarity_fn_name": "cosine"}
    if config.prefix:
        st.update(prompts={PROMPT_NAME: config.prefix}, default_prompt_name=PROMPT_NAME)
    _write_json(root / ST_CONFIG, st)
    return [*written, ST_CONFIG]


def read_sentence_transformers_config(root: Path) -> tuple[str, dict] | None:
    """What emmax needs from a sentence-transformers directory that has no ``emmax.json``.

    Args:
        root: a directory with ``modules.json``.

    Returns:
        ``(transformer_path, fields)`` where ``fields`` holds the ``ModelConfig`` values found
        (pooling, normalize, prefix, max_length), or None if ``root`` has no usable
        ``modules.json`` (no Transformer module, or a pooling emmax does not implement).
    """
    try:
        modules = json.loads((root / MODULES_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    kinds = {m.get("type", "").rpartition(".")[2]: m.get("path", "") for m in modules}
    if "Transformer" not in kinds or "Pooling" not in kinds:
        return None
    fields: dict = {"normalize": "Normalize" in kinds, "pooling": "mean"}
    pooling = _read(root / kinds["Pooling"] / "config.json")
    mode = pooling.get("pooling_mode")
    if mode is None:  # the classic boolean keys
        mode = "cls" if pooling.get("pooling_mode_cls_token") else "mean"
        if not pooling.get("pooling_mode_mean_tokens", True) and mode != "cls":
            return None
    if mode not in ("mean", "cls"):
        return None
    fields["pooling"] = mode
    tc = _read(root / kinds["Transformer"] / TRANSFORMER_CONFIG)
    if tc.get("max_seq_length"):
        fields["max_length"] = int(tc["max_seq_length"])
    st = _read(root / ST_CONFIG)
    name = st.get("default_prompt_name")
    if name and name in (st.get("prompts") or {}):
        fields["prefix"] = st["prompts"][name]
    return kinds["Transformer"], fields


def _read(path: Path) -> dict:
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return d if isinstance(d, dict) else {}
