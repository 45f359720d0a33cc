"""A tiny random encoder (2 layers, hidden 32) with a word-level tokenizer, built offline from a
seed: the fixture for fast tests, examples and bench smoke runs."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

from .config import ModelConfig
from .modeldir import save_model_dir

SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
BASE_WORDS = (
    "the a of and to in is it you that he was for on are with as i his they be at one have this "
    "from or had by word but what some we can out other were all there when up use your how said "
    "der die das und ist nicht ein eine ich du er sie wir ihr es zu mit von auf für guten morgen "
    "le la les et est un une je tu il elle nous vous de du pour avec bonjour merci oui non "
    "good morning hello thank thanks yes no cat dog house water tom mary book"
).split()


def build_tiny_model(
    root: str | os.PathLike,
    seed: int = 0,
    hidden: int = 32,
    layers: int = 2,
    vocab_texts: Iterable[str] | None = None,
    max_length: int = 64,
) -> Path:
    """Build a random emmax model directory at ``root`` (deterministic for a seed).

    Args:
        root: the folder to write.
        seed: the torch seed of the weights.
        hidden: the hidden width (and embedding dim).
        layers: the number of transformer layers.
        vocab_texts: texts whose words join the word-level vocabulary.
        max_length: the longest token sequence (and position embeddings).

    Returns:
        ``root``.
    """
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel

    words = list(
        dict.fromkeys(
            BASE_WORDS
            + [w for t in (vocab_texts or []) for w in re.findall(r"\w+|[^\w\s]", t.lower())]
        )
    )
    vocab = {tok: i for i, tok in enumerate(SPECIALS + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    # special in tokenizer.json too, as in real models: transformers treats them so anyway
    tok.add_special_tokens(SPECIALS)
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=hidden * 2,
        max_position_embeddings=max_length,
        pad_token_id=1,
        type_vocab_size=2,
    )
    model = BertModel(cfg, add_pooling_layer=False).eval()
    return save_model_dir(
        root,
        model,
        tok,
        ModelConfig(
            name=f"tiny-{seed}",
            max_length=max_length,
            mine_threshold=1.0,
            mine_threshold_source="tiny test model",
        ),
    )
