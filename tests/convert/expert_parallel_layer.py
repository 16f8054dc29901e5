"""What sharded OMoE saves: a stacked-expert layer trained on 1 process or on each of 2 gloo
workers holding half the experts, as checkpoint dicts. A module of its own, importing only
torch and the optimizer, because each worker process imports it (tests/convert/
test_consolidate.py)."""

import torch
import torch.distributed as dist

from omoe_plugin.optim import OMoE

E, D, H = 4, 6, 10  # experts, model and hidden width
UPDATES = 3  # two accumulating updates, then an orthogonal one: projectors formed
KEYS = ("encoder.layers.0.moe.experts.fc1_weight", "encoder.layers.0.moe.experts.fc2_weight",
        "encoder.layernorm_embedding.bias")
SETTINGS = dict(space="inputs", stat="pca", stat_rank=2, max_rank=4, accumulate_steps=2,
                orthogonal_steps=2)


def train_layer(rank: int = 0, workers: int = 1) -> dict:
    """The checkpoint of UPDATES OMoE updates of two stacked expert weights and a shared
    parameter (model state in parameter order, optimizer state, config), on this worker's
    share of the experts."""
    share = slice(rank * E // workers, (rank + 1) * E // workers)
    g = torch.Generator().manual_seed(0)
    whole = [torch.randn(E, H, D, generator=g), torch.randn(E, D, H, generator=g),
             torch.randn(D, generator=g)]
    params = [torch.nn.Parameter(w[share] if w.dim() == 3 else w) for w in whole]
    optimizer = OMoE(params, lr=0.05, experts=[params[:2]], **SETTINGS,
                     expert_group=dist.group.WORLD if workers > 1 else None)
    for step in range(UPDATES):
        g = torch.Generator().manual_seed(100 + step)
        for p, w in zip(params, whole):
            grad = torch.randn(w.shape, generator=g)
            p.grad = grad[share] if grad.dim() == 3 else grad
        g = torch.Generator().manual_seed(200 + step)
        optimizer.routed_inputs = lambda stats, g=g: {  # every expert's summary, this share
            k: torch.randn(E, v.size(1), 2, generator=g)[share] for k, v in stats.items()}
        optimizer.step()
    return {"cfg": {"model": {"_name": "omoe_roberta", "moe_experts": E,
                              "moe_expert_parallel_size": workers}},
            "model": {k: p.detach() for k, p in zip(KEYS, params)},
            "last_optimizer_state": optimizer.state_dict(),
            "optimizer_history": [{"num_updates": UPDATES}]}


def layer_worker(rank: int, port: int, out_dir: str) -> None:
    """Rank `rank` of 2: trains its half of the experts and saves its shard as fairseq names
    it."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)
    try:
        torch.save(train_layer(rank, 2), f"{out_dir}/checkpoint_last-expert{rank}of2.pt")
    finally:
        dist.destroy_process_group()
