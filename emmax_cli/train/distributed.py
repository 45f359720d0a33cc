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
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def setup(device: str) -> DistInfo:
    """Join the process group if launched by torchrun (RANK and WORLD_SIZE set)."""
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


def device_for(info: DistInfo, device: str) -> str:
    """Under torchrun on CUDA every process takes the GPU of its local rank."""
    if info.enabled and device.startswith("cuda"):
        return f"cuda:{info.local_rank}"
    return device


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _on() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@torch.no_grad()
def all_gather_cat(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (n, ...) from every rank in rank order (no gradient); equal n per rank."""
    if not _on():
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def average_gradients(params) -> None:
    """All-reduce and average the gradients of ``params`` (those that have one)."""
    if not _on():
        return
    world = dist.get_world_size()
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad.div_(world)


def average_(t: torch.Tensor) -> torch.Tensor:
    """In-place mean of a tensor over ranks (rank means of the GMM, logged scalars)."""
    if _on():
        dist.all_reduce(t)
        t.div_(dist.get_world_size())
    return t


def barrier() -> None:
    if _on():
        dist.barrier()
