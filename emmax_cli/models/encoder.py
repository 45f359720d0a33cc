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
from .config import ModelConfig, ResolvedModel
from .loading import DEFAULT_MODEL, resolve
from .pooling import pool
from .tokenizer import load_tokenizer, pad_batch, pad_id

log = logging.getLogger(__name__)

DEFAULT_BATCH_TOKENS = 8192


class Encoder:
    """A sentence encoder. ``Encoder.load(model)`` then ``encode(texts)`` -> (n, d) float32.

    Inputs are sorted by token length and cut into batches of at most ``batch_tokens``
    padded tokens (memory ~ batch_tokens x hidden x layers activations), or ``batch_size``
    sentences if given; outputs come back in input order. Inputs longer than the model's
    ``max_length`` tokens are truncated; ``n_truncated`` counts them (cumulative over calls;
    set it to 0 to start counting again)."""

    def __init__(
        self,
        model,
        tokenizer,
        config: ModelConfig,
        device: str = "cpu",
        precision: str = "auto",
        root: Path | None = None,
        encoder_dir: Path | None = None,
    ):
        """Wrap a loaded model; most callers use ``Encoder.load``.

        Args:
            model: a ``modeling.EncoderNet`` or a transformers model, on ``device``.
            tokenizer: a ``tokenizers.Tokenizer`` that truncates to ``config.max_length``.
            config: the model's ``emmax.json``.
            device: a resolved device (``cpu``, ``cuda``, ``cuda:N``).
            precision: ``auto``, ``fp32``, ``bf16``, ``fp16`` or ``int8``
                (``device.pick_precision``); int8 quantises ``model``'s linear layers in place
                (``quant.quantize_int8``).
            root: the model directory.
            encoder_dir: the transformers folder (where ``model`` reloads with transformers).

        Raises:
            EmmaxError: an unknown precision, fp16 on CPU, or int8 on CUDA.
        """
        from .modeling import EncoderNet

        self._net = model if isinstance(model, EncoderNet) else None
        self._hf = None if self._net is not None else model
        self.tokenizer = tokenizer
        self.config = config
        self.device = device
        self.root = root
        self.encoder_dir = encoder_dir or (Path(root) / "encoder" if root else None)
        self.precision = pick_precision(precision, device, int8=True)
        if self.precision == "int8":
            from .quant import quantize_int8

            quantize_int8(model)
        self.pad_id = pad_id(tokenizer)
        self.n_truncated = 0

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        name_or_path: str | os.PathLike | None = None,
        device: str = "auto",
        precision: str = "auto",
        verify: bool = True,
    ) -> Encoder:
        """Load a model by built-in name or directory.

        Args:
            name_or_path: a built-in name, a model directory, or None for the default.
            device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
            precision: ``auto``, ``fp32``, ``bf16``, ``fp16`` or ``int8`` (CPU).
            verify: check the model's checksums.

        Returns:
            The encoder, in eval mode, without gradients.

        Raises:
            ModelLoadError: the model cannot be found or loaded.
            EmmaxError: an unavailable device or an unknown precision.
        """
        rm = resolve(name_or_path or DEFAULT_MODEL, verify=verify)
        return cls.from_resolved(rm, device=device, precision=precision)

    @classmethod
    def from_resolved(
        cls, rm: ResolvedModel, device: str = "auto", precision: str = "auto"
    ) -> Encoder:
        """Load the encoder of a resolved model (``loading.resolve``).

        BERT and XLM-R encoders in ``model.safetensors`` run on emmax's own module
        (``modeling.EncoderNet``, same numbers as transformers, without its ~2.5 s import);
        others are loaded with transformers.

        Args:
            rm: the resolved model.
            device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
            precision: ``auto``, ``fp32``, ``bf16``, ``fp16`` or ``int8`` (CPU).

        Returns:
            The encoder.

        Raises:
            ModelLoadError: the weights or the tokenizer cannot be loaded.
            EmmaxError: an unavailable device or an unknown precision.
        """
        from .modeling import load_net, load_transformers_model

        dev = resolve_device(device)
        pick_precision(precision, dev, int8=True)  # an unusable precision fails before loading
        net = load_net(rm.encoder_dir)
        model = net if net is not None else load_transformers_model(rm.encoder_dir)
        model.eval().to(dev)
        for p in model.parameters():
            p.requires_grad_(False)
        cfg = rm.config
        if not cfg.dim:
            cfg.dim = int(net.config_dict["hidden_size"] if net else model.config.hidden_size)
        tok = load_tokenizer(rm.encoder_dir, cfg.max_length)
        return cls(
            model,
            tok,
            cfg,
            device=dev,
            precision=precision,
            root=rm.root,
            encoder_dir=rm.encoder_dir,
        )

    @property
    def model(self):
        """The encoder as a transformers model (what training changes and saves).

        When inference runs on ``EncoderNet``, the first access loads the transformers model
        from the same files onto the encoder's device; from then on ``encode`` runs it too, so
        changes made to it show in the embeddings. At int8 it is quantised as ``EncoderNet``
        was (what training changes is loaded at fp32).
        """
        if self._hf is None:
            from .modeling import load_transformers_model

            hf = load_transformers_model(self.encoder_dir).to(self.device)
            for p in hf.parameters():
                p.requires_grad_(False)
            if self.precision == "int8":
                from .quant import quantize_int8

                quantize_int8(hf)
            self._hf, self._net = hf, None
        return self._hf

    @property
    def net(self):
        """The plain-torch ``EncoderNet`` the encoder runs (what a cross scorer plugs into).

        Raises:
            ModelLoadError: the encoder runs on transformers (another architecture, or changed
                by training) or is quantised.
        """
        from ..errors import ModelLoadError

        if self._net is None or self.precision == "int8":
            raise ModelLoadError(
                f"model {self.config.name}: the cross scorer needs a BERT/XLM-R encoder in "
                "model.safetensors at fp32/bf16",
                hint="use an emmax model directory and --precision fp32",
            )
        return self._net

    @model.setter
    def model(self, model) -> None:
        """Run ``model`` (a transformers model) from now on.

        Args:
            model: the replacement, on the encoder's device.
        """
        self._hf, self._net = model, None

    # ---- properties ---------------------------------------------------------------------
    @property
    def dim(self) -> int:
        """The embedding width."""
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
        """Token ids of each text, with the model's prefix, truncated to ``max_length``
        (counted in ``n_truncated``).

        Args:
            texts: the sentences.

        Returns:
            One list of ids per text.
        """
        p = self.config.prefix
        encs = self.tokenizer.encode_batch([p + t for t in texts] if p else list(texts))
        self.n_truncated += sum(1 for e in encs if e.overflowing)
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
        """Run one batch of token-id lists through the model.

        Args:
            ids: B lists of token ids (padded here with the tokenizer's pad id).

        Returns:
            (B, d) float32 tensor of pooled (and normalised, if the model normalises) vectors.
        """

        input_ids, attn = pad_batch(ids, self.pad_id, self.device)
        with self._autocast():
            if self._net is not None:
                out = self._net(input_ids, attn)
            else:
                out = self._hf(input_ids=input_ids, attention_mask=attn).last_hidden_state
        return pool(out, attn, self.config.pooling, self.config.normalize)

    def encode(
        self,
        texts: Sequence[str],
        batch_tokens: int = DEFAULT_BATCH_TOKENS,
        batch_size: int | None = None,
        progress: Progress | None = None,
    ) -> np.ndarray:
        """Embed sentences.

        Args:
            texts: the sentences.
            batch_tokens: the most padded tokens per batch (memory bound).
            batch_size: sentences per batch instead of the token budget.
            progress: called with the number of sentences done after each batch.

        Returns:
            (n, dim) float32 in input order, L2-normalised if the model normalises.
        """
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
        """Embed an iterable of sentence chunks, yielding one array per chunk (streaming).

        Args:
            chunks: lists of sentences.
            **kw: as ``encode``.

        Yields:
            (len(chunk), dim) float32 per chunk.
        """
        for chunk in chunks:
            yield self.encode(chunk, **kw)
