"""Checkpoints of expert-parallel runs: the N shard files of one save joined into the one
whole checkpoint (export, analysis, resuming with one worker per replica), or a whole one cut
into N' shards (resuming with `--moe-expert-parallel-size N'`).

`--moe-expert-parallel-size N` writes `<name>-expert{r}of{N}.pt` from each rank r < N
(models/expert_parallel.py). Each is a whole fairseq checkpoint but for the experts: every
`.experts.{fc1,fc2}_{weight,bias}` tensor holds the rank's E/N consecutive experts (dim 0),
and so do their optimizer state (AdamW moments) and OMoE's statistics; everything else is
the same on every rank. Joining concatenates along dim 0 and cutting slices, so cutting a
checkpoint and joining the pieces gives it back bit for bit.
"""

import copy
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

import torch

from ..moe.parallel import check_expert_split
from .safe_read import read_checkpoint

logger = logging.getLogger(__name__)

SHARD = re.compile(r"(?P<name>.+)-expert(?P<rank>\d+)of(?P<size>\d+)\.pt")
EXPERT_TENSORS = tuple(f".experts.{p}" for p in ("fc1_weight", "fc1_bias", "fc2_weight",
                                                 "fc2_bias"))
# OMoE counters each worker counts over its own experts (the others count for all experts)
LOCAL_COUNTERS = ("empty_stats", "skipped_stats")
RESET = "resume from it with --reset-optimizer"


def shard_suffix(rank: int, size: int) -> str:
    """What rank `rank` of `size` adds to fairseq's checkpoint names."""
    return f"-expert{rank}of{size}"


def shard_path(whole: Path, rank: int, size: int) -> Path:
    """Where rank `rank` of `size` writes the shard of the checkpoint fairseq names `whole`
    (`checkpoint_last.pt` -> `checkpoint_last-expert0of2.pt`)."""
    whole = Path(whole)
    stem = whole.name[:-len(".pt")] if whole.name.endswith(".pt") else whole.name
    return whole.with_name(f"{stem}{shard_suffix(rank, size)}.pt")


def parse_shard(path: Path) -> Optional[tuple[Path, int, int]]:
    """(the whole checkpoint's path, rank, size) of a shard file name; None for another name."""
    path = Path(path)
    match = SHARD.fullmatch(path.name)
    if match is None:
        return None
    rank, size = int(match["rank"]), int(match["size"])
    return path.with_name(match["name"] + ".pt"), rank, size


def shard_paths(path: Path) -> list[Path]:
    """The N shard files of the save `path` (any one of them) belongs to, in rank order.

    Raises ValueError for a name that is not a shard's and FileNotFoundError naming every
    missing shard."""
    parsed = parse_shard(path)
    if parsed is None:
        raise ValueError(f"{path} is not an expert-parallel checkpoint shard: its name does "
                         "not end in -expert{r}of{N}.pt")
    whole, rank, size = parsed
    if not 0 <= rank < size:
        raise ValueError(f"{path} names rank {rank} of {size}: no such shard")
    paths = [shard_path(whole, r, size) for r in range(size)]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{path} is one of {size} expert-parallel shards, and "
                                f"{len(missing)} of them are missing: {', '.join(missing)}")
    return paths


def read_shards(path: Path, size: int = 1, optimizer: bool = True) -> list[dict]:
    """The save the shard file `path` belongs to, read (`read_checkpoint`) and resharded for
    `size` ranks (`reshard`; [whole] for 1), without the optimizer state unless `optimizer`.
    Errors name `path`."""
    states = [read_checkpoint(p) for p in shard_paths(path)]
    if not optimizer:
        states = [{**s, "last_optimizer_state": None} for s in states]
    try:
        return reshard(states, size)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def is_expert_tensor(key: str) -> bool:
    """Whether a model state key is a stacked expert tensor ([E, ...], split under expert
    parallelism)."""
    return key.endswith(EXPERT_TENSORS)


def join_shards(states: list[dict]) -> dict:
    """The whole checkpoint of the shards of one save, in rank order (`reshard` to 1)."""
    return reshard(states, 1)[0]


def split_whole(state: dict, size: int) -> list[dict]:
    """A whole checkpoint cut into the shards of `size` expert-parallel ranks, in rank order
    (`reshard`)."""
    return reshard([state], size)


def reshard(states: list[dict], size: int) -> list[dict]:
    """The checkpoint of the shards `states` (rank order; one whole checkpoint: [state]) as
    `size` shards ([whole] for 1). Experts, their optimizer state and OMoE's statistics are
    joined along dim 0 and cut again; everything else, checked identical across the inputs'
    model, is the first input's; the config says `moe_expert_parallel_size` = size.

    Raises ValueError when the inputs are not the shards of one save (naming the first
    tensor that differs) or the experts do not split over `size`. Optimizer state that cannot
    be mapped to the parameters (a flattened fp16 state, another optimizer's layout, shards
    that disagree) is dropped, with a warning: resuming then needs --reset-optimizer."""
    first, count = states[0], len(states)
    for rank, state in enumerate(states):
        declared = parallel_size(state)
        if declared != count:
            what = "a whole checkpoint" if declared == 1 else f"one of {declared} shards"
            raise ValueError(f"shard {rank} of {count} is {what}: not shards of one save"
                             if count > 1 else f"the checkpoint is {what}: join them first")
    check_same_update(states)
    models = [s["model"] for s in states]
    if any(m.keys() != models[0].keys() for m in models):
        raise ValueError("the shards hold different model tensors: not shards of one save")
    experts = expert_count(models)
    check_expert_split(experts, size)
    model_cfg = first["cfg"]["model"]
    if model_cfg.get("moe_experts", experts) != experts:
        raise ValueError(f"the shards hold {experts} experts per MoE layer, their config "
                         f"--moe-experts {model_cfg['moe_experts']}")
    model = {key: split([m[key] for m in models], size, key) if is_expert_tensor(key)
             else same([m[key] for m in models], size, f"model tensor {key}")
             for key in models[0]}
    optimizers = reshard_optimizer([s.get("last_optimizer_state") for s in states], models,
                                   size)
    outputs = []
    for rank in range(size):
        cfg = copy.deepcopy(first["cfg"])
        cfg["model"]["moe_expert_parallel_size"] = size
        outputs.append({**first, "cfg": cfg, "model": {k: v[rank] for k, v in model.items()},
                        "last_optimizer_state": optimizers[rank]})
    return outputs


def parallel_size(state: dict) -> int:
    """The `--moe-expert-parallel-size` a checkpoint was saved with (1: a whole one)."""
    cfg = state.get("cfg")
    model_cfg = cfg.get("model") if isinstance(cfg, Mapping) else None
    if not isinstance(model_cfg, Mapping) or not isinstance(state.get("model"), Mapping):
        raise ValueError("not an omoe_roberta checkpoint: it has no model config or state")
    return int(model_cfg.get("moe_expert_parallel_size") or 1)


def check_same_update(states: list[dict]) -> None:
    """Refuse shards saved at different updates (one overwritten by a later save, the
    other not), with the updates."""
    updates = [(s.get("optimizer_history") or [{}])[-1].get("num_updates") for s in states]
    if len(set(updates)) > 1:
        raise ValueError(f"the shards were saved at different updates ({updates}, in rank "
                         "order): not shards of one save")


def expert_count(models: list[dict]) -> int:
    """The experts per MoE layer the model states hold together (each the same share)."""
    keys = [k for k in models[0] if is_expert_tensor(k)]
    if not keys:
        raise ValueError("the checkpoint has no experts (a dense model): nothing to shard")
    shares = {m[k].size(0) for m in models for k in keys if k in m}
    if len(shares) > 1:
        raise ValueError(f"the shards hold different numbers of experts ({sorted(shares)}): "
                         "not shards of one save")
    return shares.pop() * len(models)


class Unmapped(ValueError):
    """Optimizer state that cannot be mapped to the model's parameters."""


def split(values: list[torch.Tensor], size: int, what: str,
          error: type = ValueError) -> list[torch.Tensor]:
    """Per-expert tensors, shards in rank order, joined along dim 0 and cut into `size`."""
    if any(v.shape[1:] != values[0].shape[1:] or v.dtype != values[0].dtype for v in values):
        raise error(f"{what} has different shapes in different shards: not shards of one save")
    whole = values[0] if len(values) == 1 else torch.cat(values)
    if size == 1:
        return [whole]
    return [part.clone() for part in whole.split(whole.size(0) // size)]


def same(values: list[Any], size: int, what: str, error: type = ValueError) -> list[Any]:
    """A value every shard holds identically, for `size` shards."""
    for rank, value in enumerate(values[1:], 1):
        if not identical(values[0], value):
            raise error(f"{what} differs between shards 0 and {rank}: not shards of one save")
    return [values[0]] * size


def identical(a: Any, b: Any) -> bool:
    """Equal, bit for bit for tensors (NaN equal to NaN), recursively through containers."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
                and a.dtype == b.dtype and a.shape == b.shape
                and (torch.equal(a, b) or bool(((a == b) | (a.isnan() & b.isnan())).all())))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(identical(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(identical(x, y) for x, y in zip(a, b))
    return a == b


def reshard_optimizer(optimizers: list[Optional[dict]], models: list[dict],
                      size: int) -> list[Optional[dict]]:
    """`size` optimizer states for the resharded model (None where the inputs have none, or
    where it cannot be mapped: see `reshard`)."""
    if any(o is None for o in optimizers):
        if any(o is not None for o in optimizers):
            logger.warning("dropped the optimizer state: only some shards have one; " + RESET)
        return [None] * size
    try:
        return OptimizerShards(optimizers, models).reshard(size)
    except Unmapped as e:
        problem = str(e)
    except (KeyError, TypeError, AttributeError) as e:  # an untrusted file's odd layout
        problem = f"its layout is not one this tool knows ({type(e).__name__}: {e})"
    logger.warning(f"dropped the optimizer state: {problem}; {RESET}")
    return [None] * size


class OptimizerShards:
    """The torch optimizer states (`state`, `param_groups`, OMoE's `omoe`) of the shards of one
    save, with the model parameter each saved index belongs to."""

    def __init__(self, optimizers: list[dict], models: list[dict]) -> None:
        self.optimizers, self.models = optimizers, models
        self.keys = [param_keys(o, list(m)) for o, m in zip(optimizers, models)]
        same(self.keys, 1, "the optimizer's parameter order", Unmapped)

    def reshard(self, size: int) -> list[dict]:
        first = self.optimizers[0]
        groups = same([o["param_groups"] for o in self.optimizers], size, "param_groups",
                      Unmapped)
        states = {}
        for index, key in self.keys[0].items():
            entries = [o["state"].get(index) for o in self.optimizers]
            if all(e is None for e in entries):
                continue
            if any(e is None for e in entries) or len({tuple(e) for e in entries}) > 1:
                raise Unmapped(f"the shards keep different optimizer state for {key}")
            states[index] = {name: self.entry(key, [e[name] for e in entries], size, name)
                             for name in entries[0]}
        omoe = (self.omoe([o["omoe"] for o in self.optimizers], size) if "omoe" in first
                else [None] * size)
        outputs = []
        for rank in range(size):
            output = {**first, "state": {i: {name: v[rank] for name, v in entry.items()}
                                         for i, entry in states.items()},
                      "param_groups": groups[rank]}
            if omoe[rank] is not None:
                output["omoe"] = omoe[rank]
            outputs.append(output)
        return outputs

    def entry(self, key: str, values: list, size: int, name: str) -> list:
        """One optimizer state entry of parameter `key` (e.g. its `exp_avg`), per shard."""
        shapes = [m[key].shape for m in self.models]
        if not isinstance(values[0], torch.Tensor) or values[0].dim() == 0:  # e.g. step
            return same(values, size, f"the optimizer's {name} of {key}", Unmapped)
        if any(v.shape != s for v, s in zip(values, shapes)):
            raise Unmapped(f"its {name} of {key} has another shape than the parameter")
        if is_expert_tensor(key):
            return split(values, size, f"the optimizer's {name} of {key}", Unmapped)
        return same(values, size, f"the optimizer's {name} of {key}", Unmapped)

    @staticmethod
    def omoe(states: list[dict], size: int) -> list[dict]:
        """OMoE's own state per shard: statistics per local expert, projector factors of every
        expert (the same on every worker), counters (see LOCAL_COUNTERS)."""
        parts = {}
        for part in ("stats", "stat_steps"):
            keys = same([sorted(s[part]) for s in states], 1, f"OMoE's {part} keys", Unmapped)[0]
            parts[part] = {k: split([s[part][k] for s in states], size, f"OMoE's {part} {k}",
                                    Unmapped) for k in keys}
        for part in ("factors", "settings"):
            parts[part] = same([s[part] for s in states], size, f"OMoE's {part}", Unmapped)
        counters = dict(states[0]["counters"])
        local = {k: sum(s["counters"].get(k, 0) for s in states) for k in LOCAL_COUNTERS
                 if k in counters}
        outputs = []
        for rank in range(size):
            output = {**states[0], **{p: parts[p][rank] for p in ("factors", "settings")},
                      "counters": {**counters, **{k: v if rank == 0 else 0
                                                  for k, v in local.items()}}}
            for part in ("stats", "stat_steps"):
                output[part] = {k: v[rank] for k, v in parts[part].items()}
            outputs.append(output)
        return outputs


def param_keys(optimizer: dict, model_keys: list[str]) -> dict[int, str]:
    """{saved parameter index: model state key} of an optimizer state dict.

    torch numbers the parameters in the order of the saved param groups; fairseq hands the
    model's parameters to the optimizer in order (no buffers: the state keys are the
    parameters), which OMoE saves regrouped, recording each one's original position."""
    groups, state = optimizer.get("param_groups"), optimizer.get("state")
    if not isinstance(groups, list) or not isinstance(state, Mapping):
        raise Unmapped("it is not a torch optimizer state dict")
    indices = [i for g in groups for i in g.get("params", ())]
    if indices != list(range(len(model_keys))):
        raise Unmapped(f"it holds {len(indices)} parameters and the model {len(model_keys)} "
                       "(a flattened --fp16 state?)")
    origin = optimizer["omoe"].get("origin") if "omoe" in optimizer else indices
    if origin is None or sorted(origin) != indices:
        raise Unmapped("OMoE's state does not record its parameters' order (saved by an older "
                       "version)")
    return {i: model_keys[origin[i]] for i in indices}
