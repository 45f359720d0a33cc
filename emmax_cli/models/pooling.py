"""Pooling of token states into sentence vectors."""

from __future__ import annotations

POOLINGS = ("mean", "cls")


def pool(hidden, mask, pooling: str = "mean", normalize: bool = True):
    """Token states to sentence vectors.

    ``mean`` is the mask-weighted mean (specials included, as E5 and sentence-transformers);
    the count is clamped so an all-padding row cannot divide by zero.

    Args:
        hidden: (B, L, H) token states.
        mask: (B, L) attention mask (1 for tokens, 0 for padding).
        pooling: ``mean`` or ``cls``.
        normalize: L2-normalise the vectors.

    Returns:
        (B, H) float32 sentence vectors.

    Raises:
        ValueError: an unknown pooling.
    """
    import torch

    hidden = hidden.float()
    if pooling == "mean":
        m = mask.to(hidden.dtype).unsqueeze(-1)
        out = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    elif pooling == "cls":
        out = hidden[:, 0]
    else:
        raise ValueError(f"unknown pooling {pooling!r}; choose from {POOLINGS}")
    return torch.nn.functional.normalize(out, dim=-1) if normalize else out
