"""End to end, precision: fairseq-train --fp16 --fp16-no-flatten-grads --optimizer omoe on the
CPU. The model computes in fp16; fairseq's wrapper hands OMoE fp32 master copies that keep
the expert tags, so statistics, projectors and AdamW state are fp32."""

import pytest
import torch

from tests.cli import checkpoint, output, train
from tests.test_cli_reliability import OMOE

pytestmark = pytest.mark.slow


def test_fp16_training_keeps_the_projector_maths_in_fp32(movie_reviews, tmp_path):
    validated = [a for a in OMOE if a != "--disable-validation"] + ["--max-valid-steps", "2"]
    log = output(train(movie_reviews[0], tmp_path, [*validated, "--fp16", "--fp16-no-flatten-grads"],
                       8))
    assert "omoe_removed=" in log  # orthogonal updates were projected
    assert "| omoe_sim_cos " in log and "| omoe_sim_delta " in log  # fp16 validation similarity
    state = checkpoint(tmp_path)["last_optimizer_state"]
    assert "loss_scale" in state  # fairseq's FP16Optimizer ran
    omoe = state["omoe"]
    assert omoe["counters"]["projector_updates"] == 1 and omoe["counters"]["skipped_stats"] == 0
    for part in ("stats", "factors"):
        assert omoe[part] and all(t.dtype == torch.float32 for t in omoe[part].values()), part
        assert all(t.any() for t in omoe[part].values()), part
    assert all(s["exp_avg_sq"].dtype == torch.float32 for s in state["state"].values())
