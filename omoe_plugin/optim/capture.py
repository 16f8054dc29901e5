"""Capture of what each expert sees, summarised per update for the OMoE optimizer.

Installed on the MoE layers by the alternating task during accumulating updates only; the
experts call it with each expert weight's input and output on the expert's routed tokens
(fc1: token -> pre-activation, fc2: hidden activation -> expert output). The capture keeps
the inputs (`--omoe-space inputs`), the inputs centred per expert and micro-batch
(`centred`) or the outputs (`outputs`). Vectors are normalised to unit length first, so that
a summary's second moment has trace <= 1 in every layer and `--omoe-alpha` means the same
everywhere (a fraction of the energy).
"""

from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .projector import compress
from .settings import choices
from ..moe import expert_weight_key

CAPTURED = tuple(s for s in choices("space") if s != "deltas")  # the statistics spaces


class RoutedInputCapture:
    """Summaries of one update's routed inputs, per MoE weight ("{layer}.fc1"/"{layer}.fc2")
    and expert, summed over the update's micro-batches.

    summary "mean": the mean of the unit-normalised routed inputs (OWM's choice; 1 column).
    summary "pca": their top `width` principal directions, scaled so that S S^T is their
      second moment's top part (exact eigen-decomposition; `width` columns).
    summary "tokens": every routed input as a column (exact, costly: the optimizer folds
      them into its rank-limited statistics with an eigen-decomposition of their Gram matrix).
    """

    def __init__(self, summary: str, width: int = 1, space: str = "inputs") -> None:
        """summary: one of --omoe-stat's choices; width: directions kept per update with
        summary "pca" (--omoe-stat-rank); space: what is summarised (--omoe-space)."""
        if summary not in choices("stat"):
            raise ValueError(f"--omoe-stat must be one of {', '.join(choices('stat'))}, "
                             f"got {summary!r}")
        if space not in CAPTURED:
            raise ValueError(f"no routed-input capture for --omoe-space {space!r}")
        self.summary, self.space = summary, space
        self.width = width
        self.sums: dict[str, dict[int, torch.Tensor]] = {}  # key -> expert -> [dim, w]
        self.counts: dict[str, dict[int, int]] = {}
        self.num_experts: dict[str, int] = {}

    def __call__(self, layer: int, num_experts: int, expert: int,
                 outputs: Optional[dict[str, torch.Tensor]] = None,
                 **inputs: torch.Tensor) -> None:
        """Record what expert `expert`'s weights saw: their inputs by role, e.g. fc1=[n, d],
        fc2=[n, h], and (needed with space "outputs") their outputs, e.g.
        outputs={"fc1": [n, h], "fc2": [n, d]}."""
        for role, x in inputs.items():
            key = expert_weight_key(layer, role)
            self.num_experts[key] = num_experts
            if self.space == "outputs":
                x = outputs[role]
            x = x.detach().float()
            if self.space == "centred":
                x = x - x.mean(dim=0)
            x = F.normalize(x, dim=-1).T  # [dim, n]
            if self.summary == "mean":
                s = x.sum(dim=1, keepdim=True)
            elif self.summary == "pca":
                s = compress(x, self.width)
            else:
                s = x
            old = self.sums.setdefault(key, {}).get(expert)
            if old is not None:
                s = old + s if self.summary == "mean" else torch.cat([old, s], dim=1)
                if self.summary == "pca":
                    s = compress(s, self.width)
            self.sums[key][expert] = s
            counts = self.counts.setdefault(key, {})
            counts[expert] = counts.get(expert, 0) + x.size(1)

    def pop_summaries(
        self,
        group: Optional[dist.ProcessGroup] = None,
        statistics: Optional[dict[str, torch.Tensor]] = None,
    ) -> dict[str, torch.Tensor]:
        """This update's summaries, summed over data-parallel workers, then cleared.

        statistics: the optimizer's statistics, key -> [E, dim, ...] per expert weight, in
        the same order on every worker: their sizes and device give the summary's, and
        every key is reduced even where this worker captured nothing for it (a dummy batch
        at the end of an uneven epoch), so all workers make the same collective calls on
        the device their backend needs. Without it: the keys captured here, on the CPU.

        Returns key -> X [E, dim, w]: step columns with X[e] X[e]^T = expert e's normalised
        second moment (mean: the mean vector's outer product); all-zero for an expert that
        received no token on any worker.
        """
        if statistics is None:
            statistics = {k: torch.empty(self.num_experts[k], next(iter(s.values())).size(0), 0)
                    for k, s in self.sums.items()}
        out = {}
        for key, template in statistics.items():
            E, in_dim = template.shape[:2]
            sums = self.sums.get(key, {})
            width = max((s.size(1) for s in sums.values()), default=int(self.summary == "mean"))
            S = torch.zeros(E, in_dim, width, device=template.device)
            n = torch.zeros(E, device=template.device)
            for e, s in sums.items():
                S[e, :, : s.size(1)] = s
                n[e] = self.counts[key][e]
            S, n = self._reduce(S, n, group)
            scale = n if self.summary == "mean" else n.sqrt()
            out[key] = S / scale.clamp(min=1.0).view(E, 1, 1)
        self.sums, self.counts = {}, {}
        return out

    def _reduce(self, S: torch.Tensor, n: torch.Tensor, group):
        """Sum over workers: S itself for means, otherwise the columns (all-gathered)."""
        if not dist.is_initialized() or dist.get_world_size(group) == 1:
            return S, n
        dist.all_reduce(n, group=group)
        if self.summary == "mean":
            dist.all_reduce(S, group=group)
            return S, n
        width = torch.tensor(S.size(2), device=S.device)
        dist.all_reduce(width, op=dist.ReduceOp.MAX, group=group)
        S = torch.cat([S, S.new_zeros(*S.shape[:2], int(width) - S.size(2))], dim=2)
        parts = [torch.empty_like(S) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, S, group=group)
        return torch.cat(parts, dim=2), n
