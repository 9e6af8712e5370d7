"""Multi-process training under `torchrun`: process-group set-up and the few collectives we need.

Launched as `torchrun --nproc_per_node N -m mnist_diffusion train ...`, every process reads RANK,
WORLD_SIZE and LOCAL_RANK from the environment. Backend: nccl for CUDA, gloo otherwise. Outside
torchrun, everything here degrades to a single process and costs nothing.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1


def setup(device: torch.device) -> tuple[World, torch.device]:
    """Join the process group if torchrun started us; returns the world and this rank's device."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World(), device
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return World(rank, size, local), device


def teardown(world: World) -> None:
    if world.active and dist.is_initialized():
        dist.destroy_process_group()


def agree(world: World, loss: float, flags: tuple[bool, ...], device: torch.device) -> tuple[float, tuple[bool, ...]]:
    """Mean loss over ranks, and for each flag whether any rank raised it (a signal reached it, its
    time ran out): every rank must take the same branch, or the next collective would hang."""
    if not world.active:
        return loss, tuple(flags)
    t = torch.tensor([loss, *(1.0 if f else 0.0 for f in flags)], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t[0]) / world.size, tuple(bool(v > 0) for v in t[1:])


def weights_checksum(model: torch.nn.Module) -> float:
    return float(sum(p.detach().double().sum() for p in model.parameters()))


def gather_floats(world: World, value: float, device: torch.device) -> list[float]:
    if not world.active:
        return [value]
    t = torch.tensor([value], dtype=torch.float64, device=device)
    out = [torch.zeros_like(t) for _ in range(world.size)]
    dist.all_gather(out, t)
    return [float(o) for o in out]
