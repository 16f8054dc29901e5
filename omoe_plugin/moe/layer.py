"""The MoE feed-forward layer: a top-k router in front of stacked experts."""

from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch
import torch.nn as nn

from .experts import StackedExperts
from .losses import expert_counts, load_balancing_loss, router_z_loss
from .parallel import ExpertParallel
from .router import TopKRouter


@dataclass
class MoEArgs:
    """Everything that shapes one MoE layer."""

    embed_dim: int
    ffn_dim: int
    num_experts: int = 4
    top_k: int = 1
    activation_fn: str = "gelu"
    activation_dropout: float = 0.0
    layer_index: int = 0
    parallel: Optional[ExpertParallel] = None  # split the experts over ranks (see parallel.py)


class MoEAux(NamedTuple):
    """Per-layer router statistics of one forward pass."""

    load_balancing: torch.Tensor  # scalar, see losses.load_balancing_loss
    z_loss: torch.Tensor  # scalar, see losses.router_z_loss
    counts: torch.Tensor  # [E] top-k assignments per expert (padding excluded)
    experts: torch.Tensor  # x.shape[:-1] + [k] chosen experts per token (E = none: padding)


class MoELayer(nn.Module):
    """Token-level top-k mixture of FFN experts, a drop-in for a transformer FFN.

    No token is dropped (no capacity limit) at training or inference, and padding tokens
    are routed to no expert, so they cost nothing and do not count in the statistics.

    With args.parallel, the experts are split over the expert-parallel group's ranks (see
    StackedExperts); the router is replicated, each rank routes its own tokens among all E
    experts, and the router statistics and losses are this rank's, over all E experts.
    """

    def __init__(self, args: MoEArgs) -> None:
        # fairseq's activation names; imported here, so that the layer's package (and the
        # optimizer, which reads its expert tags) loads without fairseq
        from fairseq import utils

        super().__init__()
        self.args = args
        self.router = TopKRouter(args.embed_dim, args.num_experts, args.top_k)
        self.experts = StackedExperts(
            args.num_experts,
            args.embed_dim,
            args.ffn_dim,
            activation_fn=utils.get_activation_fn(args.activation_fn),
            activation_dropout=args.activation_dropout,
            layer_index=args.layer_index,
            parallel=args.parallel,
        )

    def forward(
        self, x: torch.Tensor, padding_mask: Optional[torch.Tensor] = None
    ) -> tuple[torch.Tensor, MoEAux]:
        """x: [..., d]; padding_mask: x.shape[:-1], True = padding. Returns y like x and MoEAux."""
        shape = x.shape
        tokens = x.reshape(-1, shape[-1])  # [N, d]
        flat_mask = None if padding_mask is None else padding_mask.reshape(-1)
        routing = self.router(tokens, flat_mask)
        y = self.experts(tokens, routing.experts, routing.weights)
        num_experts = self.args.num_experts
        aux = MoEAux(
            load_balancing=load_balancing_loss(routing.probs, routing.experts, num_experts),
            z_loss=router_z_loss(routing.logits, routing.experts),
            counts=expert_counts(routing.experts, num_experts),
            experts=routing.experts.reshape(*shape[:-1], -1),
        )
        return y.reshape(shape), aux
