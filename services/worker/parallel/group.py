"""The tensor-parallel process group: the collectives the decoder and its ranks need, and nothing at size 1.

NCCL on CUDA devices, gloo on CPU; the same calls serve both. At size 1 no process group exists and every
collective returns its input, so a single-device model runs exactly as it did before tensor parallelism.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from services.common.errors import InvalidArgument


@dataclass(frozen=True, slots=True)
class TensorParallelGroup:
    """This process's place among the ranks that together hold one model."""

    rank: int = 0
    size: int = 1
    # Where step commands travel: a gloo group of its own (pickled objects stay on the host, no device sync),
    # whose timeout outlasts idle spells while the model's collectives keep a short one. None: the default group.
    control: Any = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.size < 1 or not 0 <= self.rank < self.size:
            raise InvalidArgument(f"tensor-parallel rank {self.rank} must lie in [0, {self.size})")

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sums x over the ranks in place (the output of a row-parallel projection); x itself at size 1."""
        if self.size > 1:
            dist.all_reduce(x)
        return x

    def gather_columns(self, x: torch.Tensor, widths: tuple[int, ...]) -> torch.Tensor:
        """x [rows, widths[rank]] on each rank → [rows, sum(widths)]: the ranks' blocks side by side in rank order.
        All-gather moves equal sizes, so each block travels right-padded to the widest."""
        if self.size == 1:
            return x
        padded = F.pad(x, (0, max(widths) - x.shape[-1])).contiguous()  # [rows, max(widths)]
        parts = [torch.empty_like(padded) for _ in range(self.size)]
        dist.all_gather(parts, padded)
        return torch.cat([part[:, :width] for part, width in zip(parts, widths, strict=True)], dim=-1)

    def min_over_ranks(self, value: int) -> int:
        """The smallest of every rank's `value` (how many KV blocks fit on every rank's device)."""
        if self.size == 1:
            return value
        box = torch.tensor([value], dtype=torch.int64, device=_collective_device())
        dist.all_reduce(box, op=dist.ReduceOp.MIN)
        return int(box.item())

    def broadcast_object(self, obj: object | None) -> object:
        """Rank 0's `obj` on every rank (others pass None): how one step's plan reaches every rank."""
        if self.size == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self.control)
        return box[0]


SINGLE = TensorParallelGroup()


def _collective_device() -> torch.device:
    """Where a small tensor for a collective must live: NCCL moves only CUDA tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def join_group(rank: int, size: int, init_method: str, device: torch.device, timeout_s: float = 300.0,
               control_timeout_s: float | None = None) -> TensorParallelGroup:
    """Joins the `size` processes that meet at init_method (tcp://host:port) as `rank`; SINGLE at size 1.
    timeout_s bounds the model's collectives, control_timeout_s (default: the same) the wait for a command."""
    if size == 1:
        return SINGLE
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend_for(device), init_method=init_method, rank=rank, world_size=size,
                            timeout=timedelta(seconds=timeout_s))
    control = dist.new_group(backend="gloo", timeout=timedelta(seconds=control_timeout_s or timeout_s))
    return TensorParallelGroup(rank, size, control)


def leave_group() -> None:
    """Leaves the group this process joined, if any (on the thread that joined it)."""
    if dist.is_initialized():
        dist.destroy_process_group()
