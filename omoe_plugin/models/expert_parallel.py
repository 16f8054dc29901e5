"""Expert parallelism in fairseq-train (`--moe-expert-parallel-size N`): the process groups,
the gradients, and the checkpoints, one shard file per expert-parallel rank.

fairseq's trainer knows data parallelism only: it writes one checkpoint from rank 0 and sends
it to every rank on load. With experts sharded over N workers, each of the first N ranks
(the first replica of the experts) writes its own file, `checkpoint_last-expert{r}of{N}.pt`,
every rank reads its own, and `omoe-consolidate` joins the N files into the one checkpoint
that `omoe-export` and `omoe-analyze` read, or cuts them for another N. `--finetune-from-model`
takes a whole (unsharded) checkpoint, such as an upcycled one: every rank keeps its experts.

Gradients: fairseq's data-parallel all-reduce averages every shared gradient over the world
(legacy_ddp leaves the experts out by their `expert` mark, pytorch_ddp by its ignore list),
and the trainer multiplies by world size / sample size. An expert's gradient on its worker
already sums the tokens the whole expert-parallel group routed to it; the task's optimizer
step divides it by the world size and sums it over the expert's replicas
(`reduce_expert_gradients`), the same scale as the shared ones. Gradient clipping measures
the shared parameters only (fairseq's convention for `expert` parameters, the same on every
worker) and scales the experts by the same factor.
"""

from typing import Optional

import torch
import torch.distributed as dist
import torch.nn as nn

from ..convert.consolidate import shard_suffix
from ..moe import StackedExperts
from ..moe.parallel import ExpertParallel, check_expert_split, expert_parallel_groups


def build_expert_parallel(cfg) -> Optional[ExpertParallel]:
    """This worker's ExpertParallel for `--moe-expert-parallel-size` (None for 1), after
    checking what fairseq-train must be given for it."""
    size = getattr(cfg, "moe_expert_parallel_size", 1)
    if size == 1:
        return None
    if size < 1:
        raise ValueError(f"--moe-expert-parallel-size must be >= 1, got {size}")
    if cfg.moe_freq == 0:
        raise ValueError("--moe-expert-parallel-size needs MoE layers (--moe-freq >= 1)")
    check_expert_split(cfg.moe_experts, size)
    if not dist.is_initialized():
        raise ValueError(f"--moe-expert-parallel-size {size} shards the experts over "
                         f"workers: launch fairseq-train on a multiple of {size} workers "
                         "(--distributed-world-size, or torchrun)")
    install_sharded_checkpoints()
    return expert_parallel_groups(size)


def expert_parallel_of(model: nn.Module) -> Optional[ExpertParallel]:
    """The ExpertParallel the model's MoE layers were built with (None: every expert here)."""
    return next((m.parallel for m in model.modules() if isinstance(m, StackedExperts)), None)


def ignore_in_data_parallel(model: nn.Module) -> None:
    """Keep the experts out of pytorch_ddp's all-reduce (legacy_ddp reads their `expert`
    mark): their gradients are reduced over their replicas instead."""
    names = [n for n, p in model.named_parameters() if hasattr(p, "expert")]
    nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, names)


@torch.no_grad()
def reduce_expert_gradients(model: nn.Module) -> None:
    """Scale the sharded experts' gradients like the shared parameters' (see the module
    docstring): divided by the world size, summed over each expert's replicas."""
    for module in model.modules():
        if isinstance(module, StackedExperts) and module.parallel is not None:
            for p in module.parameters():
                if p.grad is not None:
                    p.grad.div_(dist.get_world_size())
                    if dist.get_world_size(module.parallel.replicas) > 1:  # else: itself
                        dist.all_reduce(p.grad, group=module.parallel.replicas)


def shard_whole_experts(model: nn.Module, state_dict: dict, prefix: str = "") -> None:
    """Cut the experts of a whole checkpoint ([E, ...] tensors) to this worker's share, in
    place; a shard's tensors, already [E/N, ...], are kept."""
    for name, module in model.named_modules():
        if isinstance(module, StackedExperts) and module.parallel is not None:
            for key, p in module.named_parameters():
                full = f"{prefix}{name}.{key}"
                saved = state_dict.get(full)
                if saved is not None and saved.size(0) == module.num_experts != p.size(0):
                    state_dict[full] = saved[module.local].clone()


def check_same_update(updates: int, filename: str) -> None:
    """Stop unless every worker resumed from the same update: a job killed while its
    workers wrote their shards can leave shards of two updates behind."""
    seen = torch.tensor([updates, -updates])
    dist.all_reduce(seen, op=dist.ReduceOp.MAX)
    if seen[0] != -seen[1]:
        raise SystemExit(
            f"cannot resume: the shards of {filename} are from different updates "
            f"({-int(seen[1])} to {int(seen[0])}), as a job killed while writing them leaves "
            "them; resume from an earlier checkpoint whose shards all exist "
            "(--restore-file checkpoint_E_U.pt, --keep-interval-updates keeps them)")


def install_sharded_checkpoints() -> None:
    """Teach fairseq's Trainer the shard files (see the module docstring); a model without
    expert parallelism keeps fairseq's behaviour. Idempotent."""
    from fairseq.trainer import Trainer

    if getattr(Trainer, "_omoe_sharded", False):
        return
    save_here, suffix, load = (Trainer.should_save_checkpoint_on_current_rank,
                               Trainer.checkpoint_suffix, Trainer.load_checkpoint)

    def parallel_of(trainer) -> Optional[ExpertParallel]:
        return expert_parallel_of(trainer._model)

    def should_save(trainer) -> bool:
        parallel = parallel_of(trainer)
        return save_here.fget(trainer) if parallel is None else dist.get_rank() < parallel.size

    def checkpoint_suffix(trainer) -> str:
        parallel = parallel_of(trainer)
        return suffix.fget(trainer) + ("" if parallel is None
                                       else shard_suffix(parallel.rank, parallel.size))

    def load_checkpoint(trainer, filename, *args, **kwargs):
        if parallel_of(trainer) is None:
            return load(trainer, filename, *args, **kwargs)
        trainer.cfg.checkpoint.load_checkpoint_on_all_dp_ranks = True  # each reads its shard
        extra_state = load(trainer, filename, *args, **kwargs)
        check_same_update(trainer.get_num_updates(), filename)
        return extra_state

    Trainer.should_save_checkpoint_on_current_rank = property(should_save)
    Trainer.checkpoint_suffix = property(checkpoint_suffix)
    Trainer.load_checkpoint = load_checkpoint
    Trainer._omoe_sharded = True
