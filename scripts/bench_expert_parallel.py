"""Benchmark: what one worker holds and sends under expert parallelism, for E = 8, 16, 32
experts sharded over N = 1, 2, 4 gloo workers on this machine (one MoE layer of the MiniLM
encoder's size, d = 384, h = 1536, top-1, 4,096 tokens per worker, `--optimizer omoe` with
its default reading).

Per worker it measures, from the tensors themselves:
- expert memory: the experts' parameters, gradients and AdamW moments (formula:
  16 bytes x E/N x (2 d h + h + d), float32);
- token bytes: what the layer's all-to-alls send to other workers in one forward and
  backward (the routed tokens and their outputs, then their gradients: 4 x 4 bytes x d per
  token routed to another worker's expert);
- OMoE bytes: what the optimizer sends in one orthogonal update (`report["sent_bytes"]`;
  deltas: 6 (N-1)/N of the worker's expert weights plus four E x E all-reduces per weight);
and the process's peak resident memory (torch and gloo included).

    python scripts/bench_expert_parallel.py [--experts 8 16 32] [--workers 1 2 4]

The last line printed is one JSON object.
"""

import argparse
import json
import resource
import socket
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from omoe_plugin.moe import MoEArgs, MoELayer
from omoe_plugin.moe.parallel import expert_parallel_groups
from omoe_plugin.optim import OMoE

DIM, HIDDEN, TOKENS = 384, 1536, 4096


def worker(rank: int, port: int, workers: int, experts: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=workers)
    try:
        parallel = expert_parallel_groups(workers) if workers > 1 else None
        torch.manual_seed(0)
        layer = MoELayer(MoEArgs(DIM, HIDDEN, num_experts=experts, parallel=parallel))
        optimizer = OMoE(layer.parameters(), lr=1e-4, accumulate_steps=1, orthogonal_steps=1)
        x = torch.randn(TOKENS, DIM, generator=torch.Generator().manual_seed(rank))
        sent = []
        for _ in range(2):  # an accumulating update (AdamW's moments), then an orthogonal one
            optimizer.zero_grad()
            y, aux = layer(x)
            y.square().mean().backward()
            optimizer.step()
            sent.append(optimizer.report.get("sent_bytes", 0.0))
        local = layer.experts.local if parallel is not None else slice(0, experts)
        away = int(((aux.experts < local.start) | (aux.experts >= local.stop)).sum())
        held = sum(t.numel() * t.element_size() for p in layer.experts.parameters()
                   for t in (p, p.grad, *optimizer.state[p].values()) if t.dim() > 0)
        result = {"expert_mb": held / 2**20, "token_mb": 4 * 4 * DIM * away / 2**20,
                  "omoe_mb": sent[1] / 2**20,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10}
        torch.save(result, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(experts: int, workers: int) -> dict:
    """The median worker's measurements (they differ only by routing)."""
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(worker, args=(free_port(), workers, experts, out), nprocs=workers)
        ranks = [torch.load(Path(out) / f"rank{r}.pt") for r in range(workers)]
    return {key: sorted(r[key] for r in ranks)[len(ranks) // 2] for key in ranks[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experts", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    rows = []
    print("| E | N | expert memory (MB) | formula (MB) | peak RSS (MB) | token all-to-all (MB) "
          "| OMoE per orthogonal update (MB) |")
    print("|---|---|---|---|---|---|---|")
    for experts in args.experts:
        for workers in args.workers:
            row = {"experts": experts, "workers": workers, **measure(experts, workers)}
            formula = 16 * experts // workers * (2 * DIM * HIDDEN + HIDDEN + DIM) / 2**20
            row["formula_mb"] = formula
            rows.append(row)
            print(f"| {experts} | {workers} | {row['expert_mb']:.1f} | {formula:.1f} | "
                  f"{row['peak_rss_mb']:.0f} | {row['token_mb']:.2f} | {row['omoe_mb']:.2f} |",
                  flush=True)
    print(json.dumps({"dim": DIM, "hidden": HIDDEN, "tokens_per_worker": TOKENS, "rows": rows}))


if __name__ == "__main__":
    main()
