"""grouped_linear: the experts' products against a loop of F.linear, bit for bit, and the
gradient memory it keeps across steps."""

import pytest
import torch
import torch.nn.functional as F

from omoe_plugin.moe import MoEArgs, MoELayer, experts
from omoe_plugin.moe.experts import grouped_linear

SIZES = [7, 0, 13, 1, 9]  # an expert without tokens among them


def tensors(seed: int = 0, o: int = 24, i: int = 16):
    torch.manual_seed(seed)
    E, n = len(SIZES), sum(SIZES)
    return (torch.randn(n, i, requires_grad=True), torch.randn(E, o, i, requires_grad=True),
            torch.randn(E, o, requires_grad=True))


def loop_of_linear(x, weight, bias):
    """The plain reference: each block through F.linear with its expert's slices."""
    weights, biases = weight.unbind(0), bias.unbind(0)
    return torch.cat([F.linear(x_e, weights[e], biases[e])
                      for e, x_e in enumerate(x.split(SIZES))])


def twins(requires=(True, True, True)):
    ours = [t.requires_grad_(r) for t, r in zip(tensors(), requires)]
    theirs = [t.detach().clone().requires_grad_(r) for t, r in zip(ours, requires)]
    return ours, theirs


@pytest.mark.parametrize("requires", [(True, True, True), (False, True, True),
                                      (True, False, False), (False, True, False)])
def test_equals_a_loop_of_linear_bit_for_bit(requires):
    ours, theirs = twins(requires)
    grad = torch.randn(sum(SIZES), 24)
    y, y_ref = grouped_linear(ours[0], SIZES, *ours[1:]), loop_of_linear(*theirs)
    y.backward(grad)
    y_ref.backward(grad)
    assert torch.equal(y, y_ref)
    for t, t_ref in zip(ours, theirs):
        assert (t.grad is None) == (t_ref.grad is None)
        if t.grad is not None:
            assert torch.equal(t.grad, t_ref.grad)
    assert (ours[1].grad is None) or (ours[1].grad[1] == 0).all(), "no tokens: zero gradient"


def test_the_layer_without_gradient_gives_the_same_output_bit_for_bit():
    torch.manual_seed(0)
    layer = MoELayer(MoEArgs(embed_dim=16, ffn_dim=24, num_experts=4, top_k=2)).eval()
    x = torch.randn(3, 11, 16)
    trained, _ = layer(x)  # the parameters want a gradient: grouped_linear
    with torch.no_grad():  # inference and export: each expert's FFN on its block
        served, _ = layer(x)
    assert trained.requires_grad and not served.requires_grad
    assert torch.equal(trained, served)


def test_the_gradient_memory_is_kept_across_steps_and_each_step_is_right():
    (x, weight, bias), (x_ref, weight_ref, bias_ref) = twins()
    for step in range(3):  # as an optimizer's zero_grad(set_to_none=True) leaves it
        weight.grad, weight_ref.grad = None, None
        grad = torch.randn(sum(SIZES), 24)
        grouped_linear(x, SIZES, weight, bias).backward(grad)
        loop_of_linear(x_ref, weight_ref, bias_ref).backward(grad)
        assert torch.equal(weight.grad, weight_ref.grad), step
        kept = experts._GRADIENT_MEMORY[id(weight)]
        assert weight.grad is not kept and weight.grad.data_ptr() == kept.data_ptr(), (
            "a new gradient tensor on the kept memory at every step, taken without a copy")


def test_accumulating_adds_and_does_not_overwrite():
    (x, weight, bias), (x_ref, weight_ref, bias_ref) = twins()
    grads = torch.randn(2, sum(SIZES), 24)
    for grad in grads:  # no zero_grad between: gradient accumulation
        grouped_linear(x, SIZES, weight, bias).backward(grad)
        loop_of_linear(x_ref, weight_ref, bias_ref).backward(grad)
    torch.testing.assert_close(weight.grad, weight_ref.grad, rtol=0, atol=1e-5)
    torch.testing.assert_close(bias.grad, bias_ref.grad, rtol=0, atol=1e-5)


def test_the_memory_goes_with_its_weight():
    x, weight, bias = tensors()
    grouped_linear(x, SIZES, weight, bias).sum().backward()
    key = id(weight)
    assert key in experts._GRADIENT_MEMORY
    del weight, bias, x
    assert key not in experts._GRADIENT_MEMORY


def test_a_resized_weight_gets_new_memory():
    x, weight, bias = tensors()
    grouped_linear(x, SIZES, weight, bias).sum().backward()
    weight.grad = None
    weight.data = weight.data.double()  # as model.double() does, in place
    grouped_linear(x.double(), SIZES, weight, bias.double()).sum().backward()
    assert weight.grad.dtype == torch.float64
