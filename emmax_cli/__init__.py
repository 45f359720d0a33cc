"""emmax: multilingual sentence embeddings and bitext mining with EMMA-X.

The public API is re-exported lazily so that ``import emmax_cli`` (and ``emmax --help``) stays
fast; torch, transformers and faiss load on first use."""

from __future__ import annotations

__version__ = "0.1.0"

_EXPORTS = {
    "Encoder": "emmax_cli.models.encoder",
    "embed_file": "emmax_cli.embed",
    "build_index": "emmax_cli.index",
    "add_to_index": "emmax_cli.index",
    "load_index": "emmax_cli.index",
    "mine": "emmax_cli.mine",
    "MinedPairs": "emmax_cli.mine",
    "mine_files": "emmax_cli.bitext",
    "calibrate": "emmax_cli.bitext",
    "GMMHead": "emmax_cli.models.gmm",
    "rank_pairs": "emmax_cli.rank",
    "rank_files": "emmax_cli.rank",
    "eval_tatoeba": "emmax_cli.eval.tatoeba",
    "eval_bucc": "emmax_cli.eval.bucc",
    "eval_xsim": "emmax_cli.eval.xsim",
    "eval_geometry": "emmax_cli.eval.geometry",
    "EmmaxError": "emmax_cli.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        # importing emmax_cli.mine binds the *module* to the package attribute `mine`;
        # the public name must be the function, so bind it after the import
        globals()[name] = value
        return value
    raise AttributeError(f"module 'emmax_cli' has no attribute {name!r}")
