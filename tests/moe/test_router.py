"""TopKRouter: renormalised top-k weights, fp32 softmax, padding routed nowhere, bad options."""

import pytest
import torch

from omoe_plugin.moe import TopKRouter

SHAPES = ((1, 1, 1), (7, 4, 1), (33, 4, 2), (64, 8, 2), (16, 3, 3))  # (tokens, E, k)


@pytest.mark.parametrize("tokens,num_experts,top_k", SHAPES)
def test_topk_weights_sum_to_one_and_follow_probs(tokens, num_experts, top_k):
    torch.manual_seed(0)
    router = TopKRouter(16, num_experts, top_k)
    routing = router(torch.randn(tokens, 16))
    assert routing.probs.dtype == torch.float32
    assert torch.allclose(routing.weights.sum(-1), torch.ones(tokens))
    chosen = routing.probs.gather(1, routing.experts)
    # the chosen experts are the k most probable ones, weighted in proportion to probability
    assert torch.equal(routing.experts, routing.probs.topk(top_k, dim=-1).indices)
    assert torch.allclose(routing.weights, chosen / chosen.sum(-1, keepdim=True))


def test_softmax_is_fp32_for_bf16_activations():
    router = TopKRouter(8, 4, 2).to(torch.bfloat16)
    routing = router(torch.randn(5, 8, dtype=torch.bfloat16))
    assert routing.probs.dtype == torch.float32 and routing.logits.dtype == torch.float32


def test_padding_tokens_are_routed_nowhere():
    router = TopKRouter(8, 4, 2)
    mask = torch.tensor([False, True, False, True])
    routing = router(torch.randn(4, 8), mask)
    assert (routing.experts[mask] == 4).all()
    assert (routing.experts[~mask] < 4).all()


@pytest.mark.parametrize(
    "num_experts,top_k,option", ((0, 1, "--moe-experts"), (2, 3, "--moe-top-k"), (4, 0, "--moe-top-k"))
)
def test_invalid_options_name_the_option(num_experts, top_k, option):
    with pytest.raises(ValueError, match=option):
        TopKRouter(8, num_experts, top_k)
