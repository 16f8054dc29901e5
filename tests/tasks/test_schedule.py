"""The OMoE mixin in a fairseq task other than sentence prediction, composed exactly as the
docs show for masked_lm; and --optimizer omoe in a task without it."""

from dataclasses import dataclass

import pytest
import torch
from fairseq.logging import metrics
from fairseq.tasks.masked_lm import MaskedLMConfig, MaskedLMTask

from omoe_plugin.optim.fairseq_omoe import FairseqOMoE, OMoEConfig
from omoe_plugin.tasks.schedule import OMoESchedule, OMoEScheduleConfig, find_omoe
from tests.conftest import dictionaries, tiny_model


@dataclass
class OMoEMaskedLMConfig(OMoEScheduleConfig, MaskedLMConfig):
    pass


class OMoEMaskedLMTask(OMoESchedule, MaskedLMTask):  # not registered: a test's own task
    pass


def updates(task, model, optimizer, count: int) -> None:
    for update_num in range(count):
        optimizer.zero_grad()
        features, _ = model(torch.randint(4, 40, (2, 6)))
        features.square().mean().backward()
        task.optimizer_step(optimizer, model, update_num)


def test_the_schedule_runs_omoe_in_a_masked_lm_task(task):
    words, _ = dictionaries()
    mlm = OMoEMaskedLMTask(OMoEMaskedLMConfig(data="unused"), words)
    assert mlm.cfg.omoe_similarity_tokens == 512 and mlm.mask_idx == words.index("<mask>")
    model = tiny_model(task).train()
    config = OMoEConfig(lr=[0.01], omoe_accumulate_steps=1, omoe_orthogonal_steps=2)
    optimizer = FairseqOMoE(config, list(model.parameters()))
    with metrics.aggregate(new_root=True) as logged:
        updates(mlm, model, optimizer, 3)  # accumulate, orthogonal, orthogonal
    assert logged["omoe_phase"].avg == pytest.approx(2 / 3)
    assert find_omoe(optimizer).counters["projector_updates"] == 1


def test_without_the_mixin_the_default_reading_runs_on_its_own_schedule(task):
    words, _ = dictionaries()
    mlm = MaskedLMTask(MaskedLMConfig(data="unused"), words)
    model = tiny_model(task).train()
    config = OMoEConfig(lr=[0.01], omoe_accumulate_steps=1, omoe_orthogonal_steps=2)
    optimizer = FairseqOMoE(config, list(model.parameters()))
    updates(mlm, model, optimizer, 3)  # accumulate, orthogonal, orthogonal
    omoe = find_omoe(optimizer)
    assert omoe.counters["steps"] == 3 and omoe.counters["projector_updates"] == 1
    assert omoe.report["phase"] == 1.0 and 0 < omoe.last_measured["removed"] < 1


def test_without_the_mixin_a_statistics_reading_says_what_is_missing(task):
    words, _ = dictionaries()
    mlm = MaskedLMTask(MaskedLMConfig(data="unused"), words)
    model = tiny_model(task).train()
    optimizer = FairseqOMoE(OMoEConfig(lr=[0.01], omoe_space="inputs"), list(model.parameters()))
    with pytest.raises(RuntimeError, match="--omoe-space inputs needs the routed inputs"):
        updates(mlm, model, optimizer, 1)
