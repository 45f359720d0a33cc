"""emmax: multilingual sentence embeddings and bitext mining with EMMA-X.

The public API is re-exported lazily so that ``import emmax_cli`` (and ``emmax --help``) stays
fast; torch, transformers and faiss load on first use::

    from emmax_cli import Encoder, GMMHead, embed_file, build_index, mine, rank, TrainConfig, train

``mine``, ``rank`` and ``train`` are functions here although ``emmax_cli.mine``,
``emmax_cli.rank`` and ``emmax_cli.train`` are also modules: import from the modules with
``from emmax_cli.mine import knn``, not ``import emmax_cli.mine as m``."""

from __future__ import annotations

import importlib
import sys
import types

__version__ = "0.1.0"

_EXPORTS = {
    # models
    "Encoder": "emmax_cli.models.encoder",
    "GMMHead": "emmax_cli.models.gmm",
    "export_model": "emmax_cli.models.export",
    # one library function per command
    "embed_file": "emmax_cli.embed",
    "embed_files": "emmax_cli.embed",
    "build_index": "emmax_cli.index",
    "add_to_index": "emmax_cli.index",
    "load_index": "emmax_cli.index",
    "mine_files": "emmax_cli.bitext",
    "calibrate": "emmax_cli.calibration",
    "rank_files": "emmax_cli.rank",
    "eval_tatoeba": "emmax_cli.eval.tatoeba",
    "eval_bucc": "emmax_cli.eval.bucc",
    "eval_xsim": "emmax_cli.eval.xsim",
    "eval_geometry": "emmax_cli.eval.geometry",
    "train": "emmax_cli.train",
    "TrainConfig": "emmax_cli.train.config",
    # arrays in, arrays out
    "mine": "emmax_cli.mine",
    "MinedPairs": "emmax_cli.mine",
    "rank": "emmax_cli.rank",
    "rank_pairs": "emmax_cli.rank",
    "EmmaxError": "emmax_cli.errors",
}

# Public functions named like the submodule that defines them.
_SHADOWED = {"mine", "rank", "train"}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'emmax_cli' has no attribute {name!r}")


class _Package(types.ModuleType):
    """The ``emmax_cli`` module. Importing a submodule such as ``emmax_cli.mine`` makes the
    import system set the package attribute ``mine`` to the module, whatever the package
    exported before; for the names in ``_SHADOWED`` the function is kept instead, so
    ``from emmax_cli import mine`` is the function however the modules were imported."""

    def __setattr__(self, name: str, value) -> None:
        if name in _SHADOWED and isinstance(value, types.ModuleType):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
