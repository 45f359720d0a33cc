"""The encoder forward of one training micro-batch: frozen trunk, query top (with gradient) and
key top (without), optionally in length-sorted sub-batches.

A micro-batch of B sentences padded to its longest sentence is ~40 % padding on the training
data (../shared/data/train, max_length 48). With ``run.sub_batches = n > 1`` the rows are sorted
by token length and cut into at most n contiguous groups (``length_buckets``: the cut that
minimises padded tokens); each group runs trunk, query top and key top with its own padding,
and the sentence vectors are put back in batch order. Pooling is per sentence and padded
positions are masked out of attention, so the loss is the same function of the same
sentences: only float summation order changes (about 1e-6 on the embeddings).
``run.sub_batches = 1`` is the single padded batch, bit for bit the earlier recipe.

``run.key_precision`` and ``run.trunk_precision``: the precision of the two forwards without
gradient, the key encoder and the frozen trunk (``fp32`` for the trunk, ``same`` for the key:
the earlier recipe). ``same`` is the run's precision; ``auto`` is bf16 where the hardware
computes it natively (AVX-512 BF16 or AMX CPUs, CUDA with bf16), else the run's precision
(bf16 is ~7x slower than fp32 on AVX2-only CPUs). bf16 here changes the loss numerically (keys
and the trained top's input rounded to ~3 significant digits); the query's trained layers,
their gradient and the optimiser stay in the run's precision."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from ..device import autocast, cpu_has_bf16
from ..models.tokenizer import pad_batch

if TYPE_CHECKING:
    from .step import StepHost

# Fixed cost of one more sub-batch, in padded tokens (a forward call's overhead, measured on a
# 2-core CPU with multilingual-e5-small: ~4 ms, the time of ~64 tokens through 12 layers).
BUCKET_OVERHEAD_TOKENS = 64


def length_buckets(lengths: list[int] | np.ndarray, max_buckets: int) -> list[np.ndarray]:
    """Cut rows into at most ``max_buckets`` groups of similar length with the fewest padded
    tokens (dynamic programming over the rows sorted by length).

    Args:
        lengths: B token counts.
        max_buckets: the most groups; 1 gives one group with the rows in their given order.

    Returns:
        The groups: arrays of row indices, shortest sentences first, each sorted by length
        (stable, so equal lengths keep their batch order). Every row is in exactly one group.
    """
    n = len(lengths)
    if max_buckets <= 1 or n <= 1:
        return [np.arange(n)]
    order = np.argsort(np.asarray(lengths), kind="stable")
    ls = np.asarray(lengths, dtype=np.int64)[order]
    k_max = min(max_buckets, n)
    # cost[i, j]: sorted rows i..j-1 as one group, padded to ls[j-1] (i < j; else infinite)
    i = np.arange(n + 1)[:, None]
    j = np.arange(n + 1)[None, :]
    width = ls[np.clip(j - 1, 0, n - 1)]
    cost = np.where(j > i, (j - i) * width + BUCKET_OVERHEAD_TOKENS, np.inf)
    dp = [cost[0]]  # dp[k-1][j]: the best cut of rows 0..j-1 into exactly k groups
    arg = [np.zeros(n + 1, dtype=np.int64)]
    for _ in range(1, k_max):
        total = dp[-1][:, None] + cost  # (i, j): k groups up to i, then one group i..j-1
        a = np.argmin(total, axis=0)
        arg.append(a)
        dp.append(total[a, np.arange(n + 1)])
    k = int(np.argmin([d[n] for d in dp]))  # first minimum: ties keep fewer groups
    cuts, j_end = [n], n
    while k > 0:
        j_end = int(arg[k][j_end])
        cuts.append(j_end)
        k -= 1
    cuts = sorted(set(cuts + [0]))
    return [order[a:b] for a, b in zip(cuts[:-1], cuts[1:], strict=False)]


def key_precision(setting: str, run_precision: str, device: str) -> str:
    """Resolve ``run.key_precision`` or ``run.trunk_precision``.

    Args:
        setting: ``same``, ``auto``, ``fp32`` or ``bf16``.
        run_precision: the run's resolved precision (fp32, bf16 or fp16).
        device: the resolved device.

    Returns:
        fp32, bf16 or fp16: ``auto`` is bf16 where the hardware computes it natively, else
        the run's precision.
    """
    if setting == "same":
        return run_precision
    if setting == "auto":
        if device.startswith("cuda"):
            return "bf16" if torch.cuda.is_bf16_supported() else run_precision
        return "bf16" if cpu_has_bf16() else run_precision
    return setting


@dataclass
class EncodedBatch:
    """The tokenised micro-batch and how it was cut.

    Attributes:
        x: (B, L) int64 token ids padded to the longest sentence (the MLM masking draws on
            this shape, whatever the sub-batches, so its random numbers do not change).
        mask: (B, L) int64 attention mask.
        groups: the sub-batches, as (b,) int64 row-index tensors.
        widths: each sub-batch's padded length.
    """

    x: Tensor
    mask: Tensor
    groups: list[Tensor]
    widths: list[int]

    def rows(self, g: int, t: Tensor) -> Tensor:
        """Rows of sub-batch ``g`` of a (B, L, ...) tensor, cut to the sub-batch's width.

        Args:
            g: the sub-batch index.
            t: a (B, L, ...) tensor in batch order.

        Returns:
            (b, L_g, ...): the sub-batch's rows and columns.
        """
        idx, w = self.groups[g], self.widths[g]
        if len(self.groups) == 1 and w == t.shape[1]:
            return t  # one group: the batch itself (bit for bit the single padded batch)
        return t[idx, :w]

    def unsort(self, parts: list[Tensor]) -> Tensor:
        """Put per-sub-batch rows back in batch order.

        Args:
            parts: one (b_g, ...) tensor per sub-batch.

        Returns:
            (B, ...) in batch order (differentiable).
        """
        if len(parts) == 1:
            return parts[0]
        idx = torch.cat(self.groups)
        inv = torch.empty_like(idx)
        inv[idx] = torch.arange(len(idx), device=idx.device)
        return torch.cat(parts)[inv]


def tokenize(tr: StepHost, texts: list[str]) -> EncodedBatch:
    """Tokenise once and cut the batch into ``run.sub_batches`` length groups.

    Args:
        tr: a set-up trainer.
        texts: the B sentences of the micro-batch.

    Returns:
        The encoded batch.
    """
    src = [tr.prefix + t for t in texts] if tr.prefix else list(texts)
    ids = [e.ids for e in tr.tok.encode_batch(src)]
    x, mask = pad_batch(ids, tr.pad_id, tr.device)
    lengths = [len(i) for i in ids]
    cut = length_buckets(lengths, tr.cfg.run.sub_batches)
    groups = [torch.as_tensor(g, dtype=torch.long, device=x.device) for g in cut]
    widths = [int(max(lengths[i] for i in g)) for g in cut]
    return EncodedBatch(x, mask, groups, widths)


def _precision(device: str, precision: str):
    """An autocast context for ``precision`` that also holds inside another autocast region
    (fp32 disables autocast there, where ``device.autocast`` would be a no-op)."""
    if precision == "fp32":
        return torch.autocast(
            device_type="cuda" if device.startswith("cuda") else "cpu", enabled=False
        )
    return autocast(device, precision)


def lowp_copy(module: nn.Module, dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """A copy of ``module`` whose ``nn.Linear`` weights and biases are stored in ``dtype``.

    Under autocast the linear layers then run without casting their weights: autocast caches
    casts only of weights that require a gradient, so the frozen trunk's and the key
    encoder's weights would otherwise be cast again for every sub-batch. The values are those
    autocast would cast to (round to nearest even), and the other parameters (LayerNorm) stay
    fp32, so the results are the same as under plain autocast.

    Args:
        module: the module (the frozen layers, or the key encoder's top).
        dtype: the storage type of the linear layers.

    Returns:
        The copy, without gradients.
    """
    out = copy.deepcopy(module)
    for sub in out.modules():
        if isinstance(sub, nn.Linear):
            sub.to(dtype)
    for p in out.parameters():
        p.requires_grad_(False)
    return out


def _shadow(tr: StepHost, name: str, src: nn.Module, refresh: bool) -> nn.Module:
    """The trainer's low-precision copy ``name`` of ``src`` (made once; weights re-copied if
    ``refresh``, for the key encoder, which moves every step)."""
    sh = getattr(tr, name, None)
    if sh is None:
        sh = lowp_copy(src)
        setattr(tr, name, sh)
    elif refresh:
        with torch.no_grad():
            for a, b in zip(sh.parameters(), src.parameters(), strict=True):
                a.copy_(b)
    return sh


def trunk(tr: StepHost, x: Tensor, m: Tensor) -> tuple[Tensor, Any]:
    """The frozen trunk at ``run.trunk_precision``; its output is fp32 for the trained top.

    Args:
        tr: a set-up trainer.
        x: (b, L) token ids.
        m: (b, L) attention mask.

    Returns:
        ``SplitEncoder.trunk``'s ``(h, ext)``, with ``h`` cast to fp32 if it was computed in
        bf16 (so the query's forward and backward stay in the run's precision).
    """
    tp = getattr(tr, "trunk_prec", "fp32")
    layers = None
    if tp == "bf16" and tr.enc.trunk_layers:
        layers = list(_shadow(tr, "_trunk_lowp", nn.ModuleList(tr.enc.trunk_layers), False))
    with _precision(tr.device, tp):
        h, ext = tr.enc.trunk(x, m, layers)
    if h.is_floating_point() and h.dtype != torch.float32:
        h = h.float()
    if torch.is_tensor(ext) and ext.is_floating_point() and ext.dtype != torch.float32:
        ext = ext.float()
    return h, ext


def query_key(tr: StepHost, eb: EncodedBatch) -> tuple[Tensor, Tensor]:
    """Sentence vectors of the query (with gradient) and the key encoder (without), sub-batch
    by sub-batch; the frozen trunk runs once per sub-batch for both.

    All sub-batches run in one autocast region, so the query top's weights are cast to the
    run's precision once per step, not once per sub-batch; a bf16 key encoder runs on a bf16
    copy refreshed once per step (``lowp_copy``).

    Args:
        tr: a set-up trainer.
        eb: the encoded batch (``tokenize``).

    Returns:
        ``(q, k)``: (B, d) float32 each, in batch order; ``k`` has no gradient.
    """
    enc = tr.enc
    kp = getattr(tr, "key_prec", tr.precision)
    key_top = tr.mq.key_top
    if kp == "bf16":
        key_top = _shadow(tr, "_key_lowp", tr.mq.key_top, True)
    qs, ks = [], []
    with autocast(tr.device, tr.precision):
        for g in range(len(eb.groups)):
            x, m = eb.rows(g, eb.x), eb.rows(g, eb.mask)
            h, ext = trunk(tr, x, m)
            qs.append(enc.sentence(enc.top, enc.top_hidden(enc.top, h, ext), m).float())
            with torch.no_grad(), _precision(tr.device, kp):
                ks.append(enc.sentence(key_top, enc.top_hidden(key_top, h, ext), m).float())
    return eb.unsort(qs), eb.unsort(ks)


def mlm_hidden(tr: StepHost, eb: EncodedBatch, xm: Tensor, chosen: Tensor) -> tuple[Tensor, Any]:
    """Top-layer states at the masked positions of a masked copy of the batch.

    Args:
        tr: a set-up trainer with an MLM head.
        eb: the encoded batch.
        xm: (B, L) masked token ids (``losses.mask_tokens`` on ``eb.x``).
        chosen: (B, L) bool, the masked positions.

    Returns:
        ``(hs, targets)``: (M, d) states and (M,) int64 original ids, sub-batch by sub-batch
        (the order of the M positions differs from row-major batch order when the batch is
        cut; the MLM loss is a mean, so only its summation order changes).
    """
    hs, targets = [], []
    for g in range(len(eb.groups)):
        x, m, c = eb.rows(g, xm), eb.rows(g, eb.mask), eb.rows(g, chosen)
        h, ext = trunk(tr, x, m)
        with autocast(tr.device, tr.precision):
            hs.append(tr.enc.top_hidden(tr.enc.top, h, ext)[c])
        targets.append(eb.rows(g, eb.x)[c])
    if len(hs) == 1:
        return hs[0], targets[0]
    return torch.cat(hs), torch.cat(targets)
