"""The readings of OMoE's orthogonality (--omoe-space), the rescaled projection
(--omoe-max-gain) and the projected first moment (--omoe-moment), against closed
forms."""

import logging

import pytest
import torch
import torch.nn.functional as F

from omoe_plugin.optim.omoe import OMoE
from omoe_plugin.optim.projector import covariance_projector, project
from tests.optim.test_omoe import (
    HYPER,
    accumulate_step,
    backward,
    batch,
    layer64,
    orthogonal_deltas,
    roundtrip,
)


def others(per_expert: list[torch.Tensor], e: int) -> torch.Tensor:
    """Every other expert's vectors as columns: [dim, n]."""
    return torch.cat([per_expert[j] for j in range(len(per_expert)) if j != e]).T


def test_outputs_update_adds_nothing_along_the_other_experts_outputs():
    outputs, opt, projected, plain = orthogonal_deltas("joint", alpha=1e-9, space="outputs")
    assert opt.stats["0.fc1"].shape[1] == 24 and opt.stats["0.fc2"].shape[1] == 16  # out dims
    for key, per_expert in outputs.items():
        assert len(per_expert) == 4, "every expert must have seen tokens"
        for e in range(4):
            Y = others(per_expert, e)  # [out, n]
            ratio = (Y.T @ projected[key][e]).norm() / (Y.T @ plain[key][e]).norm()
            assert ratio <= 1e-3, (key, e, float(ratio))


def test_outputs_average_update_is_the_closed_form_left_product():
    _, opt, projected, plain = orthogonal_deltas("average", alpha=0.05, space="outputs")
    for key, stats in opt.stats.items():
        P = [covariance_projector(s @ s.T / opt.stat_steps[key][e], 0.05)
             for e, s in enumerate(stats)]
        for e in range(4):
            torch.testing.assert_close(projected[key][e], (sum(P) - P[e]) / 3 @ plain[key][e],
                                       atol=1e-13, rtol=1e-10)


def test_centred_update_vanishes_on_the_other_experts_centred_inputs():
    inputs, _, projected, plain = orthogonal_deltas("joint", alpha=1e-9, space="centred")
    for key, per_expert in inputs.items():
        for e in range(4):
            centred = [x - x.mean(0) for x in per_expert]
            X = others(centred, e)
            ratio = (projected[key][e] @ X).norm() / (plain[key][e] @ X).norm()
            assert ratio <= 1e-3, (key, e, float(ratio))
            # the shared mean direction is no longer removed
            mean = others([x.mean(0, keepdim=True) for x in per_expert], e)
            kept = (projected[key][e] @ mean).norm() / (plain[key][e] @ mean).norm()
            assert kept > 1e-2, (key, e, float(kept))


def moments_before_orthogonal_step(**options):
    """As orthogonal_deltas with space deltas, plus every expert weight's AdamW first moment
    just before the orthogonal step, flattened per expert."""
    seen = {}
    real_step = OMoE.step

    def step(self, closure=None):
        if not self.next_phase.accumulating:
            seen.update({k: self.state[p]["exp_avg"].reshape(p.size(0), -1).clone()
                         for k, p in self.experts.items()})
        return real_step(self, closure)

    OMoE.step = step
    try:
        _, opt, projected, plain = orthogonal_deltas(space="deltas", **options)
    finally:
        OMoE.step = real_step
    return seen, opt, projected, plain


def test_deltas_joint_update_is_orthogonal_to_the_other_experts_recent_updates():
    moments, opt, projected, plain = moments_before_orthogonal_step(mode="joint", alpha=1e-9)
    assert not opt.stats  # deltas keeps no statistics of its own
    for key, m in moments.items():
        for e in range(4):
            U = torch.stack([m[j] for j in range(4) if j != e]).T  # [out in, 3]
            ratio = (projected[key][e].flatten() @ U).norm() / (plain[key][e].flatten() @ U).norm()
            assert ratio <= 1e-6, (key, e, float(ratio))


def test_deltas_average_update_is_the_closed_form_average():
    alpha = 0.05
    moments, _, projected, plain = moments_before_orthogonal_step(mode="average", alpha=alpha)
    for key, m in moments.items():
        u = F.normalize(m, dim=1)  # [E, out in]
        for e in range(4):
            d = plain[key][e].flatten()
            P_j = [torch.eye(d.numel(), dtype=d.dtype) - torch.outer(u[j], u[j]) / (1 + alpha)
                   for j in range(4)]
            expected = (sum(P_j) - P_j[e]) / 3 @ d
            torch.testing.assert_close(projected[key][e].flatten(), expected,
                                       atol=1e-13, rtol=1e-10)


@pytest.mark.parametrize("space", ["inputs", "outputs", "deltas"])
def test_the_removed_share_is_what_the_projection_took_from_the_update(space):
    """omoe_removed, measured on the first orthogonal step, is ||dW - P dW|| / ||dW|| against
    the unprojected update of an identical twin (deltas reads it off E x E matrices)."""
    _, opt, projected, plain = orthogonal_deltas("joint", alpha=0.05, space=space)
    shares = [float((plain[k] - projected[k]).norm() / plain[k].norm()) for k in plain]
    assert 0.05 < opt.last_measured["removed"] < 1
    assert opt.last_measured["removed"] == pytest.approx(sum(shares) / len(shares), rel=1e-9)


def test_max_gain_rescales_the_update_towards_its_unprojected_norm_up_to_the_cap():
    _, _, unscaled, plain = orthogonal_deltas("joint", alpha=1e-9)
    _, _, full, _ = orthogonal_deltas("joint", alpha=1e-9, max_gain=1e6)
    _, _, capped, _ = orthogonal_deltas("joint", alpha=1e-9, max_gain=1.1)
    for key in plain:
        norms = {name: d[key].flatten(1).norm(dim=1)
                 for name, d in (("plain", plain), ("unscaled", unscaled), ("full", full),
                                 ("capped", capped))}
        torch.testing.assert_close(norms["full"], norms["plain"])  # AdamW's step length
        torch.testing.assert_close(norms["capped"], 1.1 * norms["unscaled"])
        direction = F.cosine_similarity(full[key].flatten(1), unscaled[key].flatten(1), dim=1)
        torch.testing.assert_close(direction, torch.ones_like(direction))


def test_max_gain_rescales_the_projected_gradient_to_the_gradient_norm():
    layer = layer64()
    opt = OMoE(layer.parameters(), **HYPER, alpha=1e-9, stat="tokens", max_rank=16,
               project="gradient", max_gain=1e6)
    accumulate_step(opt, layer, batch(0))
    opt.form_projectors()
    opt.counters["steps"] = opt.settings.accumulate_steps + 1  # an orthogonal update next
    backward(layer, batch(1))
    grads = {k: p.grad.clone() for k, p in opt.experts.items()}
    opt.step()  # leaves the gradient AdamW was fed in .grad
    for key, p in opt.experts.items():
        torch.testing.assert_close(p.grad.flatten(1).norm(dim=1),
                                   grads[key].flatten(1).norm(dim=1))
        projected = project(grads[key], opt.factors[key], "joint")  # the same direction
        direction = F.cosine_similarity(p.grad.flatten(1), projected.flatten(1), dim=1)
        used = grads[key].flatten(1).norm(dim=1) > 0  # an expert without tokens has no gradient
        assert used.sum() >= 2
        torch.testing.assert_close(direction[used], torch.ones_like(direction[used]))


@pytest.mark.parametrize("handling", ("keep", "project"))
def test_projected_first_moment_drops_what_the_projection_removed(handling):
    inputs, opt, _, _ = orthogonal_deltas("joint", alpha=1e-9, moment=handling)
    for key, per_expert in inputs.items():
        moment = opt.state[opt.experts[key]]["exp_avg"]
        for e in range(4):
            X = others(per_expert, e)
            ratio = (moment[e] @ X).norm() / moment[e].norm() / X.norm()
            assert (ratio <= 1e-6) == (handling == "project"), (key, e, float(ratio))


def test_resume_says_which_settings_changed_and_what_that_does(caplog):
    layer = layer64()
    opt = OMoE(layer.parameters(), **HYPER, accumulate_steps=10, alpha=0.01)
    accumulate_step(opt, layer, batch(0), stat="mean")
    state = roundtrip(opt.state_dict())
    assert state["omoe"]["settings"]["accumulate_steps"] == 10
    resumed = OMoE(layer64().parameters(), **HYPER, accumulate_steps=5, alpha=0.01)
    with caplog.at_level(logging.WARNING):
        resumed.load_state_dict(state)
    changed = [r.getMessage() for r in caplog.records]
    assert len(changed) == 1 and "--omoe-accumulate-steps changed since the checkpoint (10 -> 5)" \
        in changed[0] and "switch phase" in changed[0]
    caplog.clear()
    same = OMoE(layer64().parameters(), **HYPER, accumulate_steps=10, alpha=0.01)
    with caplog.at_level(logging.WARNING):
        same.load_state_dict(state)
    assert not caplog.records


def test_a_changed_space_is_reported_then_refused(caplog):
    layer = layer64()
    opt = OMoE(layer.parameters(), **HYPER, stat="tokens")
    accumulate_step(opt, layer, batch(0))
    opt.form_projectors()
    state = roundtrip(opt.state_dict())
    other = OMoE(layer64().parameters(), **dict(HYPER, stat="tokens", space="outputs"))
    with caplog.at_level(logging.WARNING), pytest.raises(ValueError, match="--reset-optimizer"):
        other.load_state_dict(state)
    assert "--omoe-space changed since the checkpoint ('inputs' -> 'outputs')" in caplog.text


def test_a_checkpoint_with_the_old_moment_flag_reports_the_new_default(caplog):
    layer = layer64()
    opt = OMoE(layer.parameters(), **HYPER, alpha=0.01)
    accumulate_step(opt, layer, batch(0), stat="mean")
    state = roundtrip(opt.state_dict())
    settings = state["omoe"]["settings"]
    del settings["moment"]
    settings["project_moment"] = False  # what checkpoints before --omoe-moment stored
    with caplog.at_level(logging.WARNING):
        OMoE(layer64().parameters(), **HYPER, alpha=0.01).load_state_dict(state)
    assert "--omoe-moment changed since the checkpoint ('keep' -> 'project')" in caplog.text
