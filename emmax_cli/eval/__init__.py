"""Evaluation: Tatoeba (LASER/XTREME), BUCC 2018, xsim, and a geometric analysis of the space.

Each module returns dataclasses with a ``to_dict()``; nothing here prints. Plots live in
``plots.py`` (matplotlib, the optional ``plot`` extra). Definitions, formulas and sources are in
``docs/eval.md``. Submodules are imported lazily, so ``import emmax_cli.eval`` is cheap."""

from __future__ import annotations

_EXPORTS = {
    "eval_tatoeba": "emmax_cli.eval.tatoeba",
    "TatoebaResult": "emmax_cli.eval.tatoeba",
    "XTREME36": "emmax_cli.eval.tatoeba",
    "eval_bucc": "emmax_cli.eval.bucc",
    "bucc_metrics": "emmax_cli.eval.bucc",
    "BuccResult": "emmax_cli.eval.bucc",
    "eval_xsim": "emmax_cli.eval.xsim",
    "XsimResult": "emmax_cli.eval.xsim",
    "eval_geometry": "emmax_cli.eval.geometry",
    "GeometryResult": "emmax_cli.eval.geometry",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'emmax_cli.eval' has no attribute {name!r}")
