"""The one place that imports Ray (the optional extra ``emmax[ray]``) and joins a cluster.

``--ray`` alone starts a local Ray instance on this machine (or joins the one named by
``RAY_ADDRESS``); ``--ray ADDRESS`` joins that cluster (``auto``, ``ray://host:10001``,
``host:6379``). Workers inherit ``EMMAX_HOME`` so they find the same model cache."""

from __future__ import annotations

import logging
import os
from typing import Any

from .errors import EmmaxError, InputError

log = logging.getLogger(__name__)

LOCAL = "local"  # the value of a bare --ray


def require_ray() -> Any:
    """The ``ray`` module.

    Raises:
        InputError: Ray is not installed.
    """
    try:
        import ray
    except ImportError:
        raise InputError(
            "--ray needs Ray, which is not installed", hint="pip install 'emmax[ray]'"
        ) from None
    return ray


def init_ray(address: str | None = LOCAL, num_cpus: int | None = None) -> Any:
    """Connect to (or start) a Ray cluster once per process; return the ``ray`` module.

    Args:
        address: ``local`` (or None): a local instance with ``num_cpus`` CPUs (default: all),
            unless ``RAY_ADDRESS`` names a cluster; else a cluster address.
        num_cpus: CPUs of a local instance.

    Raises:
        InputError: Ray is missing. EmmaxError: the cluster cannot be reached.
    """
    ray = require_ray()
    if ray.is_initialized():
        return ray
    env = {k: os.environ[k] for k in ("EMMAX_HOME",) if k in os.environ}
    kw: dict[str, Any] = dict(
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        runtime_env={"env_vars": env} if env else None,
    )
    # Ray's own INFO/WARNING lines (token setup, "Started a local Ray instance") are noise
    # on an emmax command's stderr; its errors still show.
    logging.getLogger("ray").setLevel(logging.ERROR)
    if address in (None, LOCAL):
        address = os.environ.get("RAY_ADDRESS") or None
        if address is None:
            kw["num_cpus"] = num_cpus
    try:
        ray.init(address=address, **kw)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise EmmaxError(
            f"cannot start or join the Ray cluster at {address or 'this machine'} ({e})",
            hint="check the address (ray status), or run --ray without an address for a "
            "local instance",
        ) from None
    log.debug("Ray: %s", ray.cluster_resources())
    return ray


def task_error(e: Exception, what: str, hint: str) -> EmmaxError:
    """One line for a failed Ray task: the worker's own EmmaxError (a ``RayTaskError`` carries
    it as ``cause``), else ``what`` failed, with the first line of the exception."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, EmmaxError):
        return cause
    err = cause if cause is not None else e
    detail = (str(err).splitlines() or [""])[0]
    return EmmaxError(f"{what} failed on a Ray worker ({type(err).__name__}: {detail})", hint=hint)


def cluster_workers(ray: Any, threads: int) -> tuple[int, dict[str, float]]:
    """How many workers to start, and each one's resources: one per GPU where the cluster has
    GPUs, else one per ``threads`` CPUs (at least one)."""
    res = ray.cluster_resources()
    gpus = int(res.get("GPU", 0))
    if gpus:
        return gpus, {"num_gpus": 1, "num_cpus": 1}
    cpus = int(res.get("CPU", 1))
    return max(1, cpus // threads), {"num_cpus": threads}
