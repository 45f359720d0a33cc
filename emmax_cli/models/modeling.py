"""The transformer behind an encoder directory.

Inference runs on ``EncoderNet``, a plain-torch BERT / XLM-R encoder that reads ``config.json``
and ``model.safetensors`` itself: importing ``transformers`` and its BERT module costs ~2.5 s
of every short ``emmax embed`` call, the forward pass of 8 sentences ~0.05 s. The layers are
the same torch modules and operations, in the same order, as ``transformers``' ``BertModel``
with its default SDPA attention, so the outputs are the same numbers (``tests/test_models.py``
compares them). Anything else (other architectures, options ``EncoderNet`` does not implement,
``pytorch_model.bin``) is loaded with ``transformers``, as is the model that training and delta
packaging change (``load_transformers_model``)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..errors import ModelLoadError

log = logging.getLogger(__name__)

# model_type -> how positions are numbered: from 0 (BERT), or after the padding index (RoBERTa)
POSITIONS = {
    "bert": "absolute",
    "xlm-roberta": "padded",
    "roberta": "padded",
    "camembert": "padded",
}
ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu}


class _Param(nn.Module):
    """A module holding given tensors as parameters: no initialisation to pay for (random
    init of a 250k-row embedding, and on the meta device an import of torch._dynamo)."""

    def __init__(self, state: dict[str, Tensor], prefix: str, names: tuple[str, ...]):
        super().__init__()
        for n in names:
            self.register_parameter(n, nn.Parameter(state.pop(prefix + n), requires_grad=False))


class _Linear(_Param):
    def __init__(self, state: dict[str, Tensor], prefix: str):
        super().__init__(state, prefix, ("weight", "bias"))

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)  # as nn.Linear


class _LayerNorm(_Param):
    def __init__(self, state: dict[str, Tensor], prefix: str, eps: float):
        super().__init__(state, prefix, ("weight", "bias"))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


class _Embedding(_Param):
    def __init__(self, state: dict[str, Tensor], prefix: str):
        super().__init__(state, prefix, ("weight",))

    def forward(self, ids: Tensor) -> Tensor:
        return F.embedding(ids, self.weight)


class _Embeddings(nn.Module):
    def __init__(self, c: dict, s: dict[str, Tensor], p: str):
        super().__init__()
        self.word_embeddings = _Embedding(s, p + "word_embeddings.")
        self.position_embeddings = _Embedding(s, p + "position_embeddings.")
        self.token_type_embeddings = _Embedding(s, p + "token_type_embeddings.")
        self.LayerNorm = _LayerNorm(s, p + "LayerNorm.", c.get("layer_norm_eps", 1e-12))
        self.padded = POSITIONS[c["model_type"]] == "padded"
        self.pad = c.get("pad_token_id", 0) or 0

    def forward(self, ids: Tensor) -> Tensor:
        if self.padded:  # XLM-R: positions count real tokens, starting after the padding index
            m = ids.ne(self.pad).int()
            pos = (torch.cumsum(m, dim=1).type_as(m) * m).long() + self.pad
        else:
            pos = torch.arange(ids.shape[1], device=ids.device)[None]
        x = self.word_embeddings(ids) + self.token_type_embeddings(torch.zeros_like(ids))
        x = x + self.position_embeddings(pos)
        return self.LayerNorm(x)


class _SelfAttention(nn.Module):
    def __init__(self, c: dict, s: dict[str, Tensor], p: str):
        super().__init__()
        self.heads = c["num_attention_heads"]
        self.query, self.key, self.value = (
            _Linear(s, p + n + ".") for n in ("query", "key", "value")
        )


class _Dense(nn.Module):  # a linear map followed by add & norm (BERT's *Output modules)
    def __init__(self, c: dict, s: dict[str, Tensor], p: str):
        super().__init__()
        self.dense = _Linear(s, p + "dense.")
        self.LayerNorm = _LayerNorm(s, p + "LayerNorm.", c.get("layer_norm_eps", 1e-12))

    def forward(self, x: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class _Attention(nn.Module):
    def __init__(self, c: dict, s: dict[str, Tensor], p: str):
        super().__init__()
        self.self = _SelfAttention(c, s, p + "self.")
        self.output = _Dense(c, s, p + "output.")


class _Intermediate(nn.Module):
    def __init__(self, s: dict[str, Tensor], p: str):
        super().__init__()
        self.dense = _Linear(s, p + "dense.")


class _Layer(nn.Module):
    def __init__(self, c: dict, s: dict[str, Tensor], p: str):
        super().__init__()
        self.attention = _Attention(c, s, p + "attention.")
        self.intermediate = _Intermediate(s, p + "intermediate.")
        self.output = _Dense(c, s, p + "output.")
        self.act = ACTIVATIONS[c.get("hidden_act", "gelu")]

    def forward(self, h: Tensor, mask: Tensor | None) -> Tensor:
        return self.feed(self.attend(h, mask))

    def attend(self, h: Tensor, mask: Tensor | None) -> Tensor:
        """Self-attention with add & norm (where VECO's cross-attention plugs in after)."""
        a = self.attention.self
        B, L, _ = h.shape  # (B, L, H) -> heads (B, n, L, H/n)
        q, k, v = (f(h).view(B, L, a.heads, -1).transpose(1, 2) for f in (a.query, a.key, a.value))
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=q.shape[-1] ** -0.5)
        ctx = ctx.transpose(1, 2).contiguous().reshape(B, L, -1).contiguous()
        return self.attention.output(ctx, h)

    def feed(self, h: Tensor) -> Tensor:
        """The feed-forward block with add & norm."""
        return self.output(self.act(self.intermediate.dense(h)), h)


class _Stack(nn.Module):
    def __init__(self, c: dict, s: dict[str, Tensor], p: str):
        super().__init__()
        n = c["num_hidden_layers"]
        self.layer = nn.ModuleList(_Layer(c, s, f"{p}layer.{i}.") for i in range(n))


class EncoderNet(nn.Module):
    """A BERT or XLM-R encoder for inference, with ``transformers``' parameter names.

    Args:
        config: the ``config.json`` dict of the encoder directory.
        state: its tensors by ``transformers`` name; the ones used are taken out of it.

    Raises:
        KeyError: a tensor is missing.
    """

    def __init__(self, config: dict, state: dict[str, Tensor]):
        super().__init__()
        self.config_dict = dict(config)
        self.embeddings = _Embeddings(config, state, "embeddings.")
        self.encoder = _Stack(config, state, "encoder.")

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Run the encoder.

        Args:
            input_ids: (B, L) int64 token ids.
            attention_mask: (B, L) 1 for tokens, 0 for padding.

        Returns:
            (B, L, H) last hidden states.
        """
        return self.run_layers(self.embeddings(input_ids), attention_mask)

    def run_layers(
        self, h: Tensor, attention_mask: Tensor, start: int = 0, stop: int | None = None
    ) -> Tensor:
        """Run layers ``start:stop`` on hidden states ``h`` (the lower layers of a pair scorer).

        Args:
            h: (B, L, H) hidden states entering layer ``start``.
            attention_mask: (B, L) 1 for tokens, 0 for padding.
            start: the first layer.
            stop: one past the last layer (default: all).

        Returns:
            (B, L, H) hidden states after layer ``stop - 1``.
        """
        mask = self_mask(attention_mask)
        for layer in self.encoder.layer[start:stop]:
            h = layer(h, mask)
        return h


def self_mask(attention_mask: Tensor) -> Tensor | None:
    """The SDPA mask of self-attention over a padded batch; None without padding (as
    transformers, so that SDPA may pick a faster kernel)."""
    if bool(attention_mask.all()):
        return None
    B, L = attention_mask.shape
    return attention_mask.bool()[:, None, None, :].expand(B, 1, L, L)


def read_config(encoder_dir: Path) -> dict:
    """The encoder's ``config.json``.

    Args:
        encoder_dir: a transformers model directory.

    Returns:
        The parsed JSON object.

    Raises:
        ModelLoadError: missing or unreadable.
    """
    p = Path(encoder_dir) / "config.json"
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"{p}: unreadable ({e})", hint="re-copy the model directory") from None


def unsupported(config: dict) -> str | None:
    """Why ``EncoderNet`` cannot run a model.

    Args:
        config: the model's ``config.json`` dict.

    Returns:
        A reason, or None if ``EncoderNet`` runs it.
    """
    if config.get("model_type") not in POSITIONS:
        return f"model type {config.get('model_type')!r}"
    if config.get("hidden_act", "gelu") not in ACTIVATIONS:
        return f"activation {config.get('hidden_act')!r}"
    if config.get("position_embedding_type", "absolute") != "absolute":
        return f"position embeddings {config.get('position_embedding_type')!r}"
    if config.get("is_decoder") or config.get("add_cross_attention"):
        return "a decoder"
    if config.get("_attn_implementation", config.get("attn_implementation")) not in (None, "sdpa"):
        return "a non-default attention implementation"
    return None


def load_net(encoder_dir: Path) -> EncoderNet | None:
    """Load ``EncoderNet`` from a transformers directory, or None where it does not apply.

    The weights come from ``model.safetensors`` and are used in float32; tensors are matched
    by name (a ``bert.`` / ``roberta.`` prefix is dropped), and any missing or unexpected
    tensor makes it return None so that the caller loads the model with ``transformers``.

    Args:
        encoder_dir: a directory with ``config.json`` and ``model.safetensors``.

    Returns:
        The module in eval mode on the CPU, or None.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    config = read_config(encoder_dir)
    why = unsupported(config)
    weights = Path(encoder_dir) / "model.safetensors"
    if why is None and not weights.exists():
        why = "weights not in model.safetensors"
    if why is not None:
        log.debug("%s: loading with transformers (%s)", encoder_dir, why)
        return None
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as e:
        raise ModelLoadError(
            f"{weights}: unreadable weights ({str(e).splitlines()[0]})",
            hint="re-copy or rebuild the model directory",
        ) from None
    for prefix in ("bert.", "roberta.", "model."):
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    state = {k: v.float() for k, v in state.items() if not k.startswith("pooler.")}
    state.pop("embeddings.position_ids", None)
    try:
        net = EncoderNet(config, state)
    except KeyError as e:
        log.debug("%s: loading with transformers (no tensor %s)", encoder_dir, e)
        return None
    if state:
        log.debug("%s: loading with transformers (unknown tensors %s)", encoder_dir, list(state))
        return None
    return net.eval()


def load_transformers_model(encoder_dir: Path):
    """The encoder as a ``transformers`` model (``AutoModel``, no pooling layer), in eval mode.

    Args:
        encoder_dir: a transformers model directory.

    Returns:
        The model on the CPU.

    Raises:
        ModelLoadError: transformers cannot load it.
    """
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        try:
            model = AutoModel.from_pretrained(str(encoder_dir), add_pooling_layer=False)
        except TypeError:  # architectures without a pooling layer do not take the argument
            model = AutoModel.from_pretrained(str(encoder_dir))
    except Exception as e:
        raise ModelLoadError(
            f"{encoder_dir}: cannot load the encoder ({str(e).splitlines()[0]})",
            hint="pass a BERT/XLM-R transformers directory or an emmax model",
        ) from None
    return model.eval()
