"""OMoE under expert parallelism: each worker of an expert-parallel group holds E/N experts of
every stacked expert weight ([E/N, out, in], consecutive experts per rank), and the projector
still needs every expert's direction against all the others'.

What travels, per stacked weight:
- statistics readings (inputs, centred, outputs): the low-rank statistics [E/N, dim, r] are
  all-gathered once per cycle, when the projectors are formed; every worker then forms every
  expert's factor (small, float64) and projects its own experts locally. Nothing of the
  weights' size moves.
- deltas: the directions are the experts' first moments, weight-sized vectors, and a Gram
  entry <u_i, u_j> of two experts on different workers needs both. Rather than gathering
  every expert's vector on every worker, each vector is cut along its length into N column
  blocks and an all-to-all gives worker r block r of every expert ([E, D/N]); the E x E Gram
  matrix and the update's products with the directions are then all-reduced sums of
  per-block dot products, and what the projection removes is formed per block and sent back
  with the inverse all-to-all. No worker ever holds a whole vector of another worker's
  expert, and each moves (N-1)/N of its own shard per transposition.

`ExpertShards.sent_bytes` counts what this worker sends (all-to-all: the blocks for other
workers; ring all-reduce of n elements: 2 (N-1)/N n; ring all-gather: (N-1) times its part).
"""

from typing import Optional

import torch
import torch.distributed as dist

from .projection import DirectionProjection, row_products


class ExpertShards:
    """The expert-parallel process group a stacked expert weight's experts are split over."""

    def __init__(self, group: Optional[dist.ProcessGroup] = None) -> None:
        self.group = group
        self.size = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        self.sent_bytes = 0.0

    def _count(self, elements: float, dtype: torch.dtype) -> None:
        self.sent_bytes += elements * torch.empty((), dtype=dtype).element_size()

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        """t summed over the group, in place."""
        dist.all_reduce(t, group=self.group)
        self._count(2 * (self.size - 1) / self.size * t.numel(), t.dtype)
        return t

    def all_gather(self, local: torch.Tensor) -> torch.Tensor:
        """Every worker's `local` [E/N, ...] stacked in expert order: [E, ...]."""
        parts = [torch.empty_like(local) for _ in range(self.size)]
        dist.all_gather(parts, local.contiguous(), group=self.group)
        self._count((self.size - 1) * local.numel(), local.dtype)
        return torch.cat(parts)

    def norm(self, local: torch.Tensor) -> torch.Tensor:
        """The Frobenius norm of the whole stacked tensor this worker holds a shard of."""
        return self.all_reduce(local.float().square().sum().reshape(1))[0].sqrt()

    def _widths(self, length: int) -> list[int]:
        """The column blocks' widths: `length` cut into `size` nearly equal parts."""
        return [length // self.size + (r < length % self.size) for r in range(self.size)]

    def to_columns(self, rows: torch.Tensor) -> torch.Tensor:
        """rows [E/N, D], this worker's experts, -> [E, D_r]: column block r of every expert."""
        local, length = rows.shape
        widths = self._widths(length)
        send = torch.cat([block.reshape(-1) for block in rows.split(widths, dim=1)])
        mine = widths[self.rank]
        received = send.new_empty(self.size * local * mine)
        dist.all_to_all_single(received, send, [local * mine] * self.size,
                               [local * w for w in widths], group=self.group)
        self._count(send.numel() - local * mine, send.dtype)
        return received.view(self.size * local, mine)

    def to_rows(self, columns: torch.Tensor, length: int) -> torch.Tensor:
        """The inverse of `to_columns`: [E, D_r] -> [E/N, D] (D = length)."""
        experts, mine = columns.shape
        local = experts // self.size
        widths = self._widths(length)
        received = columns.new_empty(local * length)
        dist.all_to_all_single(received, columns.contiguous().view(-1),
                               [local * w for w in widths], [local * mine] * self.size,
                               group=self.group)
        self._count(columns.numel() - local * mine, columns.dtype)
        blocks = received.split([local * w for w in widths])
        return torch.cat([b.view(local, w) for b, w in zip(blocks, widths)], dim=1)


class ShardedDirectionProjection(DirectionProjection):
    """`DirectionProjection` for a worker's shard of the experts (see the module docstring):
    the directions are held as this worker's column block of every expert, the products and
    the Gram matrix are all-reduced [E, E], and `removed` comes back as this worker's rows.
    The results equal the single-process projection's up to floating-point summation order."""

    def __init__(self, moments: torch.Tensor, alpha: float, mode: str,
                 shards: ExpertShards) -> None:
        self.shards, self.length = shards, moments.size(1)
        super().__init__(shards.to_columns(moments), alpha, mode)

    def _gram(self, moments: torch.Tensor) -> torch.Tensor:
        return self.shards.all_reduce(row_products(moments, moments))

    def products(self, W: torch.Tensor) -> tuple[torch.Tensor, ...]:
        columns = self.shards.to_columns(W.to(self.dtype).reshape(W.size(0), -1))
        return self._scaled((self.shards.all_reduce(row_products(columns, self.directions)),))

    def removed(self, products: tuple[torch.Tensor, ...], shape: torch.Size) -> torch.Tensor:
        columns = self._coefficients(products) @ self.directions  # [E, D_r]
        return self.shards.to_rows(columns, self.length).reshape(shape)

    def subtract(self, products: tuple[torch.Tensor, ...], W: torch.Tensor) -> None:
        W.sub_(self.removed(products, W.shape).to(W.dtype))
