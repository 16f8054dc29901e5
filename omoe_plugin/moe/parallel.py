"""Expert parallelism: the experts of a MoE layer split over the ranks of a process group.

Each rank of an expert-parallel (EP) group of N ranks holds E / N consecutive experts, routes
its own tokens with the replicated router and exchanges the routed tokens with the ranks that
hold their experts (see StackedExperts). The world is cut into consecutive blocks of N ranks,
one EP group each; the ranks at the same position in every block hold the same experts and
form a `replicas` group, over which those experts are data-parallel.
"""

from dataclasses import dataclass

import torch.distributed as dist


def check_expert_split(num_experts: int, size: int) -> None:
    """Raise unless num_experts experts split evenly over an expert-parallel group of `size`."""
    if num_experts % size:
        raise ValueError(f"--moe-experts ({num_experts}) must be a multiple of "
                         f"--moe-expert-parallel-size ({size})")


@dataclass(frozen=True)
class ExpertParallel:
    """This rank's place in expert parallelism.

    group: the expert-parallel process group, `size` ranks that together hold every expert;
    rank: this process's rank within it; replicas: the process group of the ranks that hold
    the same experts as this one (the same rank in every EP group: the group the experts'
    gradients are summed over; this rank alone when the EP group is the whole world).
    """

    group: dist.ProcessGroup
    size: int
    rank: int
    replicas: dist.ProcessGroup

    def local_experts(self, num_experts: int) -> range:
        """The global ids of the experts this rank holds, out of num_experts."""
        check_expert_split(num_experts, self.size)
        per_rank = num_experts // self.size
        return range(self.rank * per_rank, (self.rank + 1) * per_rank)

    def __deepcopy__(self, memo) -> "ExpertParallel":
        """Itself: process groups are per-process handles, shared by every copy of a model
        (deepcopy also reaches this through the expert parameters' tag)."""
        return self


def expert_parallel_groups(size: int) -> ExpertParallel:
    """Cut the default (initialised) process group into EP groups of `size` consecutive ranks
    and the groups of their replicas; this rank's ExpertParallel. Every rank must call it, and
    at the same point: each rank takes part in creating every group (torch's requirement)."""
    if size < 1:
        raise ValueError(f"--moe-expert-parallel-size must be >= 1, got {size}")
    world, rank = dist.get_world_size(), dist.get_rank()
    if world % size:
        raise ValueError(f"the world size ({world}) must be a multiple of "
                         f"--moe-expert-parallel-size ({size})")
    blocks = [range(start, start + size) for start in range(0, world, size)]
    positions = [range(position, world, size) for position in range(size)]
    group = replicas = None
    for ranks in blocks:
        created = dist.new_group(list(ranks))
        group = created if rank in ranks else group
    for ranks in positions:
        created = dist.new_group(list(ranks))
        replicas = created if rank in ranks else replicas
    return ExpertParallel(group, size, rank % size, replicas)
