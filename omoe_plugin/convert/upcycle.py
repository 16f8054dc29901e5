"""Dense -> MoE upcycling of an omoe_roberta encoder state (Komatsuzaki et al. 2023).

`copy`: every expert of an MoE layer starts as the dense FFN it replaces and the router
starts random (normal, std 0.02, as BERT's initialisation). Whatever the router picks, the
renormalised top-k weights sum to 1, so the upcycled model computes exactly what the dense
one did until training moves the experts apart: the homogeneous starting point the paper's
optimizer is meant to diversify.
"""

import dataclasses

import torch
import torch.nn as nn

from ..models import OMoERobertaConfig
from ..models.encoder import is_moe_layer, moe_args
from ..moe import MoELayer


def upcycle(
    cfg: OMoERobertaConfig,
    dense: dict[str, torch.Tensor],
    num_experts: int,
    top_k: int = 1,
    moe_freq: int = 1,
    seed: int = 0,
) -> tuple[OMoERobertaConfig, dict[str, torch.Tensor]]:
    """The MoE configuration and state of a dense omoe_roberta state (`copy` upcycling)."""
    if cfg.moe_freq != 0:
        raise ValueError("upcycling needs a dense checkpoint (--moe-freq 0)")
    moe_cfg = dataclasses.replace(cfg, moe_experts=num_experts, moe_top_k=top_k, moe_freq=moe_freq)
    state = dict(dense)
    generator = torch.Generator().manual_seed(seed)
    for i in range(cfg.encoder_layers):
        if not is_moe_layer(i, moe_freq):
            continue
        layer = MoELayer(moe_args(moe_cfg, i))  # validates experts and top-k
        with torch.no_grad():
            layer.router.gate.weight.normal_(0.0, 0.02, generator=generator)
        fc1, fc2 = (_linear(state, f"encoder.layers.{i}.{name}") for name in ("fc1", "fc2"))
        layer.experts.copy_dense_(fc1, fc2)
        for key, value in layer.state_dict().items():
            state[f"encoder.layers.{i}.moe.{key}"] = value
    return moe_cfg, state


def _linear(state: dict[str, torch.Tensor], prefix: str) -> nn.Linear:
    """Pop prefix.weight / prefix.bias out of state as an nn.Linear."""
    weight, bias = state.pop(f"{prefix}.weight"), state.pop(f"{prefix}.bias")
    linear = nn.Linear(weight.size(1), weight.size(0))
    linear.load_state_dict({"weight": weight, "bias": bias})
    return linear
