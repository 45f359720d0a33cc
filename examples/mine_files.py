"""Mine the example German and English files with the library function behind `emmax mine`,
then print the pairs as TSV (what `emmax mine --no-threshold` prints).

Usage: python examples/mine_files.py [MODEL]"""

from __future__ import annotations

import sys
from pathlib import Path

from emmax_cli import mine_files

here = Path(__file__).parent
model = sys.argv[1] if len(sys.argv) > 1 else None  # default: the built-in model
res = mine_files(
    here / "sentences.de.txt",
    here / "sentences.en.txt",
    model=model,
    threshold=float("-inf"),  # keep every pair; None: the model's calibrated threshold
    output="-",  # score<TAB>de<TAB>en on stdout, best first
)
print(f"{len(res.pairs)} pairs; at 1.06 or above: {res.counts[1.06]}", file=sys.stderr)
