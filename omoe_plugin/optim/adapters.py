"""Where a model keeps its experts: the stacked expert weights of every MoE layer, per layer, as
`OMoE(params, experts=...)` takes them, for this package's layer and for transformers' MoE
blocks (Mixtral, Qwen-MoE, ...), which since transformers 5 stack their experts too."""

import torch
from torch import nn

from ..moe import StackedExperts


def stacked_experts(model: nn.Module) -> list[list[torch.Tensor]]:
    """Every MoE layer's stacked expert weights [E, out, in], in module order.

    Found: this package's StackedExperts (fc1_weight, fc2_weight) and every module whose class
    name ends in "Experts" (transformers' MixtralExperts: gate_up_proj [E, 2 h, d] and down_proj
    [E, d, h]; Qwen2MoeExperts, ... alike). Biases and routers are not experts' weights: they
    take the plain AdamW update."""
    layers = []
    for module in model.modules():
        if isinstance(module, StackedExperts) or type(module).__name__.endswith("Experts"):
            weights = [p for p in module.parameters(recurse=False) if p.dim() == 3]
            if weights:
                layers.append(weights)
    return layers
