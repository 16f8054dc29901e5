"""RoutedInputCapture: the three summaries, micro-batch sums, and their normalisation."""

import pytest
import torch
import torch.nn.functional as F

from omoe_plugin.moe import MoEArgs, MoELayer
from omoe_plugin.optim.capture import RoutedInputCapture


def unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1)


def test_mean_summary_is_the_mean_unit_input_over_micro_batches():
    capture = RoutedInputCapture("mean")
    a, b = torch.randn(3, 5), torch.randn(2, 5)
    capture(0, 2, 1, fc1=a)
    capture(0, 2, 1, fc1=b)  # a second micro-batch of the same update
    X = capture.pop_summaries()["0.fc1"]
    assert X.shape == (2, 5, 1)
    torch.testing.assert_close(X[1, :, 0], unit(torch.cat([a, b])).mean(0))
    assert not X[0].any(), "expert 0 saw nothing"
    assert capture.pop_summaries() == {}, "pop_summaries() clears"


def test_tokens_summary_is_the_exact_second_moment():
    capture = RoutedInputCapture("tokens", width=8)
    x = torch.randn(6, 4)
    capture(2, 3, 0, fc2=x)
    X = capture.pop_summaries()["2.fc2"][0]
    expected = unit(x).T @ unit(x) / 6
    torch.testing.assert_close(X @ X.T, expected)
    assert torch.trace(X @ X.T).item() == pytest.approx(1.0)


def test_pca_summary_keeps_the_top_directions_of_the_second_moment():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 6, generator=g) * torch.tensor([5.0, 3.0, 0.5, 0.1, 0.1, 0.1])
    moment = lambda v: unit(v).T @ unit(v)
    evals, evecs = torch.linalg.eigh(moment(x) / 40)
    capture = RoutedInputCapture("pca", width=2)
    capture(0, 1, 0, fc1=x)
    X = capture.pop_summaries()["0.fc1"][0]
    assert X.shape == (6, 2)
    best = evecs[:, -2:] @ torch.diag(evals[-2:]) @ evecs[:, -2:].T
    torch.testing.assert_close(X @ X.T, best, atol=1e-5, rtol=1e-4)


def test_pca_summary_merges_micro_batches_exactly_within_its_rank():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(30, 2, generator=g) @ torch.randn(2, 6, generator=g)  # rank-2 inputs
    capture = RoutedInputCapture("pca", width=2)
    capture(0, 1, 0, fc1=x[:11])
    capture(0, 1, 0, fc1=x[11:])
    X = capture.pop_summaries()["0.fc1"][0]
    torch.testing.assert_close(X @ X.T, unit(x).T @ unit(x) / 30, atol=1e-5, rtol=1e-4)


def test_the_experts_report_routed_tokens_and_hidden_activations():
    torch.manual_seed(0)
    layer = MoELayer(MoEArgs(embed_dim=8, ffn_dim=12, num_experts=3, top_k=2, layer_index=5))
    capture = RoutedInputCapture("tokens", width=64)
    layer.experts.capture = capture
    mask = torch.tensor([[False, False, False, True]])
    layer(torch.randn(1, 4, 8), mask)
    sums, counts = capture.sums, capture.counts
    assert set(sums) == {"5.fc1", "5.fc2"}
    assert sum(counts["5.fc1"].values()) == 3 * 2  # 3 real tokens, top-2, padding excluded
    assert all(s.size(0) == 12 for s in sums["5.fc2"].values())


def test_unknown_summary_names_the_option():
    with pytest.raises(ValueError, match="--omoe-stat"):
        RoutedInputCapture("median")
