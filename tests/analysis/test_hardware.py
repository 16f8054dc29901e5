"""CPU description, measured peak and FLOP counts: fixtures, closed forms, and torch's own
FLOP counter on a real model."""

import math
from types import SimpleNamespace

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from omoe_plugin.analysis.hardware import (
    ISA_FLAGS,
    TRAIN_STEP,
    cpu_description,
    encoder_flops,
    ffn_flops,
    measured_fp32_peak,
    moe_layer_flops,
)
from omoe_plugin.export.classifier import ExportedClassifier
from omoe_plugin.moe import MoEArgs, MoELayer
from tests.conftest import tiny_model

SAPPHIRE_RAPIDS = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx fma avx2 avx512f avx512_bf16 avx512_vnni amx_bf16 amx_tile amx_int8

processor\t: 1
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx fma avx2 avx512f avx512_bf16 avx512_vnni amx_bf16 amx_tile amx_int8
"""
EPYC = """processor\t: 0
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse2 avx fma avx2 avx512f avx512_vnni
"""


def test_cpu_description_reads_the_model_the_cores_and_the_amx_flags():
    cpu, line = cpu_description(SAPPHIRE_RAPIDS)
    assert cpu == {"model": "Intel(R) Xeon(R) Platinum 8480+", "logical_cores": 2,
                   "flags": ["fma", "avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile",
                             "amx_bf16", "amx_int8"]}
    assert line == ("CPU: Intel(R) Xeon(R) Platinum 8480+, 2 logical cores, ISA flags: fma avx2 "
                    "avx512f avx512_vnni avx512_bf16 amx_tile amx_bf16 amx_int8")


def test_cpu_description_without_amx_and_without_flags():
    cpu, line = cpu_description(EPYC)
    assert cpu["flags"] == ["fma", "avx2", "avx512f", "avx512_vnni"]
    assert (cpu["model"], cpu["logical_cores"]) == ("AMD EPYC 7B13", 1)
    assert "amx" not in line
    cpu, line = cpu_description("processor : 0\nmodel name : a CPU\nflags : fpu sse2\n")
    assert cpu["flags"] == [] and line.endswith("ISA flags: none of " + " ".join(ISA_FLAGS))
    cpu, line = cpu_description("")  # no /proc/cpuinfo: the platform's name, flags unknown
    assert cpu["flags"] is None and line.endswith("ISA flags: unknown")
    assert cpu["model"] and cpu["logical_cores"] >= 1


def test_measured_peak_is_positive_and_finite_and_keeps_the_thread_count():
    threads = torch.get_num_threads()
    peak = measured_fp32_peak(threads=1, size=128, repeats=3)
    assert 0 < peak and math.isfinite(peak)
    assert torch.get_num_threads() == threads


def test_layer_flops_by_hand():
    assert ffn_flops(10, 4, 8) == 2 * 10 * (4 * 8 + 8 * 4)  # fc1 and fc2
    assert ffn_flops(10, 4, 8, matrices=3) == 2 * 10 * 3 * 4 * 8  # gate, up, down
    # router 2 * 10 * 4 * 3, plus 2 experts' FFN per token
    assert moe_layer_flops(10, 4, 8, num_experts=3, top_k=2) == 240 + 2 * 1280
    # SwiGLU experts of 2h/3 do the work of two-matrix experts of h
    assert moe_layer_flops(4096, 384, 1024, 16, 1, matrices=3) == moe_layer_flops(
        4096, 384, 1536, 16, 1)
    assert TRAIN_STEP == 3


def test_encoder_flops_by_hand():
    cfg = SimpleNamespace(encoder_layers=2, encoder_embed_dim=4, encoder_ffn_embed_dim=8,
                          moe_freq=2, moe_experts=3, moe_top_k=1, moe_expert_ffn_dim=0)
    # batch 2 x seq 5 = 10 tokens; every layer: projections 4 * 2 * 10 * 4 * 4 = 1280 and
    # attention 2 products * 2 * 2 * 5 * 5 * 4 = 800; layer 0's dense FFN 2 * 2 * 10 * 4 * 8 =
    # 1280, layer 1's MoE: router 2 * 10 * 4 * 3 = 240 and one expert 1280
    layers = (1280 + 800 + 1280) + (1280 + 800 + 240 + 1280)
    assert encoder_flops(cfg, 2, 5, num_classes=2) == layers + 2 * 2 * 4 * (4 + 2)  # pooled
    assert encoder_flops(cfg, 2, 5, 2, per_token=True) == layers + 2 * 10 * 4 * 2


@pytest.mark.parametrize("moe_freq", [0, 1, 2])
def test_encoder_flops_match_torch_flop_counter(task, moe_freq):
    model = tiny_model(task, moe_freq=moe_freq)
    batch, seq = 3, 7
    tokens = torch.randint(4, len(task.source_dictionary), (batch, seq))
    # attention through its math kernel, whose products the counter sees (not the fused one's)
    with FlopCounterMode(display=False) as counter, torch.inference_mode(), sdpa_kernel(
            SDPBackend.MATH):
        ExportedClassifier(model)(tokens)
    assert counter.get_total_flops() == encoder_flops(model.cfg, batch, seq, num_classes=2)


def test_layer_training_step_is_three_forwards_by_torch_flop_counter():
    layer = MoELayer(MoEArgs(embed_dim=16, ffn_dim=24, num_experts=4, top_k=2))
    x = torch.randn(50, 16, requires_grad=True)  # as inside a network: its gradient is needed
    with FlopCounterMode(display=False) as counter:
        y, aux = layer(x)
        (y.square().mean() + 0.01 * aux.load_balancing).backward()
    assert counter.get_total_flops() == TRAIN_STEP * moe_layer_flops(50, 16, 24, 4, 2)

