"""Several processes finetuning one model with torch DistributedDataParallel, launched by `torchrun`.

`torchrun --nproc_per_node=N -m embedcache.cli al --mode finetune ...` starts N copies of the same
command. Rank 0 runs the AL loop and writes the records; the other ranks only serve its learner:
every `fit` and scoring call (`predict_proba`, `predict_logits`, `embed`, ...) on rank 0 first
broadcasts the call, then all ranks execute it together (each takes a share of every batch;
gradients are averaged by DDP, outputs gathered). The loop, strategies and records therefore stay
single-process code.
"""

from __future__ import annotations

import dataclasses
import os

import torch

from embedcache.devices import resolve_device
from embedcache.errors import ConfigError


def world_size() -> int:
    """Processes torchrun started (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


@dataclasses.dataclass(frozen=True)
class Context:
    """This process's device, rank and the number of processes."""

    device: torch.device
    rank: int = 0
    world: int = 1

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def shard(self, n: int) -> slice:
        """This rank's contiguous share of n items (shares differ in size by at most one)."""
        return slice(self.rank * n // self.world, (self.rank + 1) * n // self.world)

    def broadcast(self, message=None):
        """Rank 0's `message` on every rank."""
        import torch.distributed as dist

        box = [message]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """`value` summed over the ranks (in place)."""
        if self.distributed:
            import torch.distributed as dist

            dist.all_reduce(value)
        return value

    def gather(self, value) -> list:
        """Every rank's `value`, in rank order, on every rank."""
        if not self.distributed:
            return [value]
        import torch.distributed as dist

        values = [None] * self.world
        dist.all_gather_object(values, value)
        return values


def setup(device: str) -> Context:
    """The context for `--device` in this process: under torchrun, join the process group (NCCL on
    CUDA, gloo on CPU) and take cuda:LOCAL_RANK; otherwise just the resolved device."""
    world = world_size()
    resolved = resolve_device(device)
    if world == 1:
        if resolved.type == "cuda" and resolved.index is None:
            resolved = torch.device("cuda", torch.cuda.current_device())
        return Context(resolved)
    import torch.distributed as dist

    if resolved.type == "cuda":
        if resolved.index is not None:
            raise ConfigError(f"{device}: under torchrun each process uses cuda:LOCAL_RANK; pass cuda",
                              param="device")
        resolved = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(resolved)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if resolved.type == "cuda" else "gloo")
    return Context(resolved, rank=dist.get_rank(), world=dist.get_world_size())


def teardown() -> None:
    """Leave the process group (a no-op outside torchrun)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
