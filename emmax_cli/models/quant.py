"""int8 inference on CPU: dynamic quantisation of the encoder's linear layers.

Each linear map of the transformer layers (query, key, value, attention output, intermediate,
output) keeps its weights as int8, one scale per output row (per-channel, symmetric), packed
once for torch's x86 int8 GEMM (fbgemm); at run time each input is quantised to uint8 with a
scale and zero point from its own range (dynamic quantisation), multiplied in int8 with int32
accumulation and returned in float32 with the bias added. Embeddings, layer norms, softmax
attention and pooling stay in float32. This needs no AVX-512: fbgemm's AVX2 kernels
(``vpmaddubsw``) run the int8 GEMM about twice as fast as the fp32 one on AVX2-only CPUs
(docs/benchmarks.md has the figures). The price is accuracy: per-tensor input scales meet the
outlier channels of BERT's activations (largest in the input of each FFN output map), so
emmax-small's embeddings are at mean cosine ~0.98 to fp32 and Tatoeba XTREME-36 drops by ~0.8
points; ``--precision auto`` therefore does not pick int8 (``device.AUTO_INT8``).

The packed weights are torch's quantized-tensor ops (``torch.ops.quantized``), which torch marks
deprecated in favour of torchao; ``available()`` says whether this torch still has them."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from ..errors import EmmaxError

# The engine for x86 (fbgemm's kernels, with onednn for some shapes); qnnpack elsewhere.
_ENGINES = ("x86", "fbgemm", "qnnpack")


@functools.lru_cache(maxsize=1)
def engine() -> str | None:
    """The quantized engine int8 runs on here, or None if this torch has none (or no ops)."""
    if not hasattr(torch.ops.quantized, "linear_dynamic"):
        return None
    engines = set(torch.backends.quantized.supported_engines)
    return next((e for e in _ENGINES if e in engines), None)


def available() -> bool:
    """True if this torch can run the int8 path (a quantized engine and its linear ops)."""
    return engine() is not None


class Int8Linear(nn.Module):
    """``F.linear`` with int8 weights (per output channel) and dynamically quantised inputs.

    Args:
        weight: (out, in) float weight.
        bias: (out,) float bias or None.
        reduce_range: quantise inputs to 7 bits (fbgemm's advice on CPUs without VNNI, where
            ``vpmaddubsw`` can saturate its int16 pair sums at 8 bits). Off by default: on
            emmax-small the 7-bit inputs cost more (mean cosine to fp32 0.955) than the rare
            saturation of 8 bits (0.982), measured on an AVX2-only AMD EPYC.
    """

    def __init__(self, weight: Tensor, bias: Tensor | None, reduce_range: bool = False):
        super().__init__()
        w = weight.detach().float().contiguous()
        scale = (w.abs().amax(dim=1) / 127.0).clamp_min(1e-12).double()
        zero = torch.zeros(w.shape[0], dtype=torch.long)
        with warnings.catch_warnings():  # torch's quantized tensors are marked deprecated
            warnings.simplefilter("ignore")
            qw = torch.quantize_per_channel(w, scale, zero, 0, torch.qint8)
            self._packed = torch.ops.quantized.linear_prepack(
                qw, None if bias is None else bias.detach().float().contiguous()
            )
        self.in_features, self.out_features = int(w.shape[1]), int(w.shape[0])
        self.reduce_range = reduce_range

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        y = torch.ops.quantized.linear_dynamic(
            x.reshape(-1, shape[-1]).float().contiguous(), self._packed, self.reduce_range
        )
        return y.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"weights=int8 per-channel, reduce_range={self.reduce_range}"
        )


def _linears(model: nn.Module) -> Iterator[tuple[str, nn.Module, str, nn.Module]]:
    """(path, parent, attribute, module) of every linear map of the model (``_Linear`` of
    ``EncoderNet``, ``nn.Linear`` of transformers models) outside the embeddings and pooler."""
    from .modeling import _Linear

    for name, parent in list(model.named_modules()):
        for attr, child in list(parent.named_children()):
            path = f"{name}.{attr}" if name else attr
            if isinstance(child, (_Linear, nn.Linear)) and not path.startswith(
                ("embeddings.", "pooler.")
            ):
                yield path, parent, attr, child


def quantize_int8(model: nn.Module, skip: tuple[str, ...] = (), reduce_range: bool = False) -> int:
    """Replace the linear maps of an encoder's transformer layers by ``Int8Linear``, in place.

    Args:
        model: an ``EncoderNet`` or a transformers encoder, on the CPU, in eval mode.
        skip: substrings of module paths to keep in float32 (e.g. ``attention.output``).
        reduce_range: as ``Int8Linear``.

    Returns:
        How many linear maps were quantised.

    Raises:
        EmmaxError: this torch has no int8 engine, or the model has no linear maps to quantise.
    """
    eng = engine()
    if eng is None:
        raise EmmaxError(
            f"--precision int8: torch {torch.__version__} has no quantized int8 engine",
            hint="use --precision fp32",
        )
    torch.backends.quantized.engine = eng
    n = 0
    for path, parent, attr, lin in list(_linears(model)):
        if any(s in path for s in skip):
            continue
        setattr(parent, attr, Int8Linear(lin.weight, lin.bias, reduce_range=reduce_range))
        n += 1
    if not n:
        raise EmmaxError(
            "--precision int8: the encoder has no linear layers emmax can quantise",
            hint="use --precision fp32",
        )
    return n
