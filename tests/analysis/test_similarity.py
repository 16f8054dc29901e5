"""Linear CKA and expert similarity: closed-form properties."""

import torch

from omoe_plugin.analysis.similarity import (
    displaced,
    displacement_similarity,
    displacements,
    expert_outputs,
    layer_similarity,
    linear_cka,
    pair_mean,
    pairwise_similarity,
    pointed_apart,
)
from omoe_plugin.moe import MoEArgs, MoELayer


def test_cka_is_one_for_the_same_representation_up_to_rotation_and_scale():
    X = torch.randn(200, 8)
    Q, _ = torch.linalg.qr(torch.randn(8, 8))
    assert abs(float(linear_cka(X, 3.0 * X @ Q)) - 1.0) < 1e-6


def test_cka_is_near_zero_for_independent_representations():
    g = torch.Generator().manual_seed(0)
    assert float(linear_cka(torch.randn(4000, 4, generator=g), torch.randn(4000, 4, generator=g))) < 0.01


def test_cka_matches_the_hsic_formula():
    X, Y = torch.randn(50, 5), torch.randn(50, 3)
    H = torch.eye(50) - 1.0 / 50
    K, L = X @ X.T, Y @ Y.T
    hsic = lambda a, b: torch.trace(a @ H @ b @ H)
    expected = hsic(K, L) / (hsic(K, K) * hsic(L, L)).sqrt()
    assert abs(float(linear_cka(X, Y)) - float(expected)) < 1e-5


def test_copied_experts_are_identical_and_random_ones_are_not():
    torch.manual_seed(0)
    layer = MoELayer(MoEArgs(embed_dim=16, ffn_dim=32, num_experts=3))
    x = torch.randn(2, 50, 16)
    mask = torch.zeros(2, 50, dtype=torch.bool)
    cka, cos = layer_similarity(layer.experts, x, mask)
    assert cka < 0.9 and cos < 0.5
    layer.experts.copy_dense_(torch.nn.Linear(16, 32), torch.nn.Linear(32, 16))
    cka, cos = layer_similarity(layer.experts, x, mask)
    assert abs(cka - 1.0) < 1e-5 and abs(cos - 1.0) < 1e-5


def test_pairwise_similarity_averages_over_pairs():
    a = torch.randn(30, 4)
    outputs = torch.stack([a, a, -a])
    cka, cos = pairwise_similarity(outputs)
    assert abs(cka - 1.0) < 1e-5  # CKA ignores sign
    assert abs(cos - (1 - 1 - 1) / 3) < 1e-5


def test_similarity_of_fp16_experts_is_computed_in_fp32():
    """fp16 training validates fp16 tokens against fp16 expert weights."""
    torch.manual_seed(0)
    layer = MoELayer(MoEArgs(embed_dim=16, ffn_dim=24, num_experts=3))
    x = torch.randn(50, 16)
    expected = layer_similarity(layer.experts, x)
    got = layer_similarity(layer.half().experts, x.half())
    assert abs(got[0] - expected[0]) < 1e-2 and abs(got[1] - expected[1]) < 1e-2


def test_displacement_similarity_of_copies_moved_alike_apart_and_not_at_all():
    start = torch.randn(1, 6).expand(4, 6)
    moved = torch.tensor([[1.0, 0, 0, 0, 0, 0], [2.0, 0, 0, 0, 0, 0],
                          [0, 1.0, 0, 0, 0, 0], [0.0] * 6])
    sims = displacement_similarity((start + moved) - start)
    assert sims[0, 1] == 1.0 and sims[0, 2] == 0.0 and sims[3, 0] == 0.0
    assert torch.equal(sims.diagonal(), torch.ones(4))
    assert abs(pair_mean(sims) - 1 / 6) < 1e-6


def test_displaced_inverts_displacements_and_feeds_expert_outputs():
    torch.manual_seed(0)
    layer = MoELayer(MoEArgs(embed_dim=8, ffn_dim=12, num_experts=3))
    experts = layer.experts
    start = (torch.randn_like(experts.fc1_weight), torch.randn_like(experts.fc2_weight))
    fc1, fc2 = displaced(start, displacements(experts, start))
    assert torch.allclose(fc1, experts.fc1_weight, atol=1e-6)
    assert torch.allclose(fc2, experts.fc2_weight, atol=1e-6)
    x = torch.randn(20, 8)
    assert torch.allclose(expert_outputs(experts, x, (fc1, fc2)), expert_outputs(experts, x),
                          atol=1e-5)
    assert not torch.allclose(expert_outputs(experts, x, start), expert_outputs(experts, x))


def test_pointed_apart_keeps_lengths_and_reaches_the_least_mean_cosine():
    E = 4
    shared = torch.zeros(E, 50, dtype=torch.float64)
    shared[:, 0] = 5.0
    own = torch.zeros(E, 50, dtype=torch.float64)
    own[:, 1:E + 1] = torch.eye(E)  # centred, these have equal lengths
    moved = shared + own
    apart = pointed_apart(moved)
    assert torch.allclose(apart.norm(dim=1), moved.norm(dim=1))
    assert pair_mean(displacement_similarity(moved)) > 0.9
    # the mean pairwise cosine of E vectors is >= -1/(E-1), reached when their units sum to 0
    assert abs(pair_mean(displacement_similarity(apart)) + 1 / (E - 1)) < 1e-6
    noisy = torch.randn(E, 5000, dtype=torch.float64) * torch.arange(1.0, E + 1).view(-1, 1) + 1
    assert torch.allclose(pointed_apart(noisy).norm(dim=1), noisy.norm(dim=1))
    noisy = pointed_apart(noisy / noisy.norm(dim=1, keepdim=True))
    assert abs(pair_mean(displacement_similarity(noisy)) + 1 / (E - 1)) < 0.05
    assert torch.equal(pointed_apart(moved[:1].expand(E, -1)), torch.zeros(E, 50,
                                                                           dtype=torch.float64))
