"""Benchmark: forward+backward throughput of the MoE layer against a dense FFN with the
same active parameters (k experts' worth: hidden k * h) and against Hugging Face
transformers' Mixtral sparse MoE block with the same weights and FLOPs per expert, all
measured in the same run on the same tokens.

The ratio reported is work per second per active parameter, (tokens/s * active params)
of the MoE over the same for the dense FFN; 1.0 means routing and dispatch cost nothing.
Timings are medians over interleaved repeats. The tokens require a gradient, as inside a
network, so every product's backward is two products (forward + backward = 3 forwards).

The run starts with the CPU (model, logical cores, ISA flags) and its fp32 peak measured on
the spot with the benchmark's threads (omoe_plugin.analysis.hardware, which also says how
FLOPs are counted); every configuration reports the GFLOP of one step of each module and the
rate each achieves (GFLOP/s) as a share of that peak.

The peer, transformers' MixtralSparseMoeBlock (a test extra: without it the run says so and
times the rest), runs in every experts implementation of its registry that runs here (eager: a
loop over the experts hit; batched_mm: every token's expert weights copied, skipped when the
copies would pass PEER_COPY_LIMIT; grouped_mm: torch's grouped matrix product); the others are
skipped with their error printed. It has hidden d, E experts, top-k and SwiGLU experts of
intermediate size round(2h / 3): three d x 2h/3 products per token do the work of our two
d x h products, so FLOPs and weights per expert are equal when 3 divides 2h, as at the default
h = 1536 (Mixtral's experts have no biases, ours do). moe_over_mixtral_<implementation> is the
peer's step time over ours: above 1, ours is faster.

With --profile, each configuration also prints where the MoE's time goes beside the dense
FFN's (torch.profiler, self CPU time per step): matrix products, and everything else
(routing, sorting, gathering, placing back, activations, bias sums).

The last line printed is one JSON object: the ratios, the CPU, the peak, the peers not run
and every row.

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

from omoe_plugin.analysis.hardware import (
    TRAIN_STEP,
    cpu_description,
    ffn_flops,
    measured_fp32_peak,
    moe_layer_flops,
)
from omoe_plugin.moe import MoEArgs, MoELayer

PEER_COPY_LIMIT = 2 ** 30  # bytes of expert weights batched_mm may copy in one forward


class DenseFFN(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


def peer_hidden(hidden: int) -> int:
    """Intermediate size of a SwiGLU expert with the FLOPs and weights of a two-matrix
    expert of hidden size `hidden`."""
    return round(2 * hidden / 3)


class MixtralPeer(nn.Module):
    """transformers' Mixtral sparse MoE block on tokens [N, d], weights drawn normal(0, 0.02)."""

    def __init__(self, dim: int, hidden: int, num_experts: int, top_k: int,
                 implementation: str) -> None:
        from transformers import MixtralConfig
        from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

        super().__init__()
        config = MixtralConfig(hidden_size=dim, intermediate_size=peer_hidden(hidden),
                               num_local_experts=num_experts, num_experts_per_tok=top_k,
                               router_jitter_noise=0.0, experts_implementation=implementation)
        self.block = MixtralSparseMoeBlock(config)
        for weight in self.block.parameters():
            nn.init.normal_(weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x[None])[0]


def peer_implementations() -> tuple[list[str], dict[str, str]]:
    """The experts implementations of the Mixtral block that run a small forward + backward
    here, and why each of the others does not."""
    try:
        from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS
    except ImportError as e:
        return [], {"mixtral": f"transformers is not installed ({e})"}
    working, skipped = [], {}
    for implementation in ("eager", *ALL_EXPERTS_FUNCTIONS):
        try:
            step_seconds(MixtralPeer(8, 12, 4, 2, implementation),
                         torch.randn(16, 8, requires_grad=True))
            working.append(implementation)
        except Exception as e:  # noqa: BLE001 - any failure skips the implementation
            skipped[f"mixtral_{implementation}"] = f"{type(e).__name__}: " + (
                str(e).splitlines() or [""])[0][:160]
    return working, skipped


def step_seconds(module: nn.Module, x: torch.Tensor) -> float:
    """Wall time of one forward + backward (router aux loss included for the MoE)."""
    module.zero_grad(set_to_none=True)
    x.grad = None
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
    """Self CPU time (ms) per forward + backward step: matrix products and the rest."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step_seconds(module, x)
    kinds = {"aten::mm": "products", "aten::addmm": "products"}
    times = {"products": 0.0, "other": 0.0}
    for event in prof.key_averages():
        times[kinds.get(event.key, "other")] += event.self_cpu_time_total / 1000 / steps
    return {kind: round(ms, 1) for kind, ms in times.items()}


def bench(num_experts: int, top_k: int, tokens: int, dim: int, hidden: int, repeats: int,
          peak: float, peers: list[str], profile: bool = False) -> dict:
    """One configuration: every module timed on the same tokens, interleaved."""
    torch.manual_seed(0)
    moe = MoELayer(MoEArgs(embed_dim=dim, ffn_dim=hidden, num_experts=num_experts, top_k=top_k))
    dense = DenseFFN(dim, top_k * hidden)
    modules = {"moe": moe, "dense": dense}
    flops = {"moe": moe_layer_flops(tokens, dim, hidden, num_experts, top_k),
             "dense": ffn_flops(tokens, dim, top_k * hidden)}
    skipped = {}
    for implementation in peers:
        name = f"mixtral_{implementation}"
        copies = 4 * tokens * top_k * 3 * dim * peer_hidden(hidden)
        if implementation == "batched_mm" and copies > PEER_COPY_LIMIT:
            skipped[name] = f"skipped: would copy {copies / 1e9:.1f} GB of expert weights"
            continue
        modules[name] = MixtralPeer(dim, hidden, num_experts, top_k, implementation)
        flops[name] = moe_layer_flops(tokens, dim, peer_hidden(hidden), num_experts, top_k, 3)
    x = torch.randn(tokens, dim, requires_grad=True)
    for _ in range(2):  # warm-up
        for module in modules.values():
            step_seconds(module, x)
    times = {name: [] for name in modules}
    for _ in range(repeats):  # interleaved, so drift in machine load hits all alike
        for name, module in modules.items():
            times[name].append(step_seconds(module, x))
    seconds = {name: statistics.median(t) for name, t in times.items()}
    moe_s, dense_s = seconds["moe"], seconds["dense"]
    moe_active = active_params(moe, top_k, num_experts)
    dense_active = active_params(dense)
    ratio = (tokens / moe_s * moe_active) / (tokens / dense_s * dense_active)
    breakdown = ({"moe_profile_ms": profile_ms(moe, x), "dense_profile_ms": profile_ms(dense, x)}
                 if profile else {})
    row = {
        "experts": num_experts,
        "top_k": top_k,
        "moe_ms": round(moe_s * 1e3, 2),
        "dense_ms": round(dense_s * 1e3, 2),
        "moe_tokens_per_s": round(tokens / moe_s),
        "dense_tokens_per_s": round(tokens / dense_s),
        "throughput_per_active_param_ratio": round(ratio, 3),
        **breakdown,
    }
    for name, sec in seconds.items():
        step = TRAIN_STEP * flops[name]
        if name not in ("moe", "dense"):
            row[f"{name}_ms"] = round(sec * 1e3, 2)
            row[f"moe_over_{name}"] = round(sec / moe_s, 3)
        row[f"{name}_gflop_per_step"] = round(step / 1e9, 3)
        row[f"{name}_gflop_s"] = round(step / sec / 1e9, 1)
        row[f"{name}_peak_share"] = round(step / sec / 1e9 / peak, 3)
    return {**row, **skipped}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--hidden", type=int, default=1536, help="FFN size of one expert")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--profile", action="store_true",
                        help="also print where the time goes (profiled separately)")
    args = parser.parse_args()
    threads = torch.get_num_threads()
    cpu, cpu_line = cpu_description()
    peak = measured_fp32_peak(threads)
    print(cpu_line)
    print(f"fp32 peak measured now: {peak:.1f} GFLOP/s ({threads} threads, large square product)")
    print(f"torch {torch.__version__}, {threads} threads, {args.tokens} tokens, "
          f"d={args.dim}, expert hidden={args.hidden}, median of {args.repeats}")
    peers, unusable = peer_implementations()
    for name, reason in unusable.items():
        print(f"{name}: not run: {reason}")
    results, rows = {}, {}
    for num_experts, top_k in itertools.product((4, 8, 16, 32), (1, 2)):
        row = bench(num_experts, top_k, args.tokens, args.dim, args.hidden, args.repeats,
                    peak, peers, args.profile)
        print(row)
        shares = ", ".join(f"{name[:-11]} {row[name]:.0%}" for name in row
                           if name.endswith("_peak_share"))
        versus = ", ".join(f"{name[9:]} {row[name]}" for name in row
                           if name.startswith("moe_over_")) or "none run (see above)"
        print(f"E = {num_experts}, k = {top_k}: {row['moe_gflop_per_step']} GFLOP per step; "
              f"share of peak: {shares}; ours / peer: {versus}")
        name = f"E{num_experts}_k{top_k}"
        results[name], rows[name] = row["throughput_per_active_param_ratio"], row
    results.update(target=0.9, cpu=cpu, threads=threads, fp32_peak_gflop_s=round(peak, 1),
                   peers_not_run=unusable, rows=rows)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
