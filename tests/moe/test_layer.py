"""MoELayer and StackedExperts: dense equivalence, sparse combination, gradients, padding."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from omoe_plugin.moe import (
    EXPERT_AXIS_ATTR,
    EXPERT_INPUT_ATTR,
    EXPERT_LAYER_ATTR,
    MoEArgs,
    MoELayer,
)

# (batch, seq, padded positions at the end of every row but the first, experts, top-k)
SHAPES = ((1, 1, 0, 4, 1), (1, 9, 0, 4, 2), (3, 7, 3, 4, 1), (4, 16, 5, 8, 2), (2, 5, 4, 3, 3))


def make_layer(num_experts: int, top_k: int, dim: int = 16, hidden: int = 24) -> MoELayer:
    torch.manual_seed(0)
    layer = MoELayer(MoEArgs(embed_dim=dim, ffn_dim=hidden, num_experts=num_experts, top_k=top_k))
    return layer.eval()


def padded_batch(batch: int, seq: int, pad: int, dim: int = 16):
    x = torch.randn(batch, seq, dim)
    mask = torch.zeros(batch, seq, dtype=torch.bool)
    mask[1:, seq - pad :] = True
    return x, mask


def reference(layer: MoELayer, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Every expert on every token, combined with the router's top-k weights."""
    tokens = x.reshape(-1, x.size(-1))
    routing = layer.router(tokens, mask.reshape(-1))
    ex = layer.experts
    h = F.gelu(torch.einsum("nd,ehd->neh", tokens, ex.fc1_weight) + ex.fc1_bias)
    all_out = torch.einsum("neh,edh->ned", h, ex.fc2_weight) + ex.fc2_bias  # [N, E, d]
    combine = torch.zeros(tokens.size(0), ex.num_experts + 1)
    combine.scatter_(1, routing.experts, routing.weights)
    return torch.einsum("ne,ned->nd", combine[:, :-1], all_out).reshape(x.shape)


@pytest.mark.parametrize("batch,seq,pad,num_experts,top_k", SHAPES)
def test_sparse_dispatch_equals_dense_combination(batch, seq, pad, num_experts, top_k):
    layer = make_layer(num_experts, top_k)
    x, mask = padded_batch(batch, seq, pad)
    y, aux = layer(x, mask)
    assert y.shape == x.shape
    torch.testing.assert_close(y, reference(layer, x, mask), atol=1e-5, rtol=1e-5)
    assert (y[mask] == 0).all(), "padding tokens must get no expert output"
    assert aux.counts.sum().item() == (~mask).sum().item() * top_k


@pytest.mark.parametrize("batch,seq,pad", ((1, 1, 0), (2, 8, 3), (4, 32, 0)))
def test_one_expert_initialised_from_dense_ffn_is_exactly_dense(batch, seq, pad):
    torch.manual_seed(1)
    fc1, fc2 = nn.Linear(16, 24), nn.Linear(24, 16)
    layer = make_layer(num_experts=1, top_k=1)
    layer.experts.copy_dense_(fc1, fc2)
    x, mask = padded_batch(batch, seq, pad)
    y, _ = layer(x, mask)
    dense = fc2(F.gelu(fc1(x)))
    assert torch.equal(y[~mask], dense[~mask])


def test_copy_upcycled_experts_all_equal_the_dense_ffn():
    fc1, fc2 = nn.Linear(16, 24), nn.Linear(24, 16)
    layer = make_layer(num_experts=4, top_k=2)
    layer.experts.copy_dense_(fc1, fc2)
    x, mask = padded_batch(2, 6, 0)
    y, _ = layer(x, mask)
    torch.testing.assert_close(y, fc2(F.gelu(fc1(x))), atol=1e-6, rtol=1e-5)


def test_only_chosen_experts_contribute():
    layer = make_layer(num_experts=4, top_k=1)
    x, mask = padded_batch(1, 3, 0)  # 3 tokens, top-1 of 4: at least one expert idle
    y, _ = layer(x, mask)
    chosen = set(layer.router(x.reshape(-1, 16)).experts.flatten().tolist())
    unused = sorted(set(range(4)) - chosen)
    with torch.no_grad():
        for e in unused:
            layer.experts.fc1_weight[e].normal_()
            layer.experts.fc2_bias[e].fill_(100.0)
    assert torch.equal(layer(x, mask)[0], y)


def test_router_and_every_expert_receive_gradients():
    layer = make_layer(num_experts=4, top_k=2).train()
    x, mask = padded_batch(4, 32, 5)
    y, aux = layer(x, mask)
    assert (aux.counts > 0).all(), "every expert should get tokens at this size"
    (y.square().mean() + aux.load_balancing).backward()
    assert layer.router.gate.weight.grad.abs().sum() > 0
    for p in layer.experts.parameters():
        per_expert = p.grad.reshape(4, -1).abs().sum(dim=1)
        assert (per_expert > 0).all()


@pytest.mark.parametrize("batch,seq,pad,num_experts,top_k", SHAPES)
def test_gradients_equal_the_dense_combination(batch, seq, pad, num_experts, top_k):
    layer = make_layer(num_experts, top_k)
    x, mask = padded_batch(batch, seq, pad)
    x.requires_grad_()
    grads = []
    for forward in (lambda: layer(x, mask)[0], lambda: reference(layer, x, mask)):
        layer.zero_grad(set_to_none=True)
        x.grad = None
        forward().square().sum().backward()
        grads.append([x.grad, *(p.grad for p in layer.experts.parameters())])
    for ours, dense in zip(*grads):
        torch.testing.assert_close(ours, dense, atol=1e-5, rtol=1e-4)


def test_expert_weights_are_tagged_for_the_optimizer():
    layer = MoELayer(MoEArgs(embed_dim=8, ffn_dim=12, num_experts=2, layer_index=3))
    ex = layer.experts
    for p, role in ((ex.fc1_weight, "fc1"), (ex.fc2_weight, "fc2")):
        assert getattr(p, EXPERT_AXIS_ATTR) == 0
        assert getattr(p, EXPERT_INPUT_ATTR) == role
        assert getattr(p, EXPERT_LAYER_ATTR) == 3
    for p in (ex.fc1_bias, ex.fc2_bias, layer.router.gate.weight):
        assert not hasattr(p, EXPERT_AXIS_ATTR)
