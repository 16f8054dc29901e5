"""omoe_sentence_prediction: task loss + weighted router losses, and what it logs."""

import pytest
import torch
from fairseq.criterions.sentence_prediction import SentencePredictionCriterion
from fairseq.logging import metrics

from omoe_plugin.criterions.omoe_sentence_prediction import (
    OMoESentencePredictionCriterionConfig,
    OMoESentencePredictionCriterion,
)
from tests.conftest import tiny_model


def sample(task, batch: int = 6, seq: int = 10, seed: int = 7) -> dict:
    torch.manual_seed(seed)
    d = task.source_dictionary
    src = torch.randint(d.nspecial, len(d), (batch, seq))
    src[1:, seq - 3 :] = d.pad()
    return {
        "net_input": {"src_tokens": src},
        "target": torch.randint(0, 2, (batch,)),
        "ntokens": int(src.ne(d.pad()).sum()),
    }


def criterion(task, **weights) -> OMoESentencePredictionCriterion:
    return OMoESentencePredictionCriterion(OMoESentencePredictionCriterionConfig(**weights), task)


def test_loss_adds_weighted_router_losses_per_sentence(task):
    model, s = tiny_model(task), sample(task)
    plain, _, _ = SentencePredictionCriterion(OMoESentencePredictionCriterionConfig(), task)(model, s)
    loss, size, log = criterion(task, moe_aux_weight=0.5, moe_z_loss_weight=0.25)(model, s)
    _, extra = model(**s["net_input"])
    lb = torch.stack([a.load_balancing for a in extra["moe_aux"]]).mean()
    z = torch.stack([a.z_loss for a in extra["moe_aux"]]).mean()
    assert size == 6
    torch.testing.assert_close(loss, plain + (0.5 * lb + 0.25 * z) * size)
    torch.testing.assert_close(log["moe_lb"], lb * size)
    assert log["loss"] == loss.data


def test_counts_cover_every_routed_token_in_every_layer(task):
    model, s = tiny_model(task), sample(task)
    _, _, log = criterion(task)(model, s)
    counts = [v for k, v in log.items() if k.startswith("_moe_count")]
    assert len(counts) == 2 * 4  # layers x experts
    assert sum(counts).item() == s["ntokens"] * 2 * 2  # tokens x top-k x layers


def test_reduce_metrics_logs_shares_and_max_load(task):
    model = tiny_model(task)
    logs = [criterion(task)(model, sample(task, batch=b))[2] for b in (4, 6)]
    with metrics.aggregate() as agg:
        OMoESentencePredictionCriterion.reduce_metrics(logs)
        values = agg.get_smoothed_values()
    shares = [values[f"moe_share_e{e}"] for e in range(4)]
    assert sum(shares) == pytest.approx(1.0, abs=2e-3)
    assert 1.0 <= values["moe_max_load"] <= 4.0
    assert {"moe_lb", "moe_z", "accuracy", "loss"} <= set(values)
    assert not any(k.startswith("_") for k in values)


def test_dense_model_gets_the_plain_loss(task):
    model, s = tiny_model(task, moe_freq=0), sample(task)
    plain, _, _ = SentencePredictionCriterion(OMoESentencePredictionCriterionConfig(), task)(model, s)
    loss, _, log = criterion(task, moe_aux_weight=1.0)(model, s)
    assert torch.equal(loss, plain) and "moe_lb" not in log


def test_the_orthogonality_loss_is_added_in_training_only(task):
    from omoe_plugin.analysis.similarity import every_expert
    from omoe_plugin.moe import MoELayer, expert_orthogonality_loss

    model, s = tiny_model(task), sample(task)
    plain, _, _ = criterion(task)(model, s)
    weighted = criterion(task, moe_orthogonality_weight=0.5, moe_orthogonality_tokens=1000)
    loss, size, log = weighted(model, s)  # eval mode: nothing added
    assert torch.equal(loss, plain) and "moe_orth" not in log
    model.train()
    inputs = []  # every MoE layer's non-padding input tokens
    hooks = [m.register_forward_hook(lambda mod, args, _out: inputs.append(
        (mod, args[0].reshape(-1, args[0].size(-1))[~args[1].reshape(-1)])))
        for m in model.modules() if isinstance(m, MoELayer)]
    torch.manual_seed(0)
    plain, _, _ = criterion(task)(model, s)
    for hook in hooks:
        hook.remove()
    torch.manual_seed(0)
    loss, size, log = weighted(model, s)
    orth = torch.stack([expert_orthogonality_loss(every_expert(m.experts, x))
                        for m, x in inputs]).mean()
    assert 0 < orth < 1 and len(inputs) == 2
    torch.testing.assert_close(loss, plain + 0.5 * orth * size)
    torch.testing.assert_close(log["moe_orth"], orth.detach() * size)
    loss.backward()
    assert model.encoder.layers[0].moe.experts.fc1_weight.grad.abs().sum() > 0


@pytest.mark.parametrize("option", ("moe_aux_weight", "moe_z_loss_weight",
                                    "moe_orthogonality_weight", "moe_orthogonality_tokens"))
def test_negative_weight_names_the_option(task, option):
    with pytest.raises(ValueError, match="--" + option.replace("_", "-")):
        criterion(task, **{option: -1.0})
