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

import numpy as np
import torch
from torch import Tensor, nn

from ..models.pooling import pool


def extended_mask(model, mask: Tensor, hidden: Tensor):
    """The attention mask in the form the model's layers expect (built as the model would)."""
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
    identity-initialised, if ``projection``). Sentence vector = normalise(proj(mean-pool(h)))."""

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

    def trunk(self, ids: Tensor, mask: Tensor) -> tuple[Tensor, object]:
        """Frozen part: (B, L) ids -> hidden states at the split (or ids if embeddings train)."""
        with torch.no_grad():
            if "emb" in self.top:
                h = self.model.embeddings.word_embeddings(ids[:, :1])  # only for the mask dtype
                return ids, extended_mask(
                    self.model, mask, h.expand(ids.shape[0], ids.shape[1], -1)
                )
            h = self.model.embeddings(input_ids=ids)
            ext = extended_mask(self.model, mask, h)
            for layer in self.trunk_layers:
                h = _layer_out(layer(h, ext))
            return h, ext

    def top_hidden(self, top: nn.ModuleDict, x: Tensor, ext) -> Tensor:
        """Token states after the top layers of ``top`` (the query's or the key's copy)."""
        h = top["emb"](input_ids=x) if "emb" in top else x
        for layer in top["layers"]:
            h = _layer_out(layer(h, ext))
        return h

    def sentence(self, top: nn.ModuleDict, h: Tensor, mask: Tensor) -> Tensor:
        """(B, L, d) token states -> (B, d) float32 sentence vectors."""
        v = pool(h, mask, self.pooling, normalize=False)
        if "proj" in top:
            v = top["proj"](v).float()
        return nn.functional.normalize(v, dim=-1) if self.normalize else v


def pad_batch(ids: list[list[int]], pad_id: int, device) -> tuple[Tensor, Tensor]:
    """Token id lists -> (B, L) int64 ids and (B, L) attention mask."""
    L = max(len(x) for x in ids)
    arr = np.full((len(ids), L), pad_id, dtype=np.int64)
    mask = np.zeros((len(ids), L), dtype=np.int64)
    for i, x in enumerate(ids):
        arr[i, : len(x)] = x
        mask[i, : len(x)] = 1
    return torch.from_numpy(arr).to(device), torch.from_numpy(mask).to(device)


class MomentumQueue(nn.Module):
    """Key encoder (momentum copy of the query ``top``) and a FIFO queue of K key vectors.

    Buffers: ``queue`` (K, d) float32, ``ptr`` (next write position), ``filled`` (valid rows)."""

    def __init__(self, query_top: nn.Module, dim: int, size: int, momentum: float = 0.999):
        super().__init__()
        self.key_top = copy.deepcopy(query_top)  # exact copy at construction (MoCo; fixes F1)
        for p in self.key_top.parameters():
            p.requires_grad_(False)
        self.momentum, self.size = float(momentum), int(size)
        self.register_buffer("queue", torch.zeros(self.size, dim))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def momentum_update(self, query_top: nn.Module) -> None:
        """xi <- m xi + (1 - m) theta for every key parameter."""
        for pk, pq in zip(self.key_top.parameters(), query_top.parameters(), strict=False):
            pk.mul_(self.momentum).add_(pq.detach(), alpha=1.0 - self.momentum)

    def entries(self) -> Tensor:
        """The valid queue rows, (filled, d)."""
        return self.queue[: int(self.filled)]

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Write (n, d) keys at the pointer with wrap-around; n > K keeps the last K."""
        if self.size == 0:
            return
        keys = keys.detach().float()[-self.size :]
        n, p = keys.shape[0], int(self.ptr)
        idx = (torch.arange(n, device=keys.device) + p) % self.size
        self.queue[idx] = keys
        self.ptr.fill_((p + n) % self.size)
        self.filled.fill_(min(self.size, int(self.filled) + n))
