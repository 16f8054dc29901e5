"""The OMoE optimizer: AdamW equivalence, the orthogonal update in both modes, state, errors."""

import io

import pytest
import torch

from omoe_plugin.moe import MoEArgs, MoELayer
from omoe_plugin.optim.capture import RoutedInputCapture
from omoe_plugin.optim.omoe import OMoE
from omoe_plugin.optim.projector import covariance_projector, project

ADAMW = dict(lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)
HYPER = dict(ADAMW, space="inputs")  # the input-space reading (OWM), which most tests check


def layer64(num_experts: int = 4, seed: int = 0) -> MoELayer:
    torch.manual_seed(seed)
    return MoELayer(MoEArgs(embed_dim=16, ffn_dim=24, num_experts=num_experts)).double()


def batch(seed: int, tokens: int = 12) -> torch.Tensor:
    return torch.randn(tokens, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def backward(layer: MoELayer, x: torch.Tensor, capture=None) -> None:
    layer.zero_grad(set_to_none=True)
    layer.experts.capture = capture
    y, aux = layer(x)
    layer.experts.capture = None
    (y.square().mean() + 0.01 * aux.load_balancing).backward()


def accumulate_step(opt: OMoE, layer: MoELayer, x: torch.Tensor, stat: str = "tokens") -> None:
    """One accumulating update, its routed inputs handed to the optimizer as the task does."""
    assert opt.next_phase.accumulating
    s = opt.settings
    capture = RoutedInputCapture(stat, width=s.max_rank, space=s.space) if opt.stats else None
    backward(layer, x, capture)
    if capture is not None:
        opt.routed_inputs = lambda statistics: capture.pop_summaries(statistics=statistics)
    opt.step()


def orthogonal_step(opt: OMoE, layer: MoELayer, x: torch.Tensor) -> None:
    """One orthogonal update with the projectors as they are (the step count placed on a
    cycle's second orthogonal update, so none are formed): for tests that fold statistics
    and form projectors by hand."""
    opt.counters["steps"] = opt.settings.accumulate_steps + 1
    backward(layer, x)
    opt.step()


def nothing_routed(statistics: dict) -> dict:
    """routed_inputs for a statistics reading's accumulating step that folds in nothing."""
    return {}


def test_accumulating_phases_match_adamw_step_for_step():
    """Bit for bit torch's fused AdamW, the kernel OMoE steps with (and within rounding of
    torch's default loop, which the second reference checks)."""
    a, b, c = layer64(), layer64(), layer64()
    omoe = OMoE(a.parameters(), **HYPER, stat="mean")
    assert omoe.defaults["fused"]
    adamw = torch.optim.AdamW(b.parameters(), **ADAMW, fused=True)
    loop = torch.optim.AdamW(c.parameters(), **ADAMW)
    for step in range(6):
        accumulate_step(omoe, a, batch(step), stat="mean")
        backward(b, batch(step))
        adamw.step()
        backward(c, batch(step))
        loop.step()
        for p, q, r in zip(a.parameters(), b.parameters(), c.parameters()):
            assert torch.equal(p, q)
            torch.testing.assert_close(p, r, atol=1e-14, rtol=0)


def test_orthogonal_phase_without_statistics_matches_adamw():
    a, b = layer64(), layer64()
    omoe = OMoE(a.parameters(), **HYPER, accumulate_steps=1)
    adamw = torch.optim.AdamW(b.parameters(), **ADAMW)
    for step in range(5):  # no statistics: every projector is the identity
        backward(a, batch(step))
        omoe.routed_inputs = nothing_routed
        omoe.step()
        backward(b, batch(step))
        adamw.step()
        for p, q in zip(a.parameters(), b.parameters()):
            torch.testing.assert_close(p, q, atol=1e-14, rtol=0)


def routed(layer: MoELayer, x: torch.Tensor, seen: str = "inputs") -> dict[str, list[torch.Tensor]]:
    """Every expert's raw routed inputs (or outputs), per weight: {"0.fc1": [X_e [n_e, .]]}."""
    kept = {"0.fc1": {}, "0.fc2": {}}

    def record(_layer, _E, e, fc1, fc2, outputs):
        if seen == "outputs":
            fc1, fc2 = outputs["fc1"], outputs["fc2"]
        kept["0.fc1"][e], kept["0.fc2"][e] = fc1.detach(), fc2.detach()

    layer.experts.capture = record
    layer(x)
    layer.experts.capture = None
    return {k: [v[e] for e in sorted(v)] for k, v in kept.items()}


def routed_inputs(layer: MoELayer, x: torch.Tensor) -> dict[str, list[torch.Tensor]]:
    """Every expert's raw routed inputs, per weight: {"0.fc1": [X_e [n_e, d]], ...}."""
    return routed(layer, x, "inputs")


def roundtrip(state: dict) -> dict:
    """What a checkpoint does to a state dict: torch.save, then torch.load(weights_only=True)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_a_checkpoint_of_the_unfused_kernel_resumes_on_the_fused_one():
    """State saved before OMoE stepped with the fused kernel holds fused=None in its groups;
    loading it must not switch the resumed run back to torch's slower loop."""
    layer = layer64()
    opt = OMoE(layer.parameters(), **HYPER)
    accumulate_step(opt, layer, batch(0))
    saved = roundtrip(opt.state_dict())
    for group in saved["param_groups"]:
        group["fused"] = None
    opt.load_state_dict(saved)
    assert all(group["fused"] is True for group in opt.param_groups)
    accumulate_step(opt, layer, batch(1))
    assert all(opt.state[p]["step"] == 2 for g in opt.param_groups for p in g["params"])


def orthogonal_deltas(mode: str, alpha: float, project: str = "update", **options):
    """One accumulating step on a batch, then one orthogonal step: the projected change
    and, from an identical twin stepped without projection, the unprojected one."""
    options = dict(HYPER, alpha=alpha, mode=mode, stat="tokens", max_rank=16,
                   project=project, **options)
    layer = layer64()
    opt = OMoE(layer.parameters(), **options, accumulate_steps=1)
    x = batch(0)
    inputs = routed(layer, x, "outputs" if opt.settings.space == "outputs" else "inputs")
    accumulate_step(opt, layer, x)
    twin = layer64(seed=99)  # deepcopy would drop the expert tags on the parameters
    twin.load_state_dict(layer.state_dict())
    twin_opt = OMoE(twin.parameters(), **options, accumulate_steps=2)  # still accumulating
    twin_opt.load_state_dict(roundtrip(opt.state_dict()))  # a copy, not shared tensors
    before = {k: p.detach().clone() for k, p in opt.experts.items()}
    backward(layer, batch(1))
    opt.step()  # the first orthogonal update: the projectors are formed
    backward(twin, batch(1))
    twin_opt.routed_inputs = nothing_routed
    twin_opt.step()
    projected = {k: p.detach() - before[k] for k, p in opt.experts.items()}
    plain = {k: p.detach() - before[k] for k, p in twin_opt.experts.items()}
    return inputs, opt, projected, plain


def test_joint_update_vanishes_on_the_other_experts_inputs():
    inputs, _, projected, plain = orthogonal_deltas("joint", alpha=1e-9)
    assert all(len(v) == 4 for v in inputs.values()), "every expert must have seen tokens"
    for key, per_expert in inputs.items():
        for e in range(4):
            others = torch.cat([per_expert[j] for j in range(4) if j != e]).T  # [in, n]
            ratio = (projected[key][e] @ others).norm() / (plain[key][e] @ others).norm()
            assert ratio <= 1e-3, (key, e, float(ratio))


def test_average_update_equals_the_closed_form_average():
    _, opt, projected, plain = orthogonal_deltas("average", alpha=0.05)
    for key, stats in opt.stats.items():
        steps = opt.stat_steps[key]
        P = [covariance_projector(s @ s.T / steps[e], 0.05) for e, s in enumerate(stats)]
        for e in range(4):
            average = (sum(P) - P[e]) / 3
            torch.testing.assert_close(projected[key][e], plain[key][e] @ average,
                                       atol=1e-13, rtol=1e-10)


def test_gradient_mode_feeds_adamw_the_projected_gradient():
    options = dict(HYPER, alpha=0.05, stat="tokens", max_rank=16, project="gradient")
    layer = layer64()
    opt = OMoE(layer.parameters(), **options, accumulate_steps=1)
    accumulate_step(opt, layer, batch(0))
    twin = layer64(seed=99)
    twin.load_state_dict(layer.state_dict())
    twin_opt = OMoE(twin.parameters(), **options, accumulate_steps=2)
    twin_opt.load_state_dict(roundtrip(opt.state_dict()))
    backward(layer, batch(1))
    opt.step()
    backward(twin, batch(1))
    for key, p in twin_opt.experts.items():  # project by hand, then a plain AdamW step
        p.grad = project(p.grad, opt.factors[key], "joint")
    twin_opt.routed_inputs = nothing_routed
    twin_opt.step()
    for p, q in zip(layer.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, atol=1e-14, rtol=0)
    assert "removed" not in opt.last_measured  # the update itself is not projected again


def test_biases_and_router_are_never_projected():
    _, opt, projected, _ = orthogonal_deltas("joint", alpha=1e-9)
    assert set(projected) == {"0.fc1", "0.fc2"}
    assert opt.last_measured["removed"] > 0.1


SCHEDULED = dict(HYPER, stat="pca", stat_rank=2, max_rank=4, accumulate_steps=2,
                 orthogonal_steps=3)


def drive(layer: MoELayer, opt: OMoE, steps: range) -> None:
    """Steps on the optimizer's own schedule (2 accumulating + 3 orthogonal updates)."""
    for step in steps:
        if opt.next_phase.accumulating:
            accumulate_step(opt, layer, batch(step), stat="pca")
        else:
            backward(layer, batch(step))
            opt.step()


def test_save_and_resume_equals_uninterrupted():
    straight = layer64()
    opt = OMoE(straight.parameters(), **SCHEDULED)
    drive(straight, opt, range(12))

    first = layer64()
    opt1 = OMoE(first.parameters(), **SCHEDULED)
    drive(first, opt1, range(8))  # stops inside an orthogonal phase
    saved = roundtrip({"model": first.state_dict(), "optimizer": opt1.state_dict()})
    resumed = layer64(seed=99)
    resumed.load_state_dict(saved["model"])
    opt2 = OMoE(resumed.parameters(), **SCHEDULED)
    opt2.load_state_dict(saved["optimizer"])
    assert opt2.counters == opt1.counters and opt2.factors.keys() == opt1.factors.keys()
    drive(resumed, opt2, range(8, 12))
    for p, q in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(p, q)
    for key in opt.stats:
        assert torch.equal(opt.stats[key], opt2.stats[key])
        assert torch.equal(opt.factors[key], opt2.factors[key])


def test_a_statistics_reading_without_routed_inputs_says_what_is_missing():
    layer = layer64()
    opt = OMoE(layer.parameters(), **HYPER)
    backward(layer, batch(0))
    with pytest.raises(RuntimeError, match="--task omoe_sentence_prediction.*routed_inputs"):
        opt.step()


@pytest.mark.parametrize(
    "options,flag",
    (
        (dict(alpha=0.0), "--omoe-alpha"),
        (dict(alpha=-1.0), "--omoe-alpha"),
        (dict(accumulate_steps=0), "--omoe-accumulate-steps"),
        (dict(orthogonal_steps=0), "--omoe-orthogonal-steps"),
        (dict(mode="sum"), "--omoe-mode"),
        (dict(forget=1.5), "--omoe-forget"),
        (dict(max_rank=0), "--omoe-max-rank"),
        (dict(space="weights"), "--omoe-space"),
        (dict(space="centred", stat="mean"), "--omoe-space centred needs"),
        (dict(max_gain=0.5), "--omoe-max-gain"),
        (dict(orthogonal_lr_scale=0.0), "--omoe-orthogonal-lr-scale"),
    ),
)
def test_invalid_values_name_the_option(options, flag):
    with pytest.raises(ValueError, match=flag):
        OMoE(layer64().parameters(), **options)


def test_a_model_without_experts_is_refused():
    dense = torch.nn.Linear(4, 4)
    with pytest.raises(ValueError, match="no expert weights"):
        OMoE(dense.parameters())
