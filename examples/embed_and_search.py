"""Embed sentences with the Python API and find each German sentence's English translation."""

from __future__ import annotations

import sys
from pathlib import Path

from emmax_cli import Encoder, mine

here = Path(__file__).parent
model = sys.argv[1] if len(sys.argv) > 1 else None  # default: the built-in model
enc = Encoder.load(model)
de = (here / "sentences.de.txt").read_text(encoding="utf-8").splitlines()
en = (here / "sentences.en.txt").read_text(encoding="utf-8").splitlines()
pairs = mine(enc.encode(de), enc.encode(en), k=2, margin="ratio", retrieval="max")
for s, t, score in zip(pairs.src_idx, pairs.tgt_idx, pairs.score, strict=False):
    print(f"{score:.4f}\t{de[s]}\t{en[t]}")
