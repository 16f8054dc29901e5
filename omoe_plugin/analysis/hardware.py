"""Where a benchmark ran and how close to the hardware it got: the CPU (model, logical cores,
the ISA flags that decide which matrix kernels run), its fp32 peak measured on the spot with a
large matrix product, and the FLOPs of the MoE layer, the dense FFN and the served encoder.

Counting convention: 2 FLOPs per multiply-add, matrix products only: linear layers, the
router, attention's scores (Q K^T) and context (A V), the classifier head. Elementwise work
(activations, softmax, LayerNorm, residuals, biases, routing's top-k, gathers and scatters)
and embedding look-ups are not counted. A backward pass computes two products per forward
product (the input's gradient and the weight's), so forward + backward is TRAIN_STEP = 3
times the forward, when the input itself needs a gradient (as inside a network).
"""

import os
import platform
import statistics
import time
from pathlib import Path
from typing import Optional

import torch

# fused multiply-add, AVX2 and AVX-512, their int8 dot products (VNNI), bf16 dot products, and
# Intel's AMX tiles: what oneDNN and MLAS pick their kernels by
ISA_FLAGS = ("fma", "avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile",
             "amx_bf16", "amx_int8")
TRAIN_STEP = 3  # forward + backward FLOPs over forward FLOPs


def cpu_description(cpuinfo: Optional[str] = None) -> tuple[dict, str]:
    """The CPU as a dict (model, logical_cores, flags: those of ISA_FLAGS it has, None when
    unknown) and as one line.

    cpuinfo: the text of /proc/cpuinfo; default: read it where it exists (Linux), else the
    model comes from the platform module and the flags are unknown."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""
    fields, processors = {}, 0
    for line in cpuinfo.splitlines():
        key, colon, value = line.partition(":")
        key = key.strip()
        if key == "processor":
            processors += 1
        elif colon:
            fields.setdefault(key, value.strip())  # the first processor's
    model = fields.get("model name") or platform.processor() or platform.machine() or "unknown"
    flags = None
    if "flags" in fields:
        present = set(fields["flags"].split())
        flags = [flag for flag in ISA_FLAGS if flag in present]
    cpu = {"model": model, "logical_cores": processors or os.cpu_count(), "flags": flags}
    named = "unknown" if flags is None else " ".join(flags) or "none of " + " ".join(ISA_FLAGS)
    return cpu, f"CPU: {model}, {cpu['logical_cores']} logical cores, ISA flags: {named}"


def measured_fp32_peak(threads: int, size: int = 2048, repeats: int = 5) -> float:
    """The fp32 matrix-product rate (GFLOP/s) this machine gives now on `threads` threads: a
    [size, size] @ [size, size] torch product, median of `repeats` after two warm-ups. The
    practical peak a benchmark's products can approach, load from other processes included."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b, out = torch.randn(size, size), torch.randn(size, size), torch.empty(size, size)
        times = []
        for i in range(2 + repeats):
            start = time.perf_counter()
            torch.mm(a, b, out=out)
            if i >= 2:
                times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    return 2 * size ** 3 / statistics.median(times) / 1e9


def ffn_flops(tokens: int, dim: int, hidden: int, matrices: int = 2) -> int:
    """Forward FLOPs of a feed-forward block on `tokens` tokens: `matrices` products of
    dim x hidden weights per token (2: fc1 and fc2; 3: SwiGLU's gate, up and down)."""
    return 2 * tokens * dim * hidden * matrices


def moe_layer_flops(tokens: int, dim: int, hidden: int, num_experts: int, top_k: int,
                    matrices: int = 2) -> int:
    """Forward FLOPs of an MoE layer: the router (dim x num_experts) on every token, then
    top_k experts' FFN (hidden, `matrices` products, see ffn_flops) per token."""
    return 2 * tokens * dim * num_experts + top_k * ffn_flops(tokens, dim, hidden, matrices)


def encoder_flops(cfg, batch: int, seq: int, num_classes: int, per_token: bool = False) -> int:
    """Forward FLOPs of the served encoder and its head on [batch, seq] tokens, none padding.

    cfg: the model's config (OMoERobertaConfig's encoder_* and moe_* fields). Every layer:
    the query, key, value and output projections, attention's Q K^T and A V over seq x seq,
    then the dense FFN or the MoE layer (router and top-k experts). The head: the pooler
    (dim x dim) and the output projection on the first token, or the output projection on
    every token (per_token: a tagging or answer-span head)."""
    from ..models.encoder import expert_ffn_dim, is_moe_layer  # imports fairseq

    dim, tokens = cfg.encoder_embed_dim, batch * seq
    layer = 4 * 2 * tokens * dim * dim + 2 * 2 * batch * seq * seq * dim
    total = 0
    for index in range(cfg.encoder_layers):
        if is_moe_layer(index, cfg.moe_freq):
            ffn = moe_layer_flops(tokens, dim, expert_ffn_dim(cfg), cfg.moe_experts,
                                  cfg.moe_top_k)
        else:
            ffn = ffn_flops(tokens, dim, cfg.encoder_ffn_embed_dim)
        total += layer + ffn
    head = 2 * tokens * dim * num_classes if per_token else 2 * batch * dim * (dim + num_classes)
    return total + head
