"""Sentence encoder: tokenise, sort by length, batch by a token budget, run the transformer,
pool, normalise, and return vectors in input order."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..console import Progress, null_progress
from ..device import autocast, pick_precision, resolve_device
from ..errors import ModelLoadError
from .loading import DEFAULT_MODEL, ModelConfig, ResolvedModel, resolve
from .pooling import pool

log = logging.getLogger(__name__)

DEFAULT_BATCH_TOKENS = 8192


def load_tokenizer(encoder_dir: Path, max_length: int):
    """A ``tokenizers.Tokenizer`` from ``tokenizer.json``, or converted from a slow tokenizer."""
    from tokenizers import Tokenizer

    tj = encoder_dir / "tokenizer.json"
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


class Encoder:
    """A sentence encoder. ``Encoder.load(model)`` then ``encode(texts)`` -> (n, d) float32.

    Inputs are sorted by token length and cut into batches of at most ``batch_tokens``
    padded tokens (memory ~ batch_tokens x hidden x layers activations), or ``batch_size``
    sentences if given; outputs come back in input order."""

    def __init__(
        self,
        model,
        tokenizer,
        config: ModelConfig,
        device: str = "cpu",
        precision: str = "auto",
        root: Path | None = None,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.device = device
        self.root = root
        self.precision = pick_precision(precision, device)
        pad = tokenizer.token_to_id("<pad>")
        self.pad_id = pad if pad is not None else (tokenizer.token_to_id("[PAD]") or 0)

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        name_or_path: str | os.PathLike | None = None,
        device: str = "auto",
        precision: str = "auto",
        verify: bool = True,
    ) -> Encoder:
        rm = resolve(name_or_path or DEFAULT_MODEL, verify=verify)
        return cls.from_resolved(rm, device=device, precision=precision)

    @classmethod
    def from_resolved(
        cls, rm: ResolvedModel, device: str = "auto", precision: str = "auto"
    ) -> Encoder:
        import torch
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging

        dev = resolve_device(device)
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        try:
            model = AutoModel.from_pretrained(str(rm.encoder_dir), add_pooling_layer=False)
        except TypeError:
            model = AutoModel.from_pretrained(str(rm.encoder_dir))
        except Exception as e:
            raise ModelLoadError(
                f"{rm.encoder_dir}: cannot load the encoder ({str(e).splitlines()[0]})",
                hint="pass a BERT/XLM-R transformers directory or an emmax model",
            ) from None
        model.eval().to(dev)
        for p in model.parameters():
            p.requires_grad_(False)
        cfg = rm.config
        if not cfg.dim:
            cfg.dim = int(model.config.hidden_size)
        tok = load_tokenizer(rm.encoder_dir, cfg.max_length)
        _ = torch
        return cls(model, tok, cfg, device=dev, precision=precision, root=rm.root)

    # ---- properties ---------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return int(self.config.dim)

    @property
    def meta(self) -> dict[str, Any]:
        """What embedding files record about the model that made them."""
        c = self.config
        return {
            "model": c.name,
            "model_checksum": c.checksum,
            "pooling": c.pooling,
            "normalized": c.normalize,
            "prefix": c.prefix,
            "max_length": c.max_length,
            "precision": self.precision,
        }

    # ---- encoding -----------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        p = self.config.prefix
        encs = self.tokenizer.encode_batch([p + t for t in texts] if p else list(texts))
        return [e.ids for e in encs]

    def _autocast(self):
        return autocast(self.device, self.precision)

    def _batches(
        self, lengths: np.ndarray, batch_tokens: int, batch_size: int | None
    ) -> list[np.ndarray]:
        """Cut indices sorted by descending length into batches (padded tokens <= budget)."""
        order = np.argsort(-lengths, kind="stable")
        if batch_size:
            return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        out, start, n = [], 0, len(order)
        while start < n:
            longest = int(lengths[order[start]])
            size = max(1, batch_tokens // max(longest, 1))
            out.append(order[start : start + size])
            start += size
        return out

    def forward_ids(self, ids: list[list[int]]):
        """Run one batch of token-id lists through the model; returns (B, d) float32 tensor."""
        import torch

        L = max(len(x) for x in ids)
        arr = np.full((len(ids), L), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(ids), L), dtype=np.int64)
        for i, x in enumerate(ids):
            arr[i, : len(x)] = x
            mask[i, : len(x)] = 1
        input_ids = torch.from_numpy(arr).to(self.device)
        attn = torch.from_numpy(mask).to(self.device)
        with self._autocast():
            out = self.model(input_ids=input_ids, attention_mask=attn).last_hidden_state
        return pool(out, attn, self.config.pooling, self.config.normalize)

    def encode(
        self,
        texts: Sequence[str],
        batch_tokens: int = DEFAULT_BATCH_TOKENS,
        batch_size: int | None = None,
        progress: Progress | None = None,
    ) -> np.ndarray:
        """Embed sentences; returns (n, dim) float32 in input order (L2-normalised if the
        model normalises)."""
        import torch

        progress = progress or null_progress
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if not len(texts):
            return out
        ids = self.tokenize(texts)
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        with torch.inference_mode():
            for b in self._batches(lengths, batch_tokens, batch_size):
                vecs = self.forward_ids([ids[i] for i in b])
                out[b] = vecs.cpu().numpy()
                progress(len(b))
        return out

    def encode_iter(self, chunks: Iterable[Sequence[str]], **kw) -> Iterator[np.ndarray]:
        """Embed an iterable of sentence chunks, yielding one array per chunk (streaming)."""
        for chunk in chunks:
            yield self.encode(chunk, **kw)
