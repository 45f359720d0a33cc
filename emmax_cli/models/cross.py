"""VECO's plug-in cross-attention as a pair scorer (Luo et al., ACL 2021, §3).

A ``CrossPlugin`` adds one cross-attention block to each of the top ``layers`` transformer
layers of a frozen encoder, between self-attention and the feed-forward block: queries from one
sentence, keys and values from the other (initialised from the layer's own self-attention, as
VECO does), and a classification head over the N semantic ranks. Plugged out, the encoder runs
its own unchanged code (``EncoderNet.forward``), so embeddings are bit-identical with or without
the plug-in; plugged in, ``pair_logits`` reads a pair jointly. The same block serves both
directions and the head sees symmetric features, so ``score(x, y) == score(y, x)``.

Files in a model directory: ``cross_head.safetensors`` (weights) + ``cross_head.json`` (shape,
the encoder it was trained on, its training card)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..errors import ModelLoadError
from .modeling import EncoderNet, self_mask

WEIGHTS_FILE = "cross_head.safetensors"
CONFIG_FILE = "cross_head.json"
FORMAT = "emmax-cross-1"


class CrossBlock(nn.Module):
    """Cross-attention with add & norm: ``LN(h + O(attn(Q h, K o, V o)))``."""

    def __init__(self, hidden: int, heads: int, eps: float):
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value, self.out = (nn.Linear(hidden, hidden) for _ in range(4))
        self.norm = nn.LayerNorm(hidden, eps=eps)

    def init_from_layer(self, layer) -> None:
        """Copy the self-attention of an ``EncoderNet`` layer (VECO's initialisation)."""
        a = layer.attention
        pairs = [
            (self.query, a.self.query),
            (self.key, a.self.key),
            (self.value, a.self.value),
            (self.out, a.output.dense),
            (self.norm, a.output.LayerNorm),
        ]
        with torch.no_grad():
            for mine, theirs in pairs:
                mine.weight.copy_(theirs.weight)
                mine.bias.copy_(theirs.bias)

    def forward(self, h: Tensor, other: Tensor, other_mask: Tensor) -> Tensor:
        B, L, _ = h.shape
        M = other.shape[1]
        q = self.query(h).view(B, L, self.heads, -1).transpose(1, 2)
        k, v = (f(other).view(B, M, self.heads, -1).transpose(1, 2) for f in (self.key, self.value))
        mask = other_mask.bool()[:, None, None, :]
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=q.shape[-1] ** -0.5)
        ctx = ctx.transpose(1, 2).reshape(B, L, -1)
        return self.norm(h + self.out(ctx))


def _pool(h: Tensor, mask: Tensor) -> Tensor:
    """Mean and max over the tokens of each sentence: (B, 2H)."""
    m = mask.unsqueeze(-1).to(h.dtype)
    mean = (h * m).sum(1) / m.sum(1).clamp_min(1.0)
    mx = h.masked_fill(m == 0, torch.finfo(h.dtype).min).amax(1)
    return torch.cat([mean, mx], dim=-1)


class CrossPlugin(nn.Module):
    """The plug-in: cross blocks for the top ``layers`` layers and a rank head.

    Args:
        hidden: the encoder's hidden width.
        heads: its attention heads.
        num_layers: the encoder's layer count.
        layers: how many top layers get a cross block.
        num_ranks: N semantic ranks (0 = unrelated ... N-1 = translation).
        eps: the LayerNorm epsilon of the encoder.
        card: what the plug-in was trained on (written to ``cross_head.json``).
    """

    def __init__(
        self,
        hidden: int,
        heads: int,
        num_layers: int,
        layers: int = 4,
        num_ranks: int = 4,
        eps: float = 1e-12,
        card: dict[str, Any] | None = None,
    ):
        super().__init__()
        if not 1 <= layers <= num_layers:
            raise ValueError(f"layers must be in 1..{num_layers}, not {layers}")
        self.hidden, self.heads, self.num_layers = hidden, heads, num_layers
        self.layers, self.num_ranks, self.eps = layers, num_ranks, eps
        self.card = dict(card or {})
        # added to the top rank's logit: the prior shift calibrated after training so that a
        # chosen share of held-out translations get the top rank (train/cross.py)
        self.top_bias = 0.0
        self.blocks = nn.ModuleList(CrossBlock(hidden, heads, eps) for _ in range(layers))
        self.head = nn.Sequential(
            nn.Linear(6 * hidden, hidden), nn.GELU(), nn.Linear(hidden, num_ranks)
        )

    @property
    def start(self) -> int:
        """The first plugged layer."""
        return self.num_layers - self.layers

    @classmethod
    def for_net(cls, net: EncoderNet, layers: int = 4, num_ranks: int = 4) -> CrossPlugin:
        """A new plug-in for ``net``, its blocks initialised from the layers' self-attention."""
        c = net.config_dict
        p = cls(
            c["hidden_size"],
            c["num_attention_heads"],
            c["num_hidden_layers"],
            layers,
            num_ranks,
            c.get("layer_norm_eps", 1e-12),
        )
        for blk, layer in zip(p.blocks, net.encoder.layer[p.start :], strict=True):
            blk.init_from_layer(layer)
        return p

    def check_net(self, net: EncoderNet, where: str = "the cross scorer") -> None:
        """Raise ModelLoadError if ``net`` is not the shape this plug-in was trained for."""
        c = net.config_dict
        shape = (c["hidden_size"], c["num_attention_heads"], c["num_hidden_layers"])
        if shape != (self.hidden, self.heads, self.num_layers):
            raise ModelLoadError(
                f"{where} was trained for an encoder of width {self.hidden}, {self.heads} heads, "
                f"{self.num_layers} layers; this one has {shape[0]}, {shape[1]}, {shape[2]}",
                hint="use the model the cross_head files came with",
            )

    # ---- forward -------------------------------------------------------------------------
    def lower(self, net: EncoderNet, ids: Tensor, mask: Tensor) -> Tensor:
        """Hidden states entering the first plugged layer (the frozen, unplugged part)."""
        return net.run_layers(net.embeddings(ids), mask, 0, self.start)

    def pair_logits(
        self, net: EncoderNet, ha: Tensor, ma: Tensor, hb: Tensor, mb: Tensor
    ) -> Tensor:
        """Rank logits of pairs read jointly.

        Args:
            net: the frozen encoder.
            ha, hb: (B, L, H) states of each side entering the first plugged layer (``lower``).
            ma, mb: (B, L) their attention masks.

        Returns:
            (B, N) logits over the semantic ranks.
        """
        sa, sb = self_mask(ma), self_mask(mb)
        for blk, layer in zip(self.blocks, net.encoder.layer[self.start :], strict=True):
            a1, b1 = layer.attend(ha, sa), layer.attend(hb, sb)
            ha, hb = layer.feed(blk(a1, b1, mb)), layer.feed(blk(b1, a1, ma))
        u, v = _pool(ha, ma), _pool(hb, mb)
        logits = self.head(torch.cat([u + v, (u - v).abs(), u * v], dim=-1))
        if self.top_bias:
            logits = logits + F.pad(logits.new_full((1,), self.top_bias), (self.num_ranks - 1, 0))
        return logits

    # ---- files ---------------------------------------------------------------------------
    def config_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "hidden": self.hidden,
            "heads": self.heads,
            "num_layers": self.num_layers,
            "layers": self.layers,
            "num_ranks": self.num_ranks,
            "eps": self.eps,
            "top_bias": self.top_bias,
            "card": self.card,
        }

    def save(self, directory: str | os.PathLike, half: bool = False) -> Path:
        """Write ``cross_head.safetensors`` + ``cross_head.json`` into ``directory``
        (``half``: weights as float16, half the size; loading reads them as float32)."""
        from safetensors.torch import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        dtype = torch.float16 if half else torch.float32
        state = {k: v.detach().cpu().to(dtype).contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(d / WEIGHTS_FILE))
        (d / CONFIG_FILE).write_text(json.dumps(self.config_dict(), indent=2) + "\n")
        return d / WEIGHTS_FILE

    @classmethod
    def from_dir(cls, directory: str | os.PathLike) -> CrossPlugin:
        """Load the plug-in of a model directory.

        Raises:
            ModelLoadError: no plug-in there, or its files are unreadable or do not match.
        """
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        d = Path(directory)
        cfg_path, w_path = d / CONFIG_FILE, d / WEIGHTS_FILE
        if not cfg_path.exists() or not w_path.exists():
            raise ModelLoadError(
                f"{d}: no cross scorer ({CONFIG_FILE} + {WEIGHTS_FILE})",
                hint="train one with `emmax train --phase cross`, or drop --cross/--rerank",
            )
        try:
            c = json.loads(cfg_path.read_text(encoding="utf-8"))
            if c.get("format") != FORMAT:
                raise ValueError(f"format {c.get('format')!r}, expected {FORMAT!r}")
            p = cls(
                int(c["hidden"]),
                int(c["heads"]),
                int(c["num_layers"]),
                int(c["layers"]),
                int(c["num_ranks"]),
                float(c.get("eps", 1e-12)),
                c.get("card"),
            )
            p.top_bias = float(c.get("top_bias", 0.0))
            state = load_file(str(w_path))
            p.load_state_dict({k: v.float() for k, v in state.items()})
        except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as e:
            raise ModelLoadError(
                f"{d}: unreadable cross scorer ({str(e).splitlines()[0][:200]})",
                hint="re-copy the model directory or retrain with `emmax train --phase cross`",
            ) from None
        return p.eval()


def has_cross(directory: str | os.PathLike | None) -> bool:
    """Whether a model directory carries a cross scorer."""
    return directory is not None and (Path(directory) / CONFIG_FILE).exists()
