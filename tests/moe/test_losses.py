"""Load-balancing and z-loss against values computed by hand on a fixed routing."""

import math

import pytest
import torch

from omoe_plugin.moe import expert_counts, load_balancing_loss, router_z_loss


def test_load_balancing_matches_hand_computation():
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.5, 0.5]])
    experts = torch.tensor([[0], [0], [1], [0], [2]])  # last token is padding (id E = 2)
    # over the 4 routed tokens: P = (0.65, 0.35), f = (3/4, 1/4); E * sum P f = 2 * 0.575
    assert load_balancing_loss(probs, experts, 2).item() == pytest.approx(1.15)
    assert expert_counts(experts, 2).tolist() == [3.0, 1.0]


def test_load_balancing_with_top2_counts_every_assignment():
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]])
    experts = torch.tensor([[0, 1], [1, 2]])
    # P = (0.3, 0.45, 0.25), f = (1/4, 2/4, 1/4): 3 * (0.075 + 0.225 + 0.0625)
    assert load_balancing_loss(probs, experts, 3).item() == pytest.approx(3 * 0.3625)


def test_load_balancing_bounds():
    uniform = torch.full((8, 4), 0.25)
    balanced = torch.arange(8).remainder(4).unsqueeze(1)
    assert load_balancing_loss(uniform, balanced, 4).item() == pytest.approx(1.0)
    collapsed = torch.zeros(8, 4)
    collapsed[:, 2] = 1.0
    assert load_balancing_loss(collapsed, torch.full((8, 1), 2), 4).item() == pytest.approx(4.0)


def test_z_loss_matches_hand_computation_and_skips_padding():
    logits = torch.tensor([[0.0, 0.0], [1.0, 2.0], [100.0, 100.0]])
    experts = torch.tensor([[0], [1], [2]])  # third token is padding
    expected = (math.log(2) ** 2 + (2 + math.log1p(math.exp(-1))) ** 2) / 2
    assert router_z_loss(logits, experts).item() == pytest.approx(expected)


def test_all_padding_gives_zero_not_nan():
    experts = torch.full((3, 1), 2)
    assert load_balancing_loss(torch.full((3, 2), 0.5), experts, 2).item() == 0.0
    assert router_z_loss(torch.zeros(3, 2), experts).item() == 0.0


def test_orthogonality_loss_is_the_mean_squared_cosine_of_expert_pairs():
    from omoe_plugin.moe import expert_orthogonality_loss

    orthogonal = torch.eye(3).unsqueeze(1).expand(3, 5, 3) * 2.0  # [E, n, d]: axes
    assert expert_orthogonality_loss(orthogonal) == 0
    parallel = torch.ones(3, 5, 4)
    assert expert_orthogonality_loss(parallel) == pytest.approx(1.0)
    y = torch.tensor([[[1.0, 0.0]], [[1.0, 1.0]]])  # one token, cos = 1/sqrt(2)
    assert expert_orthogonality_loss(y) == pytest.approx(0.5)
    y = torch.randn(4, 7, 6, requires_grad=True)
    expert_orthogonality_loss(y).backward()
    assert torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0
