"""Pooling of token states into sentence vectors."""

from __future__ import annotations

POOLINGS = ("mean", "cls")


def pool(hidden, mask, pooling: str = "mean", normalize: bool = True):
    """(B, L, H) token states and (B, L) attention mask -> (B, H) float32 sentence vectors.

    ``mean`` is the mask-weighted mean (specials included, as E5 and sentence-transformers);
    the count is clamped so an all-padding row cannot divide by zero."""
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
