"""Tokenizers: the one place emmax loads and saves them.

emmax runs a ``tokenizers.Tokenizer`` from ``tokenizer.json``. Next to it, every encoder folder
emmax writes holds ``tokenizer_config.json`` and ``special_tokens_map.json``, so that
``transformers.AutoTokenizer`` (and through it sentence-transformers) loads the same tokenizer.
The class named there is ``PreTrainedTokenizerFast``, which takes ``tokenizer.json`` as it is:
transformers 5's ``XLMRobertaTokenizer`` rebuilds the pre-tokenizer of a sentencepiece unigram
model and gives other ids than emmax for runs of spaces and for special tokens inside text."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import ModelLoadError

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
# role -> candidate tokens, in the order they are looked for in the vocabulary
SPECIAL_ROLES = {
    "bos_token": ("<s>", "[CLS]"),
    "eos_token": ("</s>", "[SEP]"),
    "unk_token": ("<unk>", "[UNK]"),
    "sep_token": ("</s>", "[SEP]"),
    "pad_token": ("<pad>", "[PAD]"),
    "cls_token": ("<s>", "[CLS]"),
    "mask_token": ("<mask>", "[MASK]"),
}


def load_tokenizer(encoder_dir: str | os.PathLike, max_length: int):
    """The encoder's tokenizer, truncating to ``max_length`` tokens and never padding.

    Args:
        encoder_dir: a folder with ``tokenizer.json``, or a slow (sentencepiece) tokenizer that
            transformers can convert.
        max_length: the longest token sequence the model accepts.

    Returns:
        A ``tokenizers.Tokenizer``.

    Raises:
        ModelLoadError: no tokenizer there, or an unreadable one.
    """
    from tokenizers import Tokenizer

    tj = Path(encoder_dir) / TOKENIZER_FILE
    try:
        if tj.exists():
            tok = Tokenizer.from_file(str(tj))
        else:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(str(encoder_dir), use_fast=True).backend_tokenizer
    except Exception as e:
        raise ModelLoadError(
            f"{encoder_dir}: cannot load the tokenizer ({str(e).splitlines()[0]})",
            hint="the directory needs tokenizer.json or a sentencepiece model",
        ) from None
    tok.no_padding()
    tok.enable_truncation(max_length)
    return tok


def pad_id(tokenizer) -> int:
    """The padding token's id.

    Args:
        tokenizer: a ``tokenizers.Tokenizer``.

    Returns:
        The id of ``<pad>``, else ``[PAD]``, else 0.
    """
    for t in SPECIAL_ROLES["pad_token"]:
        i = tokenizer.token_to_id(t)
        if i is not None:
            return int(i)
    return 0


def special_tokens(tokenizer) -> dict[str, str]:
    """The special tokens of each role (``bos_token``, ``pad_token``, ...) that the vocabulary
    has, XLM-R style (``<s>``) before BERT style (``[CLS]``).

    Args:
        tokenizer: a ``tokenizers.Tokenizer``.

    Returns:
        role -> token text, for the roles found.
    """
    out = {}
    for role, candidates in SPECIAL_ROLES.items():
        for t in candidates:
            if tokenizer.token_to_id(t) is not None:
                out[role] = t
                break
    return out


def write_hf_tokenizer_files(encoder_dir: str | os.PathLike, tokenizer, max_length: int) -> None:
    """Write ``tokenizer_config.json`` and ``special_tokens_map.json`` next to ``tokenizer.json``.

    Args:
        encoder_dir: the folder that holds (or will hold) ``tokenizer.json``.
        tokenizer: the ``tokenizers.Tokenizer`` saved there.
        max_length: the model's maximum number of tokens (``model_max_length``).
    """
    d = Path(encoder_dir)
    specials = special_tokens(tokenizer)
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": int(max_length),
        "model_input_names": ["input_ids", "attention_mask"],  # what emmax feeds the model
        "padding_side": "right",
        "clean_up_tokenization_spaces": False,
        **specials,
    }
    (d / TOKENIZER_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (d / SPECIAL_TOKENS_MAP).write_text(json.dumps(specials, indent=2) + "\n", encoding="utf-8")


def save_tokenizer(tokenizer, encoder_dir: str | os.PathLike, max_length: int) -> list[str]:
    """Save ``tokenizer.json`` and the files transformers needs to load it.

    Args:
        tokenizer: a ``tokenizers.Tokenizer``.
        encoder_dir: an existing folder (usually a temporary one about to be renamed).
        max_length: the model's maximum number of tokens.

    Returns:
        The names of the files written.
    """
    tokenizer.save(str(Path(encoder_dir) / TOKENIZER_FILE))
    write_hf_tokenizer_files(encoder_dir, tokenizer, max_length)
    return [TOKENIZER_FILE, TOKENIZER_CONFIG, SPECIAL_TOKENS_MAP]


def pad_batch(ids, pad_id: int, device="cpu"):
    """Pad token-id lists into a batch: (B, L) int64 ids and (B, L) int64 attention mask
    (1 for tokens), L the longest list, as torch tensors on ``device``."""
    import numpy as np
    import torch

    L = max(1, max((len(x) for x in ids), default=1))
    arr = np.full((len(ids), L), pad_id, dtype=np.int64)
    mask = np.zeros((len(ids), L), dtype=np.int64)
    for i, x in enumerate(ids):
        arr[i, : len(x)] = x
        mask[i, : len(x)] = 1
    return torch.from_numpy(arr).to(device), torch.from_numpy(mask).to(device)
