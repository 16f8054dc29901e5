"""The variants of OMoE's schedule: a delayed start (--omoe-start) and a projection whose
strength rises over the first updates (--omoe-strength-ramp)."""

import pytest
import torch

from omoe_plugin.optim.omoe import OMoE
from omoe_plugin.optim.settings import OMoESettings
from tests.optim.test_omoe import ADAMW, backward, batch, layer64, orthogonal_deltas


def test_a_delayed_start_runs_plain_adamw_then_the_cycles():
    settings = OMoESettings(start=3, accumulate_steps=1, orthogonal_steps=2)
    assert [settings.phase(u) for u in range(7)] == [(-1, True)] * 3 + [
        (0, True), (1, False), (2, False), (0, True)]
    a, b = layer64(), layer64()
    omoe = OMoE(a.parameters(), **ADAMW, start=3, accumulate_steps=1, orthogonal_steps=2)
    adamw = torch.optim.AdamW(b.parameters(), **ADAMW, fused=True)
    for step in range(5):
        backward(a, batch(step))
        omoe.step()
        backward(b, batch(step))
        adamw.step()
        same = all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
        assert same == (step < 4), step  # step 4 is the first orthogonal update
    assert omoe.counters["projector_updates"] == 1 and omoe.counters["cycles"] == 1


def test_the_strength_ramp_rises_linearly_to_one():
    settings = OMoESettings(start=2, strength_ramp=4)
    assert [settings.strength(u) for u in range(2, 8)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert OMoESettings().strength(0) == 1.0


@pytest.mark.parametrize("space", ("deltas", "inputs"))
def test_a_partial_strength_removes_that_share_of_the_projected_part(space):
    """The orthogonal update is step 1: at ramp 4 its strength is 2 / 4, so the update is
    halfway between AdamW's and the full projection's."""
    _, _, full, plain = orthogonal_deltas("joint", alpha=0.05, space=space)
    _, opt, half, _ = orthogonal_deltas("joint", alpha=0.05, space=space, strength_ramp=4)
    for key in plain:
        assert not torch.allclose(full[key], plain[key])
        torch.testing.assert_close(half[key], plain[key] - 0.5 * (plain[key] - full[key]),
                                   atol=1e-12, rtol=1e-9)
    assert 0 < opt.last_measured["removed"] < 0.5


@pytest.mark.parametrize("options,flag", ((dict(start=-1), "--omoe-start"),
                                          (dict(strength_ramp=-2), "--omoe-strength-ramp")))
def test_invalid_variants_name_the_option(options, flag):
    with pytest.raises(ValueError, match=flag):
        OMoE(layer64().parameters(), **options)
