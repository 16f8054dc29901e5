"""OMoE's parameter groups: every group's expert weights in a group of their own (marked
EXPERT_GROUP), right after the rest of it, so that orthogonal updates can take the experts at
their own learning rate (`--omoe-orthogonal-lr-scale`) at no extra pass over the weights; and
loading the optimizer state of a checkpoint saved before the split."""

from typing import Optional

import torch

from ..moe import (EXPERT_AXIS_ATTR, EXPERT_INPUT_ATTR, EXPERT_LAYER_ATTR, EXPERT_PARALLEL_ATTR,
                   expert_weight_key)

EXPERT_GROUP = "omoe_experts"  # param-group key: True for a group of stacked expert weights


def fused_kernel(groups: list[dict]) -> Optional[bool]:
    """True where torch's fused AdamW kernel takes every parameter (floating point, on CPU or
    CUDA): one pass over each tensor instead of several, about 4 times as fast on CPU, with
    the same results. None (torch's default loop) otherwise."""
    params = [p for g in groups for p in g["params"]]
    return True if all(p.is_floating_point() and p.device.type in ("cpu", "cuda")
                       for p in params) else None


def split_expert_groups(groups: list[dict], experts: dict[str, torch.Tensor]
                        ) -> tuple[list[dict], list[int]]:
    """(the param groups, each split into its other parameters and its `experts`; the
    position each parameter had in the original groups' order, in the split groups' order)."""
    expert_ids = {id(p) for p in experts.values()}
    split, origin, position = [], [], 0
    for group in groups:
        rest = {k: v for k, v in group.items() if k not in ("params", EXPERT_GROUP)}
        numbered = list(enumerate(group["params"], position))
        position += len(numbered)
        for is_expert in (False, True):
            part = [(i, p) for i, p in numbered if (id(p) in expert_ids) == is_expert]
            if part:
                split.append({**rest, "params": [p for _, p in part], EXPERT_GROUP: is_expert})
                origin += [i for i, _ in part]
    return split, origin


def regroup_saved(saved_groups: list[dict], groups: list[dict], origin: list[int]) -> list[dict]:
    """A checkpoint's param groups as `groups` are split. Saved groups that already match are
    returned as they are; groups saved unsplit (one per original group, parameters numbered
    in the original order) are split the same way, each keeping its saved hyper-parameters."""
    if len(saved_groups) == len(groups):
        return saved_groups
    owner = {i: g for g in saved_groups for i in g["params"]}  # saved index -> saved group
    regrouped, position = [], 0
    for group in groups:
        ids = origin[position:position + len(group["params"])]
        position += len(ids)
        if any(i not in owner for i in ids):
            raise ValueError("the checkpoint's optimizer state does not fit this model's "
                             "parameters; resume with --reset-optimizer")
        regrouped.append({**owner[ids[0]], "params": ids, EXPERT_GROUP: group[EXPERT_GROUP]})
    return regrouped


def param_groups(params) -> list[dict]:
    """params as torch.optim takes them (tensors or dicts), as a list of groups."""
    groups = list(params)
    return [{"params": groups}] if groups and not isinstance(groups[0], dict) else groups


def expert_weights(groups: list[dict], experts=None) -> dict[str, torch.Tensor]:
    """The stacked expert weights [E, out, in] to train orthogonally, by key.

    experts: an explicit list per MoE layer of its stacked expert weights ("{layer}.{i}"), or
    None: every tensor of a group marked {EXPERT_GROUP: True} ("g{group}.{i}") and every
    tensor the MoE layer of this package tagged ("{layer}.{fc1|fc2}")."""
    if experts is not None:
        found = {f"{layer}.{i}": p for layer, weights in enumerate(experts)
                 for i, p in enumerate(weights)}
        listed = {id(p) for g in groups for p in g["params"]}
        if any(id(p) not in listed for p in found.values()):
            raise ValueError("OMoE's experts must be among the parameters it trains")
    else:
        found = {}
        for g, group in enumerate(groups):
            for i, p in enumerate(group["params"]):
                if group.get(EXPERT_GROUP):
                    found[f"g{g}.{i}"] = p
                elif hasattr(p, EXPERT_AXIS_ATTR):
                    layer, role = getattr(p, EXPERT_LAYER_ATTR), getattr(p, EXPERT_INPUT_ATTR)
                    found[expert_weight_key(layer, role)] = p
    for p in found.values():
        if p.dim() != 3 or getattr(p, EXPERT_AXIS_ATTR, 0) != 0:
            raise ValueError("OMoE expects expert weights stacked as [E, out, in], the experts "
                             f"along the first dimension; got a tensor of shape {tuple(p.shape)}")
    return found


def expert_parallel_group(weights) -> Optional["torch.distributed.ProcessGroup"]:
    """The expert-parallel process group the MoE layer tagged its stacked expert weights with
    (each weight then holds a worker's share of the experts); None when they are whole."""
    parallel = {id(getattr(p, EXPERT_PARALLEL_ATTR, None)): getattr(p, EXPERT_PARALLEL_ATTR, None)
                for p in weights}
    if len(parallel) > 1:
        raise ValueError("OMoE's expert weights come from MoE layers sharded over different "
                         "expert-parallel groups; build every layer with the same one")
    found = next(iter(parallel.values()), None)
    return found.group if found is not None and found.size > 1 else None
