"""Top-k token router: a linear gate, fp32 softmax, renormalised top-k weights."""

from typing import NamedTuple, Optional

import torch
import torch.nn as nn


class Routing(NamedTuple):
    """What the router decided for N tokens routed among E experts with top-k."""

    logits: torch.Tensor  # [N, E] fp32 gate logits
    probs: torch.Tensor  # [N, E] fp32 softmax over all experts
    experts: torch.Tensor  # [N, k] int64 chosen experts; E marks a token routed nowhere (padding)
    weights: torch.Tensor  # [N, k] fp32 combine weights, sum to 1 over k for every routed token


class TopKRouter(nn.Module):
    """Scores every token against every expert and keeps the k best.

    The softmax runs in fp32 whatever the activation dtype (as in GShard and Switch), and
    the k kept probabilities are renormalised to sum to 1 (Mixtral-style), so with k = E
    or E = 1 every token keeps its full representation.
    """

    def __init__(self, embed_dim: int, num_experts: int, top_k: int) -> None:
        super().__init__()
        if num_experts < 1:
            raise ValueError(f"--moe-experts must be >= 1, got {num_experts}")
        if not 1 <= top_k <= num_experts:
            raise ValueError(
                f"--moe-top-k must be between 1 and --moe-experts ({num_experts}), got {top_k}"
            )
        self.num_experts = num_experts
        self.top_k = top_k
        self.gate = nn.Linear(embed_dim, num_experts, bias=False)

    def forward(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor] = None) -> Routing:
        """Route x ([N, d]); padding_mask ([N], True = padding) sends those tokens nowhere."""
        logits = self.gate(x).float()
        probs = torch.softmax(logits, dim=-1)
        weights, experts = torch.topk(probs, self.top_k, dim=-1)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        if padding_mask is not None:
            experts = experts.masked_fill(padding_mask.unsqueeze(-1), self.num_experts)
        return Routing(logits, probs, experts, weights)
