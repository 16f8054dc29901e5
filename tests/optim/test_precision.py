"""Projector maths stays in fp32 when OMoE steps bf16 parameters itself: statistics, factors
and every product with a factor are fp32; only the final parameter write is bf16. (fp16
parameters need fairseq's fp32 master copies, --fp16 --fp16-no-flatten-grads: torch's AdamW
itself overflows on them. That path is tested end to end in tests/test_cli_precision.py.)"""

import pytest
import torch

from omoe_plugin.optim import projection as projection_module
from omoe_plugin.optim.omoe import OMoE
from tests.optim.test_omoe import HYPER, accumulate_step, batch, layer64, orthogonal_step


@pytest.mark.parametrize("project", ("update", "gradient"))
def test_bf16_parameters_get_fp32_projector_maths(monkeypatch, project):
    dtype = torch.bfloat16
    layer = layer64().to(dtype)
    opt = OMoE(layer.parameters(), **HYPER, stat="tokens", project=project)
    accumulate_step(opt, layer, batch(0).to(dtype))
    opt.form_projectors()
    assert {s.dtype for s in opt.stats.values()} == {f.dtype for f in opt.factors.values()} \
        == {torch.float32}
    seen = []
    real = projection_module.update_products  # every projection, of an update or a gradient
    monkeypatch.setattr(projection_module, "update_products", lambda delta, factors, *rest: (
        seen.append((delta.dtype, factors.dtype)), real(delta, factors, *rest))[1])
    before = layer.experts.fc1_weight.detach().clone()
    orthogonal_step(opt, layer, batch(1).to(dtype))
    assert seen and set(seen) == {(torch.float32, torch.float32)}
    assert layer.experts.fc1_weight.dtype == dtype
    assert torch.isfinite(layer.experts.fc1_weight).all()
    assert not torch.equal(layer.experts.fc1_weight, before)
