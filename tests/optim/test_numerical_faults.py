"""Numerical faults never corrupt a projector: NaN/Inf, all-zero and duplicated routed
statistics, an expert that receives no token, a factorisation that fails. The faulty part is
skipped and counted (and logged by the task), and training goes on."""

import pytest
import torch
from fairseq.logging import metrics

from omoe_plugin.models import OMoERobertaConfig, OMoERobertaModel
from omoe_plugin.optim.capture import RoutedInputCapture
from omoe_plugin.optim.fairseq_omoe import FairseqOMoE, OMoEConfig
from omoe_plugin.optim.omoe import OMoE
from omoe_plugin.optim.projector import covariance_projector
from omoe_plugin.tasks.omoe_sentence_prediction import (
    OMoESentencePredictionConfig,
    OMoESentencePredictionTask,
)
from tests.conftest import dictionaries
from tests.optim.test_omoe import HYPER, batch, layer64, orthogonal_step, roundtrip, routed_inputs

OPTIONS = dict(HYPER, stat="tokens", max_rank=16)


def summaries(layer, x: torch.Tensor, opt: OMoE, empty=()) -> dict[str, torch.Tensor]:
    """The task's per-update summaries of the inputs x routes to each expert; the experts in
    `empty` receive no token (the capture call an expert with no routed token makes)."""
    capture = RoutedInputCapture("tokens")
    fc1, fc2 = routed_inputs(layer, x).values()
    for e, (a, h) in enumerate(zip(fc1, fc2)):
        capture(0, 4, e, fc1=a[:0] if e in empty else a, fc2=h[:0] if e in empty else h)
    return capture.pop_summaries(statistics=opt.stats)


@pytest.mark.parametrize("bad", (float("nan"), float("inf"), -float("inf")))
def test_a_non_finite_summary_is_skipped_counted_and_the_rest_kept(bad):
    layer, twin = layer64(), layer64()
    opt, twin_opt = OMoE(layer.parameters(), **OPTIONS), OMoE(twin.parameters(), **OPTIONS)
    X = summaries(layer, batch(0), opt)
    faulty = {k: v.clone() for k, v in X.items()}
    faulty["0.fc1"][1, 0, 0] = bad
    X["0.fc1"][1] = 0  # the twin never sees expert 1's fc1 summary
    opt.accumulate(faulty)
    twin_opt.accumulate(X)
    assert opt.counters["skipped_stats"] == 1 and twin_opt.counters["skipped_stats"] == 0
    for key in opt.stats:
        assert torch.equal(opt.stats[key], twin_opt.stats[key])
        assert torch.equal(opt.stat_steps[key], twin_opt.stat_steps[key])
    assert opt.stat_steps["0.fc1"].tolist() == [1, 0, 1, 1]
    opt.form_projectors()
    orthogonal_step(opt, layer, batch(1))
    assert all(torch.isfinite(f).all() for f in opt.factors.values())
    assert all(torch.isfinite(p).all() for p in layer.parameters())


def test_an_expert_with_no_token_keeps_an_identity_projector_and_still_trains():
    layer = layer64()
    opt = OMoE(layer.parameters(), **OPTIONS, mode="average")
    before = layer.experts.fc1_weight[2].detach().clone()
    opt.accumulate(summaries(layer, batch(0), opt, empty=(2,)))
    assert opt.counters["empty_stats"] == 2  # expert 2's fc1 and fc2 statistics
    assert opt.stat_steps["0.fc1"].tolist() == [1, 1, 0, 1]
    assert not opt.stats["0.fc1"][2].any()
    opt.form_projectors()
    own = opt.factors["0.fc1"][2]  # average mode stores each expert's own projector
    assert not own.any(), "an expert with no input must not constrain the others"
    orthogonal_step(opt, layer, batch(1))
    assert all(torch.isfinite(p).all() for p in layer.parameters())
    assert not torch.equal(layer.experts.fc1_weight[2], before)  # weight decay still applies


def test_all_zero_summaries_change_nothing_and_are_counted():
    layer = layer64()
    opt = OMoE(layer.parameters(), **OPTIONS)
    opt.accumulate({k: torch.zeros(4, v.size(1), 3, dtype=v.dtype) for k, v in opt.stats.items()})
    assert opt.counters["empty_stats"] == 8 and opt.counters["skipped_stats"] == 0
    assert not any(s.any() for s in opt.stats.values())
    assert not any(s.any() for s in opt.stat_steps.values())


def duplicated(dtype: torch.dtype) -> torch.Tensor:
    """Summaries [4, 16, 4] of 4 experts that saw the same inputs (upcycled copies), each
    input twice."""
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(3))
    x = torch.nn.functional.normalize(x, dim=0)
    return torch.cat([x, x], dim=1).expand(4, 16, 4).to(dtype) / 2


@pytest.mark.parametrize("mode", ("joint", "average"))
def test_duplicated_statistics_with_a_tiny_alpha_still_give_the_closed_form_in_fp32(mode):
    """fp32 statistics of identical experts with alpha = 1e-9: their Gram matrix plus alpha
    is not positive definite in fp32 (alpha vanishes next to 1); the factorisation still
    succeeds and matches the closed form of the statistics kept."""
    alpha = 1e-9
    layer = layer64().float()
    opt = OMoE(layer.parameters(), **dict(OPTIONS, alpha=alpha, mode=mode))
    opt.accumulate({"0.fc1": duplicated(torch.float32)})
    opt.form_projectors()
    assert opt.skipped == 0
    factors = opt.factors["0.fc1"]
    assert factors.dtype == torch.float32
    S = opt.stats["0.fc1"][0].double()  # every expert's statistics, equal
    assert all(torch.equal(s, opt.stats["0.fc1"][0]) for s in opt.stats["0.fc1"])
    own = torch.eye(16, dtype=torch.float64) - factors[0].double() @ factors[0].double().T
    expected = covariance_projector((3 if mode == "joint" else 1) * S @ S.T, alpha)
    torch.testing.assert_close(own, expected, atol=1e-5, rtol=0)
    eigenvalues = torch.linalg.eigvalsh(own)
    assert eigenvalues.min() > -1e-5 and eigenvalues.max() < 1 + 1e-5


def test_a_projector_that_cannot_be_factored_keeps_the_previous_one():
    """alpha = 1e-30 cannot regularise duplicated experts even in float64: the projector
    update is skipped and counted, the previous projector stays, training goes on."""
    layer = layer64()
    opt = OMoE(layer.parameters(), **dict(OPTIONS, alpha=1e-30, max_rank=2))
    opt.accumulate(summaries(layer, batch(0, tokens=48), opt))  # distinct experts: factorable
    opt.form_projectors()
    previous = {k: v.clone() for k, v in opt.factors.items()}
    assert opt.skipped == 0
    opt.begin_cycle()
    opt.accumulate({"0.fc1": duplicated(torch.float64)[:, :, :2]})
    opt.form_projectors()
    assert opt.counters["skipped_projectors"] == 4  # every expert of 0.fc1
    assert torch.equal(opt.factors["0.fc1"], previous["0.fc1"])
    orthogonal_step(opt, layer, batch(1))
    assert all(torch.isfinite(p).all() for p in layer.parameters())


def test_the_task_logs_skipped_and_empty_statistics_and_training_goes_on():
    task = OMoESentencePredictionTask(OMoESentencePredictionConfig(num_classes=2), *dictionaries())
    model = OMoERobertaModel.build_model(OMoERobertaConfig(
        encoder_layers=1, encoder_embed_dim=8, encoder_ffn_embed_dim=12,
        encoder_attention_heads=2, max_positions=16, moe_experts=2), task)
    optimizer = FairseqOMoE(OMoEConfig(lr=[0.1], omoe_space="inputs"), list(model.parameters()))
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    task.capture, task._captured_update = RoutedInputCapture("mean"), 0  # what train_step leaves
    task.capture(0, 2, 0, fc1=torch.full((3, 8), float("nan")), fc2=torch.ones(3, 12))
    with metrics.aggregate(new_root=True) as logged:
        task.optimizer_step(optimizer, model, update_num=0)
    values = logged.get_smoothed_values()
    assert values["omoe_skipped"] == 1  # expert 0's fc1 summary
    assert values["omoe_empty"] == 2  # expert 1 received no token: its fc1 and fc2
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("corrupt,message", (
    (lambda omoe: omoe["factors"]["0.fc1"].__setitem__((0, 0, 0), float("nan")), "not finite"),
    (lambda omoe: omoe["stats"]["0.fc2"].__setitem__((1, 0, 0), float("inf")), "not finite"),
    (lambda omoe: omoe["stats"].__setitem__("0.fc1", torch.zeros(4, 16, 3)), "does not fit"),
    (lambda omoe: omoe["factors"].__setitem__("0.fc1", torch.zeros(4, 16, 16)), "does not fit"),
))
def test_a_checkpoint_with_a_bad_projector_or_statistics_is_refused(corrupt, message):
    layer = layer64()
    opt = OMoE(layer.parameters(), **OPTIONS)  # joint: factors [4, in, 3 * 16]
    opt.accumulate(summaries(layer, batch(0), opt))
    opt.form_projectors()
    state = roundtrip(opt.state_dict())
    corrupt(state["omoe"])
    fresh = OMoE(layer64().parameters(), **OPTIONS)
    with pytest.raises(ValueError, match=f"{message}.*--reset-optimizer"):
        fresh.load_state_dict(state)
    assert not fresh.factors and not any(s.any() for s in fresh.stats.values())
