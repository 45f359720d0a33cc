"""torchrun support: detection from RANK / WORLD_SIZE, gloo on CPU and NCCL on CUDA, an
all_gather of keys for the queue, gradient averaging. Every function is a no-op in a single
process, so the trainer has one code path.

    torchrun --nproc_per_node 2 -m emmax_cli train --config configs/train/tiny.toml"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    """This process's place in a torchrun job (rank 0 of 1 in a single process).

    Attributes:
        rank: the global rank.
        world: the number of processes.
        local_rank: the rank on this machine (its GPU under CUDA).
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """True on rank zero, which alone logs and writes."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """True under torchrun with more than one process."""
        return self.world > 1


def setup(device: str) -> DistInfo:
    """Join the process group if launched by torchrun (RANK and WORLD_SIZE set).

    Args:
        device: the resolved device; NCCL on CUDA, gloo on CPU.

    Returns:
        The rank information (rank 0 of 1 outside torchrun).
    """
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DistInfo()
    info = DistInfo(
        int(os.environ["RANK"]),
        int(os.environ["WORLD_SIZE"]),
        int(os.environ.get("LOCAL_RANK", "0")),
    )
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world)
    return info


def setup_device(device: str, precision: str) -> tuple[DistInfo, str, str]:
    """Resolve ``run.device`` and ``run.precision`` and join the process group if launched by
    torchrun.

    Args:
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        precision: ``auto``, ``fp32``, ``bf16`` or ``fp16``.

    Returns:
        ``(dist, device, precision)``: the process's rank info, its device (under torchrun on
        CUDA, the GPU of its local rank) and the resolved precision.

    Raises:
        EmmaxError: CUDA asked for but not available, or an unknown device name.
        ConfigError: an unusable precision (fp16 on CPU).
    """
    from ..device import pick_precision, resolve_device
    from ..errors import ConfigError, EmmaxError

    info = setup(resolve_device(device))
    dev = device_for(info, resolve_device(device))
    try:
        prec = pick_precision(precision, dev)
    except EmmaxError as e:
        raise ConfigError(f"run.precision = {precision}: {e.message}", hint=e.hint) from None
    return info, dev, prec


def device_for(info: DistInfo, device: str) -> str:
    """The device of this process: under torchrun on CUDA, the GPU of its local rank.

    Args:
        info: the rank information.
        device: the resolved device.

    Returns:
        ``cuda:<local_rank>`` under torchrun on CUDA, else ``device``.
    """
    if info.enabled and device.startswith("cuda"):
        return f"cuda:{info.local_rank}"
    return device


def cleanup() -> None:
    """Leave the process group, if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _on() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@torch.no_grad()
def all_gather_cat(x: torch.Tensor) -> torch.Tensor:
    """Concatenate a tensor from every rank, in rank order (no gradient).

    Args:
        x: (n, ...) tensor; every rank passes the same n.

    Returns:
        (world * n, ...) tensor; ``x`` itself in a single process.
    """
    if not _on():
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def average_gradients(params) -> None:
    """All-reduce and average gradients in place (a no-op in a single process).

    Args:
        params: parameters; those without a gradient are skipped.
    """
    if not _on():
        return
    world = dist.get_world_size()
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad.div_(world)


def average_(t: torch.Tensor) -> torch.Tensor:
    """In-place mean of a tensor over ranks (the GMM's rank means).

    Args:
        t: the tensor, the same shape on every rank.

    Returns:
        ``t``, averaged.
    """
    if _on():
        dist.all_reduce(t)
        t.div_(dist.get_world_size())
    return t


def barrier() -> None:
    """Wait for every rank (a no-op in a single process)."""
    if _on():
        dist.barrier()
