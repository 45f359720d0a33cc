"""Query encoder (trainable top of the base model), momentum key encoder and key queue.

The base transformer is split at ``train_layers``: the frozen bottom (embeddings and lower
layers) runs once per batch without gradient and is shared by the query and the key encoder,
since a momentum copy of a frozen parameter equals the parameter. Only the trainable top (upper
layers, optional projection) exists twice: as the query ``top`` and as the key encoder's copy.

MoCo (He et al. 2020; facebookresearch/moco ``builder.py``): the key encoder is an exact copy of
the query encoder at construction (fixes F1), updated by xi <- m xi + (1 - m) theta; the queue is
a FIFO of any size with wrap-around writes (fixes F7), kept as buffers so that it is saved with
the state dict. It starts empty: only entries already written are candidates."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..device import autocast
from ..models.pooling import pool
from ..models.tokenizer import pad_batch


def extended_mask(model: nn.Module, mask: Tensor, hidden: Tensor) -> Any:
    """The attention mask in the form the model's layers expect (built as the model would).

    Args:
        model: the transformers encoder.
        mask: (B, L) attention mask.
        hidden: (B, L, d) embedding output (gives the dtype).

    Returns:
        What the model's layers take as their attention mask (transformers-version specific).
    """
    if hasattr(model, "_create_attention_masks"):
        return model._create_attention_masks(
            attention_mask=mask,
            encoder_attention_mask=None,
            embedding_output=hidden,
            encoder_hidden_states=None,
            cache=None,
        )[0]
    return model.get_extended_attention_mask(mask, mask.shape)  # transformers < 5


def _layer_out(out):
    return out[0] if isinstance(out, tuple) else out


class SplitEncoder(nn.Module):
    """A BERT-style encoder split into a frozen trunk and a trainable ``top``.

    ``top`` is an ``nn.ModuleDict`` with ``layers`` (the top n layers), ``emb`` (the embeddings,
    only when every layer trains and embeddings are not frozen) and ``proj`` (d x d linear,
    identity-initialised, if ``projection``). Sentence vector = normalise(proj(mean-pool(h))).

    Args:
        model: the transformers encoder (its layers are shared, not copied).
        train_layers: how many top layers train; -1 = all.
        freeze_embeddings: keep the embeddings frozen even when every layer trains.
        projection: add the d x d projection after pooling.
        pooling: the base model's pooling (``mean`` or ``cls``).
        normalize: L2-normalise sentence vectors.
    """

    def __init__(
        self,
        model,
        train_layers: int = -1,
        freeze_embeddings: bool = False,
        projection: bool = False,
        pooling: str = "mean",
        normalize: bool = True,
    ):
        super().__init__()
        layers = model.encoder.layer
        n = len(layers) if train_layers < 0 else min(train_layers, len(layers))
        self.model, self.pooling, self.normalize = model, pooling, normalize
        self.split = len(layers) - n
        top = nn.ModuleDict({"layers": nn.ModuleList(layers[self.split :])})
        if self.split == 0 and not freeze_embeddings:
            top["emb"] = model.embeddings
        if projection:
            d = model.config.hidden_size
            top["proj"] = nn.Linear(d, d)
            with torch.no_grad():
                top["proj"].weight.copy_(torch.eye(d))
                top["proj"].bias.zero_()
        self.top = top
        for p in model.parameters():
            p.requires_grad_(False)
        for p in top.parameters():
            p.requires_grad_(True)
        self.trunk_layers = list(layers[: self.split])

    def load_projection(self, model_dir: str | os.PathLike) -> bool:
        """Load ``projection.safetensors`` of a model directory into ``top["proj"]``.

        Args:
            model_dir: a model directory (an earlier phase's export) or a model name.

        Returns:
            True if a projection was loaded; False if this encoder has none or the directory
            holds none.
        """
        f = Path(str(model_dir)) / "projection.safetensors"
        if "proj" not in self.top or not f.exists():
            return False
        from safetensors.torch import load_file

        self.top["proj"].load_state_dict(load_file(str(f)))
        return True

    def trunk(self, ids: Tensor, mask: Tensor, layers: list | None = None) -> tuple[Tensor, object]:
        """The frozen part, run once per batch without gradient.

        Args:
            ids: (B, L) int64 token ids.
            mask: (B, L) attention mask.
            layers: stand-ins for the frozen layers (``encoding.lowp_copy``), or None.

        Returns:
            ``(h, ext)``: (B, L, d) hidden states at the split (or the ids themselves when
            the embeddings train), and the layers' attention mask.
        """
        with torch.no_grad():
            if "emb" in self.top:
                h = self.model.embeddings.word_embeddings(ids[:, :1])  # only for the mask dtype
                return ids, extended_mask(
                    self.model, mask, h.expand(ids.shape[0], ids.shape[1], -1)
                )
            h = self.model.embeddings(input_ids=ids)
            ext = extended_mask(self.model, mask, h)
            for layer in self.trunk_layers if layers is None else layers:
                h = _layer_out(layer(h, ext))
            return h, ext

    def top_hidden(self, top: nn.ModuleDict, x: Tensor, ext) -> Tensor:
        """Token states after the trainable top.

        Args:
            top: the query's ``top`` or the key encoder's copy.
            x: the trunk's output (``trunk``).
            ext: the layers' attention mask (``trunk``).

        Returns:
            (B, L, d) token states.
        """
        h = top["emb"](input_ids=x) if "emb" in top else x
        for layer in top["layers"]:
            h = _layer_out(layer(h, ext))
        return h

    def sentence(self, top: nn.ModuleDict, h: Tensor, mask: Tensor) -> Tensor:
        """Pool token states into sentence vectors.

        Args:
            top: the ``top`` whose projection applies.
            h: (B, L, d) token states.
            mask: (B, L) attention mask.

        Returns:
            (B, d) sentence vectors (L2-normalised if ``normalize``).
        """
        v = pool(h, mask, self.pooling, normalize=False)
        if "proj" in top:
            v = top["proj"](v).float()
        return nn.functional.normalize(v, dim=-1) if self.normalize else v


def lang_ids(langs: list[str], device: Any = "cpu") -> Tensor:
    """Stable integer ids of language codes (CRC-32), the same in every run and process.

    Args:
        langs: language codes (``Batch.langs``); "" or a missing code is unknown.
        device: where the tensor goes.

    Returns:
        (n,) int64 ids; -1 for unknown.
    """
    import zlib

    return torch.tensor(
        [zlib.crc32(g.encode()) if g else -1 for g in langs], dtype=torch.long, device=device
    )


def token_ids(
    tok: Any, texts: list[str], prefix: str, pad_id: int, device: str
) -> tuple[Tensor, Tensor]:
    """Tokenise and pad a list of sentences.

    Args:
        tok: a ``tokenizers.Tokenizer`` (with truncation set).
        texts: the sentences.
        prefix: prepended to every sentence (the base model's query prefix; "" for none).
        pad_id: the padding token id.
        device: where the tensors go.

    Returns:
        ``(ids, mask)``: (B, L) int64 token ids and (B, L) int64 attention mask.
    """
    encs = tok.encode_batch([prefix + t for t in texts] if prefix else list(texts))
    return pad_batch([e.ids for e in encs], pad_id, device)


@torch.no_grad()
def embed_texts(
    enc: SplitEncoder,
    tok: Any,
    texts: list[str],
    prefix: str,
    pad_id: int,
    device: str,
    precision: str = "fp32",
    batch_size: int = 128,
    cache: dict | None = None,
) -> Tensor:
    """Query-encoder embeddings in eval mode (the training mode of ``enc.top`` is restored).

    Args:
        enc: the split encoder.
        tok: the training tokenizer.
        texts: the sentences.
        prefix: the base model's input prefix ("" for none).
        pad_id: the padding token id.
        device: where the model is.
        precision: fp32, bf16 or fp16 (autocast).
        batch_size: sentences per forward pass (sorted by length to cut padding).
        cache: optional dict, keyed by a batch's sentences, of the frozen trunk's outputs:
            filled on the first call and reused after (the dev set is embedded every
            ``run.eval_every`` steps; the trunk is two thirds of the forward). The same batch
            gives the same trunk output bit for bit, so the embeddings do not change.

    Returns:
        (n, d) float32 embeddings on the CPU, in input order.
    """
    was = enc.top.training
    enc.top.eval()
    out = []
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    for s in range(0, len(texts), batch_size):
        idx = order[s : s + batch_size]
        key = tuple(texts[i] for i in idx)
        if cache is not None and key in cache:
            m, h, ext = cache[key]
        else:
            x, m = token_ids(tok, list(key), prefix, pad_id, device)
            h, ext = enc.trunk(x, m)
            if cache is not None:
                cache[key] = (m, h, ext)
        with autocast(device, precision):
            v = enc.sentence(enc.top, enc.top_hidden(enc.top, h, ext), m)
        out.append(v.float().cpu())
    enc.top.train(was)
    emb = torch.cat(out)
    res = torch.empty_like(emb)
    res[torch.tensor(order)] = emb
    return res


class MomentumQueue(nn.Module):
    """Key encoder (momentum copy of the query ``top``) and a FIFO queue of K key vectors.

    Buffers: ``queue`` (K, d) float32, ``ptr`` (next write position), ``filled`` (valid rows).

    Args:
        query_top: the query encoder's trainable top (copied exactly).
        dim: d, the width of the keys.
        size: K, the queue length (0 = no queue).
        momentum: m of the key encoder's update.
    """

    def __init__(self, query_top: nn.Module, dim: int, size: int, momentum: float = 0.999):
        super().__init__()
        self.key_top = copy.deepcopy(query_top)  # exact copy at construction (MoCo; fixes F1)
        for p in self.key_top.parameters():
            p.requires_grad_(False)
        self.momentum, self.size = float(momentum), int(size)
        self.register_buffer("queue", torch.zeros(self.size, dim))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))
        # language id of each entry (``lang_ids``; -1 = unknown): the em relatedness filter
        # needs to know which candidates are cross-lingual
        self.register_buffer("lang", torch.full((self.size,), -1, dtype=torch.long))

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """``nn.Module.load_state_dict``; a checkpoint written before the queue kept entry
        languages (no ``lang``) loads with every language unknown (-1)."""
        if "lang" not in state_dict:
            state_dict = dict(state_dict)
            state_dict["lang"] = torch.full_like(self.lang, -1)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    @torch.no_grad()
    def momentum_update(self, query_top: nn.Module) -> None:
        """xi <- m xi + (1 - m) theta for every key parameter.

        Args:
            query_top: the query encoder's top (theta).
        """
        for pk, pq in zip(self.key_top.parameters(), query_top.parameters(), strict=False):
            pk.mul_(self.momentum).add_(pq.detach(), alpha=1.0 - self.momentum)

    def entries(self) -> Tensor:
        """The queue rows written so far.

        Returns:
            (filled, d) float32 keys.
        """
        return self.queue[: int(self.filled)]

    def entry_langs(self) -> Tensor:
        """The language ids of the rows ``entries`` returns.

        Returns:
            (filled,) int64; -1 where unknown.
        """
        return self.lang[: int(self.filled)]

    @torch.no_grad()
    def enqueue(self, keys: Tensor, langs: Tensor | None = None) -> None:
        """Write keys at the pointer with wrap-around.

        Args:
            keys: (n, d) keys; with n > K only the last K are kept.
            langs: optional (n,) int64 language ids of the keys (-1 where unknown).
        """
        if self.size == 0:
            return
        keys = keys.detach().float()[-self.size :]
        n, p = keys.shape[0], int(self.ptr)
        idx = (torch.arange(n, device=keys.device) + p) % self.size
        self.queue[idx] = keys
        self.lang[idx] = -1 if langs is None else langs[-self.size :].to(self.lang)
        self.ptr.fill_((p + n) % self.size)
        self.filled.fill_(min(self.size, int(self.filled) + n))
