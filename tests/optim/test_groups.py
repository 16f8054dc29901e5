"""Expert weights in their own parameter groups: orthogonal updates at a scaled learning
rate, and optimizer state saved before the split still loads."""

import pytest
import torch

from omoe_plugin.optim.groups import EXPERT_GROUP
from omoe_plugin.optim.omoe import OMoE
from tests.optim.test_omoe import (
    HYPER,
    accumulate_step,
    batch,
    layer64,
    orthogonal_deltas,
    roundtrip,
)


@pytest.mark.parametrize("space", ["deltas", "inputs"])
def test_orthogonal_lr_scale_lengthens_the_projected_update_exactly(space):
    _, opt, once, _ = orthogonal_deltas("joint", alpha=1e-3, space=space)
    _, scaled_opt, thrice, _ = orthogonal_deltas("joint", alpha=1e-3, space=space,
                                                 orthogonal_lr_scale=3.0)
    for key in once:
        torch.testing.assert_close(thrice[key], 3 * once[key], atol=1e-13, rtol=1e-9)
    assert [g["lr"] for g in scaled_opt.param_groups] == [HYPER["lr"]] * 2  # restored
    assert [g[EXPERT_GROUP] for g in opt.param_groups] == [False, True]


def test_accumulating_updates_ignore_the_scale():
    a, b = layer64(), layer64()
    plain = OMoE(a.parameters(), **HYPER, stat="mean")
    scaled = OMoE(b.parameters(), **HYPER, stat="mean", orthogonal_lr_scale=5.0)
    for step in range(3):
        accumulate_step(plain, a, batch(step), stat="mean")
        accumulate_step(scaled, b, batch(step), stat="mean")
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def unsplit(state: dict, opt: OMoE) -> dict:
    """The state dict as an optimizer with one parameter group (before the split) saved it:
    parameters numbered in the model's order."""
    groups = state["param_groups"]
    numbered = [i for g in groups for i in g["params"]]  # split order
    to_model_order = dict(zip(numbered, opt._origin))
    group = {k: v for k, v in groups[0].items() if k not in ("params", EXPERT_GROUP)}
    return {**state, "param_groups": [{**group, "params": sorted(to_model_order.values())}],
            "state": {to_model_order[i]: s for i, s in state["state"].items()}}


def test_state_saved_with_one_group_resumes_exactly():
    a, b = layer64(), layer64()
    opt = OMoE(a.parameters(), **HYPER, stat="mean")
    for step in range(3):
        accumulate_step(opt, a, batch(step), stat="mean")
    b.load_state_dict(a.state_dict())
    resumed = OMoE(b.parameters(), **HYPER, stat="mean")
    resumed.load_state_dict(roundtrip(unsplit(opt.state_dict(), opt)))
    for step in range(3, 5):
        accumulate_step(opt, a, batch(step), stat="mean")
        accumulate_step(resumed, b, batch(step), stat="mean")
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_state_of_another_model_is_refused():
    opt = OMoE(layer64().parameters(), **HYPER, stat="mean")
    state = unsplit(opt.state_dict(), opt)
    state["param_groups"][0]["params"] = state["param_groups"][0]["params"][:-1]
    with pytest.raises(ValueError, match="--reset-optimizer"):
        OMoE(layer64().parameters(), **HYPER, stat="mean").load_state_dict(state)
