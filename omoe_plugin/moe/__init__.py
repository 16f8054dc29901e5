"""Mixture-of-Experts building blocks: router, stacked experts, auxiliary losses, the layer."""

from .experts import (
    EXPERT_AXIS_ATTR,
    EXPERT_INPUT_ATTR,
    EXPERT_LAYER_ATTR,
    EXPERT_PARALLEL_ATTR,
    StackedExperts,
    expert_weight_key,
)
from .layer import MoEArgs, MoEAux, MoELayer
from .losses import expert_counts, expert_orthogonality_loss, load_balancing_loss, router_z_loss
from .parallel import ExpertParallel, check_expert_split, expert_parallel_groups
from .router import Routing, TopKRouter

__all__ = [
    "EXPERT_AXIS_ATTR",
    "EXPERT_INPUT_ATTR",
    "EXPERT_LAYER_ATTR",
    "EXPERT_PARALLEL_ATTR",
    "ExpertParallel",
    "MoEArgs",
    "MoEAux",
    "MoELayer",
    "Routing",
    "StackedExperts",
    "TopKRouter",
    "check_expert_split",
    "expert_counts",
    "expert_orthogonality_loss",
    "expert_parallel_groups",
    "expert_weight_key",
    "load_balancing_loss",
    "router_z_loss",
]
