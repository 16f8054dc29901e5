"""Benchmark: forward+backward throughput of the MoE layer against a dense FFN with the
same active parameters (k experts' worth: hidden k * h), measured in the same run.

The ratio reported is work per second per active parameter, (tokens/s * active params)
of the MoE over the same for the dense FFN; 1.0 means routing and dispatch cost nothing.
Timings are medians over interleaved repeats. The last line printed is one JSON object.
With --profile, each configuration also prints where the MoE's time goes beside the dense
FFN's (torch.profiler, self CPU time per step): matrix products; stacking (the backward's
stacking of the experts' weight gradients into the stacked parameters' gradients, and the
forward's concatenation of the experts' outputs); everything else (routing, sorting,
gathering, placing back, activations).

    python scripts/bench_moe_layer.py [--tokens 4096] [--repeats 9] [--profile]
"""

import argparse
import itertools
import json
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from omoe_plugin.moe import MoEArgs, MoELayer


class DenseFFN(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


def step_seconds(module: nn.Module, x: torch.Tensor) -> float:
    """Wall time of one forward + backward (router aux loss included for the MoE)."""
    module.zero_grad(set_to_none=True)
    start = time.perf_counter()
    out = module(x)
    if isinstance(out, tuple):
        y, aux = out
        loss = y.square().mean() + 0.01 * aux.load_balancing
    else:
        loss = out.square().mean()
    loss.backward()
    return time.perf_counter() - start


def active_params(module: nn.Module, top_k: int = 1, num_experts: int = 1) -> int:
    """Parameters one token uses: the router plus k of E experts, or the whole dense FFN."""
    if isinstance(module, MoELayer):
        expert = sum(p.numel() for p in module.experts.parameters()) // num_experts
        return module.router.gate.weight.numel() + top_k * expert
    return sum(p.numel() for p in module.parameters())


def profile_ms(module: nn.Module, x: torch.Tensor, steps: int = 5) -> dict:
    """Self CPU time (ms) per forward + backward step: matrix products, stacking and
    concatenation, and the rest."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step_seconds(module, x)
    kinds = {"aten::mm": "products", "aten::addmm": "products", "aten::stack": "stacking",
             "aten::cat": "stacking"}
    times = {"products": 0.0, "stacking": 0.0, "other": 0.0}
    for event in prof.key_averages():
        times[kinds.get(event.key, "other")] += event.self_cpu_time_total / 1000 / steps
    return {kind: round(ms, 1) for kind, ms in times.items()}


def bench(num_experts: int, top_k: int, tokens: int, dim: int, hidden: int, repeats: int,
          profile: bool = False):
    torch.manual_seed(0)
    moe = MoELayer(MoEArgs(embed_dim=dim, ffn_dim=hidden, num_experts=num_experts, top_k=top_k))
    dense = DenseFFN(dim, top_k * hidden)
    x = torch.randn(tokens, dim)
    for _ in range(2):  # warm-up
        step_seconds(moe, x), step_seconds(dense, x)
    moe_t, dense_t = [], []
    for _ in range(repeats):  # interleaved, so drift in machine load hits both alike
        moe_t.append(step_seconds(moe, x))
        dense_t.append(step_seconds(dense, x))
    moe_s, dense_s = statistics.median(moe_t), statistics.median(dense_t)
    moe_active = active_params(moe, top_k, num_experts)
    dense_active = active_params(dense)
    ratio = (tokens / moe_s * moe_active) / (tokens / dense_s * dense_active)
    breakdown = ({"moe_profile_ms": profile_ms(moe, x), "dense_profile_ms": profile_ms(dense, x)}
                 if profile else {})
    return {
        "experts": num_experts,
        "top_k": top_k,
        "moe_ms": round(moe_s * 1e3, 2),
        "dense_ms": round(dense_s * 1e3, 2),
        "moe_tokens_per_s": round(tokens / moe_s),
        "dense_tokens_per_s": round(tokens / dense_s),
        "throughput_per_active_param_ratio": round(ratio, 3),
        **breakdown,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--hidden", type=int, default=1536, help="FFN size of one expert")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--profile", action="store_true",
                        help="also print where the time goes (profiled separately)")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.tokens} tokens, "
          f"d={args.dim}, expert hidden={args.hidden}, median of {args.repeats}")
    results = {}
    for num_experts, top_k in itertools.product((4, 8, 16, 32), (1, 2)):
        row = bench(num_experts, top_k, args.tokens, args.dim, args.hidden, args.repeats,
                    args.profile)
        print(row)
        results[f"E{num_experts}_k{top_k}"] = row["throughput_per_active_param_ratio"]
    results["target"] = 0.9
    print(json.dumps(results))


if __name__ == "__main__":
    main()
