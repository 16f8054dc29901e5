"""Projector maths in float64 against the closed forms of OWM (the README, *The algorithm as
implemented*)."""

import pytest
import torch

from omoe_plugin.optim.projector import (
    compress,
    covariance_projector,
    expert_factors,
    project,
    projector,
    projector_factor,
    projector_update,
)

DIMS = ((6, 3, 1), (10, 7, 3), (12, 20, 4))  # (in, t inputs, b per recursion step)


@pytest.fixture(autouse=True)
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def inputs(in_dim: int, t: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(in_dim, t, generator=torch.Generator().manual_seed(seed)) / in_dim**0.5


@pytest.mark.parametrize("in_dim,t,b", DIMS)
@pytest.mark.parametrize("alpha", (1e-3, 0.5))
def test_rank_b_recursion_equals_both_closed_forms(in_dim, t, b, alpha):
    A = inputs(in_dim, t)
    P = torch.eye(in_dim)
    for start in range(0, t, b):
        P = projector_update(P, A[:, start : start + b], alpha)
    torch.testing.assert_close(P, projector(A, alpha), atol=1e-10, rtol=0)
    torch.testing.assert_close(P, covariance_projector(A @ A.T, alpha), atol=1e-10, rtol=0)


@pytest.mark.parametrize("in_dim,t,b", DIMS)
def test_factor_reproduces_the_projector(in_dim, t, b):
    A = inputs(in_dim, t)
    Q = projector_factor(A, 0.1)
    torch.testing.assert_close(torch.eye(in_dim) - Q @ Q.T, projector(A, 0.1), atol=1e-12, rtol=0)


def test_compress_is_exact_when_rank_suffices_and_optimal_otherwise():
    A = inputs(9, 5)
    padded = compress(A, 7)
    assert padded.shape == (9, 7)
    torch.testing.assert_close(padded @ padded.T, A @ A.T)
    B = inputs(9, 8, seed=1)
    evals, evecs = torch.linalg.eigh(B @ B.T)
    best = evecs[:, -3:] @ torch.diag(evals[-3:]) @ evecs[:, -3:].T
    small = compress(B, 3)
    torch.testing.assert_close(small @ small.T, best, atol=1e-12, rtol=0)


def expert_stats(E: int = 4, in_dim: int = 12, r: int = 3) -> torch.Tensor:
    return torch.stack([inputs(in_dim, r, seed=10 + e) for e in range(E)])


def test_joint_factors_give_the_other_experts_covariance_projector():
    stats, alpha = expert_stats(), 0.05
    Q, ok = expert_factors(stats, alpha, "joint")
    assert ok.all()
    C = [s @ s.T for s in stats]
    for e in range(4):
        others = sum(C[j] for j in range(4) if j != e)
        expected = covariance_projector(others, alpha)
        torch.testing.assert_close(torch.eye(12) - Q[e] @ Q[e].T, expected, atol=1e-10, rtol=0)


def test_average_projection_is_the_closed_form_average():
    stats, alpha = expert_stats(), 0.05
    P = [projector(s, alpha) for s in stats]
    S = sum(P)
    delta = torch.randn(4, 5, 12)
    projected = project(delta, expert_factors(stats, alpha, "average")[0], "average")
    for e in range(4):
        expected = delta[e] @ ((S - P[e]) / 3)
        torch.testing.assert_close(projected[e], expected, atol=1e-12, rtol=0)


def test_joint_projection_cancels_the_update_on_other_experts_inputs():
    stats = expert_stats()
    delta = torch.randn(4, 5, 12)
    projected = project(delta, expert_factors(stats, 1e-7, "joint")[0], "joint")
    for e in range(4):
        others = torch.cat([stats[j] for j in range(4) if j != e], dim=1)  # [in, 9]
        ratio = (projected[e] @ others).norm() / (delta[e] @ others).norm()
        assert ratio < 1e-3
        own_only = stats[e] - others @ torch.linalg.lstsq(others, stats[e]).solution
        assert (projected[e] @ own_only).norm() > 0.5 * (delta[e] @ own_only).norm()


def test_single_expert_and_empty_statistics_project_nothing():
    delta = torch.randn(1, 3, 6)
    for mode in ("joint", "average"):
        factors, _ = expert_factors(torch.randn(1, 6, 2), 0.1, mode)
        assert torch.equal(project(delta, factors, mode), delta)
    zero = torch.zeros(3, 6, 2)
    delta = torch.randn(3, 4, 6)
    factors, _ = expert_factors(zero, 0.1, "joint")
    torch.testing.assert_close(project(delta, factors, "joint"), delta)
