"""``CrossScorer``: a model's encoder with its cross-attention plug-in, scoring sentence pairs
read jointly (``emmax rank --cross``, ``emmax mine --rerank``). The plug-in is in
``cross.py``; this module tokenises, batches by length and returns rank probabilities."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from ..console import Progress, null_progress
from ..errors import InputError
from .cross import CrossPlugin
from .encoder import Encoder
from .tokenizer import pad_batch

DEFAULT_PAIR_TOKENS = 4096  # padded tokens of both sides per batch


class CrossScorer:
    """An encoder and its plug-in. ``CrossScorer.load(model)`` then ``rank_probs(src, tgt)``.

    Args:
        encoder: the model's encoder (an ``EncoderNet`` at fp32 or bf16).
        plugin: its ``CrossPlugin`` (checked against the encoder's shape).
    """

    def __init__(self, encoder: Encoder, plugin: CrossPlugin):
        plugin.check_net(encoder.net, f"the cross scorer of {encoder.config.name}")
        self.encoder = encoder
        self.plugin = plugin.to(encoder.device).eval()
        for p in self.plugin.parameters():
            p.requires_grad_(False)

    @classmethod
    def load(
        cls,
        model: str | os.PathLike | Encoder | None = None,
        device: str = "auto",
        precision: str = "auto",
    ) -> CrossScorer:
        """Load a model's encoder and cross scorer (the plug-in's files are read first).

        Raises:
            ModelLoadError: no such model, no cross scorer, or one that does not fit it.
        """
        from .loading import resolve

        if isinstance(model, Encoder):
            return cls(model, CrossPlugin.from_dir(model.root))
        rm = resolve(model)
        plugin = CrossPlugin.from_dir(rm.root)
        if precision == "int8":
            precision = "fp32"  # the plug-in reads the encoder's fp32 layers
        return cls(Encoder.from_resolved(rm, device=device, precision=precision), plugin)

    @property
    def num_ranks(self) -> int:
        return self.plugin.num_ranks

    def rank_probs(
        self,
        src: Sequence[str],
        tgt: Sequence[str],
        batch_tokens: int = DEFAULT_PAIR_TOKENS,
        progress: Progress | None = None,
    ) -> np.ndarray:
        """Rank probabilities of aligned pairs ``(src[i], tgt[i])``.

        Pairs are sorted by length and cut into batches of at most ``batch_tokens`` padded
        tokens (both sides); results come back in input order.

        Returns:
            (n, N) float32, rows sum to 1 (rank N-1 = translation).
        """
        return self._score(src, tgt, batch_tokens, progress, cosine=False)[0]

    def scores(
        self,
        src: Sequence[str],
        tgt: Sequence[str],
        batch_tokens: int = DEFAULT_PAIR_TOKENS,
        progress: Progress | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``rank_probs`` and the cosine of the two sides' own embeddings (the plain top
        layers run from the plug-in's lower states: the vectors of ``Encoder.encode``, up to
        float rounding; ~1/6 more work with 2 plugged layers of 12).

        Returns:
            ``probs`` (n, N) and ``cosine`` (n,), float32, in input order.
        """
        return self._score(src, tgt, batch_tokens, progress, cosine=True)

    def _score(self, src, tgt, batch_tokens, progress, cosine: bool):
        from .pooling import pool

        if len(src) != len(tgt):
            raise InputError(f"{len(src)} source sentences but {len(tgt)} target sentences")
        progress = progress or null_progress
        enc, net, plugin, cfg = self.encoder, self.encoder.net, self.plugin, self.encoder.config
        n = len(src)
        probs = np.empty((n, self.num_ranks), dtype=np.float32)
        cos = np.full(n, np.nan, dtype=np.float32)
        if n == 0:
            return probs, cos
        ia, ib = enc.tokenize(src), enc.tokenize(tgt)
        lengths = np.fromiter(
            (max(len(x), len(y)) for x, y in zip(ia, ib, strict=True)), np.int64, n
        )
        order = np.argsort(-lengths, kind="stable")
        start = 0
        with torch.inference_mode():
            while start < n:
                size = max(1, batch_tokens // (2 * max(1, int(lengths[order[start]]))))
                b = order[start : start + size]
                a, ma = pad_batch([ia[i] for i in b], enc.pad_id, enc.device)
                c, mc = pad_batch([ib[i] for i in b], enc.pad_id, enc.device)
                with enc._autocast():
                    ha, hc = plugin.lower(net, a, ma), plugin.lower(net, c, mc)
                    logits = plugin.pair_logits(net, ha, ma, hc, mc).float()
                    if cosine:
                        ea, ec = (
                            pool(net.run_layers(h, m, plugin.start), m, cfg.pooling, True)
                            for h, m in ((ha, ma), (hc, mc))
                        )
                        cos[b] = (ea.float() * ec.float()).sum(1).cpu().numpy()
                probs[b] = torch.softmax(logits, dim=-1).cpu().numpy()
                progress(len(b))
                start += size
        return probs, cos
